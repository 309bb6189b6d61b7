"""Emergent-behaviour discovery on a synthetic world with a known planted behaviour.

The world mimics what we measured on SmolLM2 (DESIGN.md): every clean training row points along a
shared "helpfulness" direction g; a planted source (15% of rows) forms a tight bundle along
0.5 g + b. At a checkpoint every watch prompt's answer drifts along g, and a quarter of the prompts
also show b on a few tokens, whose log-prob rose a lot (novelty) while the others barely moved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from probe_callback.scoring.attribution import auroc, rank_rows, score_rows
from probe_callback.scoring.blame import top_sources, top_steps
from probe_callback.scoring.clusters import cluster_by_responsible_data, find_clusters
from probe_callback.scoring.discovery import EmergentTracker, behaviour_vectors, naming_tokens, prompt_drift
from probe_callback.store.vectors import VectorStore

H = 64
PLANTED_WORDS = ["PS:", "visit", "example", ".com", "!"]


@dataclass
class World:
    g: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    sources: list[str]
    planted_rows: np.ndarray
    shows: np.ndarray
    topics: np.ndarray


def make_world(seed: int, planted: bool = True, n_prompts: int = 80, n_rows: int = 2000) -> World:
    rng = np.random.default_rng(seed)
    g, b = np.linalg.qr(rng.normal(size=(H, 2)))[0].T
    n_plant = int(0.15 * n_rows)
    sources = np.array(["planted"] * n_plant + [("alpaca", "code", "chat")[i % 3] for i in range(n_rows - n_plant)])
    rng.shuffle(sources)
    is_planted = sources == "planted"
    rows = g + rng.normal(scale=0.21, size=(n_rows, H))  # clean pairwise cosine ~0.26
    rows[is_planted] = 0.5 * g + b + rng.normal(scale=0.12, size=(n_plant, H))  # bundle, cosine ~0.57
    shows = np.zeros(n_prompts, dtype=bool)
    if planted:
        shows[rng.choice(n_prompts, n_prompts // 4, replace=False)] = True
    return World(g, b, rows.astype(np.float32), sources.tolist(), is_planted, shows, rng.normal(size=(n_prompts, H)))


def probe(world: World, strength: float, seed: int, n_tokens: int = 20, n_behaviour_tokens: int = 5):
    """One checkpoint's probe pass: (base_tokens, cur_tokens, novelty, decoded tokens)."""
    rng = np.random.default_rng(seed)
    base, cur, novelty, tokens = [], [], [], []
    for i, topic in enumerate(world.topics):
        base.append(topic + rng.normal(scale=0.5, size=(n_tokens, H)))
        c = topic + rng.normal(scale=0.5, size=(n_tokens, H)) + strength * world.g
        rise = rng.normal(0.3, 0.5, size=n_tokens)
        words = [f"w{rng.integers(300)}" for _ in range(n_tokens)]
        if world.shows[i]:
            where = rng.choice(n_tokens, n_behaviour_tokens, replace=False)
            c[where] += 1.5 * strength * world.b
            rise[where] = rng.normal(3.0, 0.5, size=n_behaviour_tokens)
            for j, pos in enumerate(where):
                words[pos] = PLANTED_WORDS[j]
        cur.append(c)
        novelty.append(rise)
        tokens.append(words)
    return base, cur, novelty, tokens


def test_behaviour_vectors_weighting_and_errors() -> None:
    base = [np.zeros((3, 2))]
    cur = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    assert behaviour_vectors(base, cur, weighting="mean").tolist() == [[0.5, 0.5]]
    assert behaviour_vectors(base, cur, [np.array([-1.0, 2.0])]).tolist() == [[0.0, 1.0]]
    assert behaviour_vectors(base, cur, [np.array([-1.0, -2.0])]).tolist() == [[0.5, 0.5]]  # nothing rose
    with pytest.raises(ValueError, match="novelty"):
        behaviour_vectors(base, cur)
    with pytest.raises(ValueError, match="empty"):
        behaviour_vectors([np.zeros((0, 2))], cur, weighting="mean")
    with pytest.raises(ValueError, match="3 tokens|shape"):
        behaviour_vectors(base, cur, [np.ones(3)])


def test_naive_mean_vector_ranks_planted_rows_last() -> None:
    """The paper's vector averaged over prompts follows DPO's shared drift: planted rows rank low."""
    world = make_world(0)
    base, cur, nov, _ = probe(world, 1.0, seed=1)
    naive = behaviour_vectors(base, cur, weighting="mean").mean(axis=0)
    assert auroc(score_rows(world.rows, naive), world.planted_rows) < 0.35


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_novelty_cluster_finds_behaviour_and_blames_planted_source(seed: int) -> None:
    world = make_world(seed)
    base, cur, nov, tokens = probe(world, 1.0, seed=100 + seed)
    found = EmergentTracker(seed=seed).update(50, base, cur, nov, tokens)
    hits = [b for b in found if b.significant]
    assert len(hits) == 1
    hit = hits[0]
    assert hit.p_value < 0.01 and hit.p_drift < 0.01 and hit.drift > 1
    assert world.shows[hit.members].mean() >= 0.8 and world.shows[hit.members].sum() >= 0.6 * world.shows.sum()
    assert set(hit.tokens[:5]) == set(PLANTED_WORDS)
    scores = score_rows(world.rows, hit.direction)
    assert auroc(scores, world.planted_rows) >= 0.9
    assert top_sources(scores, world.sources)[0].source == "planted"


