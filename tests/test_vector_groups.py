"""Vector groups: rows of one lesson found by their datapoint vectors, news only when learned faster."""

from types import SimpleNamespace

import numpy as np

from probe_callback.decide.emergent import EmergentClusters
from probe_callback.scoring.learning import Pattern, find_patterns
from probe_callback.scoring.vector_groups import find_vector_groups

N, DIM = 320, 24


def _run(lesson_rise: float, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Records and datapoint vectors of 320 rows over 80 steps. Rows come from four topics, each with its
    own direction; every tenth row instead teaches one lesson (a fifth direction), spelled by a different
    word on each row, and learns ``lesson_rise`` nats faster."""
    rng = np.random.default_rng(seed)
    lesson = np.arange(N) % 10 == 0
    axis = np.where(lesson, 3, np.array([5, 7, 9, 11])[np.arange(N) % 4])
    vectors = rng.normal(size=(N, DIM)) + 6.0 * np.eye(DIM)[axis]
    rec = {
        "row": np.arange(N),
        "step": np.arange(N) // 4 + 1,
        "rise": rng.gamma(2.0, 1.0, N) + lesson_rise * lesson,
        "peak_ids": rng.integers(100, 10_000, (N, 3)),  # no word shared by two rows, lesson or not
        "peak_rises": np.full((N, 3), 2.0),
    }
    return rec, vectors, lesson


def _groups(rec: dict[str, np.ndarray], vectors: np.ndarray) -> list[Pattern]:
    return find_vector_groups(rec, lambda rows: vectors[rows], decode=lambda i: f"w{i}")


def test_a_lesson_spelled_by_no_shared_word_is_found_by_its_vectors():
    rec, vectors, lesson = _run(lesson_rise=4.0)
    assert find_patterns(rec, decode=lambda i: f"w{i}") == [], "no word links the lesson's rows"
    best = _groups(rec, vectors)[0]
    assert best.p_value <= 0.01 and best.found_by == "datapoint vectors"
    assert lesson[best.rows].mean() >= 0.9 and len(best.rows) >= 0.8 * lesson.sum()


def test_rows_that_look_alike_but_learn_at_the_ordinary_pace_are_not_news():
    rec, vectors, lesson = _run(lesson_rise=0.0)
    groups = _groups(rec, vectors)
    assert any(lesson[g.rows].mean() >= 0.9 for g in groups), "the lesson's rows still cluster"
    assert len(groups) >= 4 and all(g.p_value > 0.01 for g in groups), "and so do the topics: none is news"


def test_only_rows_with_a_stored_vector_are_clustered():
    rec, vectors, lesson = _run(lesson_rise=4.0)
    stored = np.arange(0, N, 2)  # half the rows have a vector yet
    asked: list[np.ndarray] = []

    def vectors_for(rows: np.ndarray) -> np.ndarray:
        asked.append(rows)
        assert np.isin(rows, stored).all()
        return vectors[rows]

    best = find_vector_groups(rec, vectors_for, decode=lambda i: f"w{i}", stored=stored)[0]
    assert asked and best.p_value <= 0.01 and lesson[best.rows].mean() >= 0.9


def test_rows_whose_vector_overflowed_are_left_out():
    rec, vectors, lesson = _run(lesson_rise=4.0)
    vectors[::7] = np.inf  # float16 overflow in the store
    best = _groups(rec, vectors)[0]
    assert best.p_value <= 0.01 and lesson[best.rows].mean() >= 0.9
    assert not np.isin(best.rows, np.arange(0, N, 7)).any()


def test_a_group_that_shares_no_word_links_to_a_cluster_whose_top_rows_are_its_rows():
    kind = {"found_by": "datapoint vectors"}
    group = Pattern([], np.arange(10), np.ones(10), 1.0, 1.0, 0.001, (1, 9), name="learning-0", **kind)
    other = Pattern([], np.arange(50, 60), np.ones(10), 1.0, 1.0, 0.001, (1, 9), name="learning-1", **kind)
    clusters = EmergentClusters(None, None, SimpleNamespace(patterns=[group, other]), None)  # type: ignore[arg-type]
    entry = {"top_rows": [{"row": r} for r in [0, 1, 2, 3, 4, 5, 6, 70, 71, 72]]}
    [link] = clusters._links(SimpleNamespace(tokens=[" zebra"]), entry)  # type: ignore[arg-type]
    assert link["pattern"] == "learning-0" and link["shared_words"] == [] and link["direction_agreement"] == 0.7
