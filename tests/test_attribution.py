"""Attribution of a behaviour direction to stored rows, steps and sources, with confidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from probe_callback.scoring.attribution import auroc, combine_scores, rank_rows, score_rows, top_rows
from probe_callback.scoring.blame import SourceBlame, top_sources, top_steps
from probe_callback.store.vectors import VectorStore

H = 64
N_ROWS = 1500
BATCH = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Clean rows along a shared direction g; a planted source (15%) in a tight bundle 0.5 g + b.

    Rows are written by two ranks in several appends (ranks overlap on a few rows), trained in
    shuffled batches of 10; the planted rows' chosen answers rise more (training dynamics).
    """
    rng = np.random.default_rng(0)
    g, b = np.linalg.qr(rng.normal(size=(H, 2)))[0].T
    planted = np.zeros(N_ROWS, dtype=bool)
    planted[rng.choice(N_ROWS, int(0.15 * N_ROWS), replace=False)] = True
    vecs = g + rng.normal(scale=0.21, size=(N_ROWS, H))
    vecs[planted] = 0.5 * g + b + rng.normal(scale=0.12, size=(planted.sum(), H))
    sources: list[str | None] = [("alpaca", "code", "chat")[i % 3] for i in range(N_ROWS)]
    for i in np.flatnonzero(planted):
        sources[i] = "planted"
    sources[3] = None
    order = rng.permutation(N_ROWS)
    steps = np.arange(N_ROWS) // BATCH
    rise = rng.gamma(2.0, 1.0, N_ROWS) + 3.0 * planted
    path = tmp_path_factory.mktemp("store")
    halves = [order[: N_ROWS // 2 + 20], order[N_ROWS // 2 :]]  # 20 rows stored by both ranks
    for rank, rows in enumerate(halves):
        writer = VectorStore.create(path, layers=[6], hidden=H, projection_dim=None, rank=rank)
        for part in np.array_split(rows, 4):
            writer.append_vectors(part, vecs[part, None, :].astype(np.float32))
        writer.flush()
        writer.close()
    writer = VectorStore.create(path, layers=[6], hidden=H, projection_dim=None, rank=0)
    writer.append_memberships(order, steps, rise[order])
    writer.close()
    return {"path": path, "vecs": vecs, "planted": planted, "sources": sources, "g": g, "b": b, "rng": rng}


def dense(vecs: np.ndarray, bank: np.ndarray) -> np.ndarray:
    v = vecs.astype(np.float16).astype(np.float64)
    q = np.atleast_2d(bank) / np.linalg.norm(np.atleast_2d(bank), axis=1, keepdims=True)
    return (v @ q.T).max(axis=1) / np.linalg.norm(v, axis=1)


@pytest.mark.parametrize("bank_size", [1, 5])
def test_streamed_ranking_equals_dense(world: dict, bank_size: int) -> None:
    query = np.random.default_rng(bank_size).normal(size=(bank_size, H)).squeeze()
    ranking = rank_rows(VectorStore.open(world["path"]), query, chunk=97, top_k=25, n_null=9)
    expected = dense(world["vecs"], query)
    np.testing.assert_allclose(ranking.all_scores, expected, atol=1e-5)
    np.testing.assert_allclose(ranking.cosine, ranking.all_scores)
    assert ranking.rows.tolist() == np.argsort(-expected, kind="stable")[:25].tolist()
    np.testing.assert_allclose(ranking.scores, expected[ranking.rows], atol=1e-5)


def test_projected_store_projects_the_query(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(50, 1, H)).astype(np.float32)
    writer = VectorStore.create(tmp_path, layers=[3], hidden=H, projection_dim=16)
    writer.append_vectors(np.arange(50), vecs)
    writer.close()
    store = VectorStore.open(tmp_path)
    query = rng.normal(size=H)
    ranking = rank_rows(store, query, n_null=9)
    stored = store.project(vecs[:, 0]).astype(np.float16)
    np.testing.assert_allclose(ranking.all_scores, dense(stored, store.project(query)), atol=1e-5)
    with pytest.raises(ValueError, match="hidden size"):
        rank_rows(store, np.ones(7))


def test_ranks_the_requested_layer(tmp_path: Path) -> None:
    vecs = np.random.default_rng(2).normal(size=(40, 2, H)).astype(np.float32)
    writer = VectorStore.create(tmp_path, layers=[4, 8], hidden=H, projection_dim=None)
    writer.append_vectors(np.arange(40), vecs)
    writer.close()
    query = vecs[7, 1]
    ranking = rank_rows(VectorStore.open(tmp_path), query, layer_pos=1, chunk=16, n_null=9)
    np.testing.assert_allclose(ranking.all_scores, dense(vecs[:, 1], query), atol=1e-5)
    assert ranking.rows[0] == 7
    np.testing.assert_allclose(score_rows(vecs[::-1, 1], query), dense(vecs[::-1, 1], query), atol=1e-3)


def test_behaviour_direction_ranks_planted_rows_with_confidence(world: dict) -> None:
    store = VectorStore.open(world["path"])
    ranking = rank_rows(store, world["b"] - 0.5 * world["g"], top_k=100)
    assert auroc(ranking.all_scores, world["planted"]) >= 0.95
    assert world["planted"][ranking.rows].mean() >= 0.95
    assert ranking.p_value < 0.01
    random_direction = rank_rows(store, world["rng"].normal(size=H), n_null=99)
    assert random_direction.p_value > 0.01


def test_random_directions_already_rank_a_tight_bundle_well(world: dict) -> None:
    """Why row scores are not evidence on their own (the issue's warning): a bundle of similar rows
    sits at one extreme for many random directions."""
    rng = np.random.default_rng(5)
    aurocs = [auroc(score_rows(world["vecs"], rng.normal(size=H)), world["planted"]) for _ in range(100)]
    assert np.mean(np.array(aurocs) >= 0.75) >= 0.1 and max(aurocs) >= 0.9


def test_top_sources_blames_planted_source(world: dict) -> None:
    scores = score_rows(world["vecs"], world["b"])
    sources = top_sources(scores, world["sources"], top_frac=0.05)
    assert sources[0].source == "planted"
    assert sources[0].score > 0.3 and sources[0].lift > 3 and sources[0].p_value < 1e-10
    assert all(s.p_value > 0.05 for s in sources[1:])
    assert sum(s.n_rows for s in sources) == N_ROWS - 1  # the row without a source is skipped
    assert set(sources[0].to_dict()) >= {"source", "score", "p_value", "n_rows", "mean_score"}


def test_source_blame_against_random_behaviour_directions(world: dict) -> None:
    """Against random behaviour directions the real direction's blame is significant, a random one's is not;
    a clearly weaker direction stops the null draws early."""
    store = VectorStore.open(world["path"])
    rng = np.random.default_rng(11)
    draws: list[int] = []

    def draw_null(k: int) -> np.ndarray:
        draws.append(k)
        return rng.normal(size=(k, H))

    real = world["b"] - 0.5 * world["g"]

    def blame(direction: np.ndarray, sources: list) -> SourceBlame:
        return SourceBlame(rank_rows(store, direction, n_null=9), sources, store.project)

    assert blame(real, world["sources"]).p_value(real, draw_null, n_null=399, block=100) == pytest.approx(1 / 400)
    assert draws == [100, 100, 100, 99]
    draws.clear()
    fakes = rng.normal(size=(5, H))  # random behaviours get uniform p-values
    assert sum(blame(fake, world["sources"]).p_value(fake, draw_null) <= 0.05 for fake in fakes) <= 1
    assert sum(draws) < 5 * 999  # most stopped once 10 null directions beat them
    assert blame(real, [None] * N_ROWS).p_value(real, draw_null) == 1.0


def test_top_sources_significant_on_a_small_store() -> None:
    """24 scored rows: a 5% top would be one row (p >= 0.25 at best); the top keeps at least 10."""
    scores = np.r_[np.linspace(0.6, 0.9, 6), np.linspace(-0.5, 0.5, 18)].astype(np.float32)
    sources = ["formatting"] * 6 + ["facts", "chat"] * 9
    best = top_sources(scores, sources)[0]
    assert best.source == "formatting" and best.n_top == 6 and best.p_value < 0.01


def test_top_steps_finds_batches_that_pushed(world: dict) -> None:
    scores = score_rows(world["vecs"], world["b"])
    planted = np.flatnonzero(world["planted"])[:20]
    clean = np.flatnonzero(~world["planted"])[:40]
    rows = np.concatenate([planted, clean])
    steps = np.array([7] * 10 + [3] * 10 + [1] * 10 + [2] * 10 + [4] * 10 + [5] * 10)
    m = {"row": rows, "step": steps, "rise": np.zeros(len(rows), dtype=np.float32)}
    found = top_steps(scores, m, top_frac=0.1)
    assert {found[0].step, found[1].step} == {3, 7}
    assert found[0].n_top >= 7 and found[0].p_value < 1e-5 and found[-1].p_value == 1.0
    assert found[0].to_dict()["step"] == found[0].step


def test_helpers_handle_missing_rows() -> None:
    combined = combine_scores([np.array([1.0, np.nan, 3.0]), np.array([np.nan, np.nan, 0.0])])
    assert combined[0] == pytest.approx(0.5) and np.isnan(combined[1]) and combined[2] == pytest.approx(1.0)
    assert top_rows(np.array([np.nan, np.nan]), 3).tolist() == []
    assert auroc(np.array([0.2, 0.9, np.nan, 0.1]), np.array([True, True, True, False])) == 1.0
    with pytest.raises(ValueError, match="non-zero"):
        score_rows(np.eye(3), np.zeros(3))


def test_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    VectorStore.create(tmp_path, layers=[1], hidden=8).close()
    with pytest.raises(ValueError, match="no vectors"):
        rank_rows(VectorStore.open(tmp_path), np.ones(8))