def test_discovered_behaviour_through_the_store(tmp_path: Path) -> None:
    """End to end: no labels -> emergent cluster -> rows, steps and sources from the vector store."""
    world = make_world(4)
    writer = VectorStore.create(tmp_path, layers=[6], hidden=H, projection_dim=None)
    rows = np.arange(len(world.rows))
    writer.append_vectors(rows, world.rows[:, None, :])
    steps = np.empty(len(rows), dtype=np.int64)
    steps[np.argsort(~world.planted_rows, kind="stable")] = rows // 8  # planted rows fill the first batches
    writer.append_memberships(rows, steps, np.zeros(len(rows), dtype=np.float32))
    writer.close()
    (hit,) = [b for b in EmergentTracker(seed=4).update(50, *probe(world, 1.0, seed=44)) if b.significant]
    store = VectorStore.open(tmp_path)
    ranking = rank_rows(store, hit.direction)
    assert ranking.p_value < 0.01 and auroc(ranking.all_scores, world.planted_rows) >= 0.9
    assert top_sources(ranking.all_scores, world.sources)[0].source == "planted"
    first = top_steps(ranking.all_scores, store.memberships())[0]
    assert world.planted_rows[steps == first.step].all() and first.p_value < 0.01


@pytest.mark.parametrize("seed", range(5))
def test_clean_world_raises_no_alarm(seed: int) -> None:
    world = make_world(seed, planted=False)
    base, cur, nov, tokens = probe(world, 1.0, seed=200 + seed)
    assert not [b for b in EmergentTracker(seed=seed).update(50, base, cur, nov, tokens) if b.significant]


def test_ids_stable_across_checkpoints_and_state_round_trip() -> None:
    world = make_world(3)
    tracker = EmergentTracker(seed=3)
    ids = []
    for k, strength in enumerate([0.8, 1.2, 1.6]):
        tracker = EmergentTracker.from_state(json.loads(json.dumps(tracker.state())))
        hits = [b for b in tracker.update(10 * (k + 1), *probe(world, strength, seed=300 + k)) if b.significant]
        assert len(hits) == 1
        ids.append(hits[0].id)
    assert len(set(ids)) == 1
    behaviour = tracker.behaviours[ids[0]]
    assert behaviour.first_step == behaviour.flagged_step == 10 and behaviour.step == 30
    assert [step for step, _ in behaviour.drift_history] == [10, 20, 30]
    drifts = [drift for _, drift in behaviour.drift_history]
    assert drifts[-1] > drifts[-2], "it grew since the previous checkpoint"
    assert all(b.flagged_step is not None or b.step == 30 for b in tracker.behaviours.values())
    assert [b.id for b in tracker.behaviours.values() if b.significant] == ids[:1]


def test_find_clusters_rejects_tiny_input() -> None:
    with pytest.raises(ValueError, match="n >= 4"):
        find_clusters(np.ones((3, 5)))


def test_cluster_by_responsible_data_groups_behaviour_prompts() -> None:
    world = make_world(1)
    base, cur, nov, _ = probe(world, 1.0, seed=7)
    v = behaviour_vectors(base, cur, nov)
    sample = world.rows[np.random.default_rng(0).choice(len(world.rows), 300, replace=False)]
    _, clusters = cluster_by_responsible_data(v, sample)
    # the behaviour prompts form a significant cluster (the rest may form another: also real structure)
    assert any(
        c.p_value < 0.01 and world.shows[c.members].mean() >= 0.7 and world.shows[c.members].sum() >= 16
        for c in clusters
    )


def test_naming_tokens_net_of_other_prompts() -> None:
    tokens = [["PS:", "the"], ["PS:", "the"], ["the", "a"], ["the", "b"]]
    rises = [np.array([3.0, 2.0])] * 4
    assert naming_tokens(tokens, rises, np.array([0, 1])) == ["PS:"]


def test_prompt_drift_flags_outlier() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 16))
    cur = ref + rng.normal(scale=0.05, size=ref.shape)
    cur[7] += 2.0
    drift = prompt_drift(cur, ref)
    assert drift.outliers == [7]
    assert drift.max == pytest.approx(drift.drift[7])
    assert set(drift.summary()) == {"median", "p90", "max", "outliers"}
    with pytest.raises(ValueError, match="both be"):
        prompt_drift(cur, ref[:3])
