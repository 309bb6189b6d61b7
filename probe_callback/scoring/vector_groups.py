"""Rows that teach one lesson, found by their datapoint vectors, whose learning stands out.

A word pattern (:func:`~probe_callback.scoring.learning.find_patterns`) needs rows whose learning
peaks on one word. A lesson spread over many words (a tone, a format, a language) still moves its
rows' datapoint vectors (chosen minus rejected activations, :mod:`probe_callback.capture.datapoints`)
the same way. :func:`find_vector_groups` clusters the datapoint vectors of up to ``MAX_ROWS`` trained
rows (HDBSCAN, prepared as discovery prepares behaviour vectors), then tests each cluster's mean
learning z against random groups of the run's rows of the same size and mix of steps, corrected for
every cluster. The clusters are found from the vectors alone, so the z test is fair: a group of rows
that merely look alike, learned at the run's ordinary pace, is not news. A group is named by the
peak words over-represented among its rows (none when no word is).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 240
    >>> planted = np.arange(n) % 8 == 0                                    # 30 rows teach one lesson
    >>> vectors = rng.normal(size=(n, 16)) + 6 * planted[:, None] * np.eye(16)[0]
    >>> rec = {"row": np.arange(n), "step": np.arange(n) // 4 + 1,
    ...        "rise": rng.gamma(2.0, 1.0, n) + 4 * planted,
    ...        "peak_ids": np.where(planted[:, None], rng.integers(5, 8, (n, 3)), rng.integers(10, 60, (n, 3))),
    ...        "peak_rises": np.full((n, 3), 2.0)}
    >>> groups = find_vector_groups(rec, lambda rows: vectors[rows], decode=lambda i: f"w{i}")
    >>> g = groups[0]
    >>> round(float(planted[g.rows].mean()), 2), g.p_value < 0.01, g.words, g.found_by
    (0.81, True, ['w5', 'w6', 'w7'], 'datapoint vectors')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from .clusters import cluster_rows
from .learning import Pattern, Sources, latest_records, peak_words, tested_groups

MAX_ROWS = 2048  # trained rows clustered (a seeded sample beyond it)
MIN_ROWS = 32  # fewer trained rows: nothing to cluster yet
NAME_SHARE = 0.25  # a word names a group when this share of its rows peak on it ...
NAME_LIFT = 2.0  # ... and that share is this many times its share among the clustered rows


def find_vector_groups(
    records: dict[str, np.ndarray],
    vectors: Callable[[np.ndarray], np.ndarray],
    decode: Callable[[int], str],
    sources: Sources | None = None,
    starts: Callable[[int], int | None] | None = None,
    stored: np.ndarray | None = None,
    n_null: int = 999,
    seed: int = 0,
) -> list[Pattern]:
    """Groups of rows by their datapoint vectors (see the module doc), most significant first:
    :func:`lesson_clusters`, then :func:`vector_groups`."""
    lessons = lesson_clusters(records, vectors, stored, seed)
    return vector_groups(records, lessons, decode, sources, starts, n_null, seed)


def lesson_clusters(
    records: dict[str, np.ndarray],
    vectors: Callable[[np.ndarray], np.ndarray],
    stored: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The trained rows clustered (a seeded sample of ``MAX_ROWS`` beyond that) and the row ids of each
    HDBSCAN cluster of their datapoint vectors (smallest: 2% of them, at least 4). ``records``: the
    store's learning records; ``vectors``: row ids -> their datapoint vectors; ``stored``: the rows that
    have a vector (None: every trained row)."""
    rows = np.unique(np.asarray(records["row"], dtype=np.int64))
    pool = rows[np.isin(rows, stored)] if stored is not None else rows
    if len(pool) < MIN_ROWS:
        return pool, []
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(pool, MAX_ROWS, replace=False)) if len(pool) > MAX_ROWS else pool
    x = np.asarray(vectors(take), dtype=np.float64)
    finite = np.isfinite(x).all(axis=1)  # a float16 vector that overflowed says nothing: left out
    take, x = take[finite], x[finite]
    if len(take) < MIN_ROWS:
        return take, []
    labels, _ = cluster_rows(x, max(4, int(np.ceil(0.02 * len(take)))))
    return take, [take[labels == k] for k in range(labels.max() + 1)]


def vector_groups(
    records: dict[str, np.ndarray],
    lessons: tuple[np.ndarray, list[np.ndarray]],
    decode: Callable[[int], str],
    sources: Sources | None = None,
    starts: Callable[[int], int | None] | None = None,
    n_null: int = 999,
    seed: int = 0,
) -> list[Pattern]:
    """Test each cluster of ``lessons`` (:func:`lesson_clusters`) by its rows' learning z against
    random groups of the run's rows of the same size and mix of steps, corrected for every cluster;
    most significant first. ``decode``, ``sources``, ``starts``: as
    :func:`~probe_callback.scoring.learning.find_patterns`."""
    rec = latest_records(records)
    rows = np.asarray(rec["row"], dtype=np.int64)  # increasing
    sample = lessons[0][np.isin(lessons[0], rows)]  # rows rolled back by a resume are gone
    members = [np.searchsorted(rows, c[np.isin(c, rows)]) for c in lessons[1]]
    members = [m for m in members if len(m) >= 4]
    if not members:
        return []
    take = np.searchsorted(rows, sample)
    peaks = dict(zip(take.tolist(), peak_words({k: np.asarray(v)[take] for k, v in rec.items()}, decode, starts)))
    groups = [(_named([peaks[i] for i in m.tolist()], list(peaks.values())), m) for m in members]
    return tested_groups(rec, groups, peaks, sources, n_null, seed, found_by="datapoint vectors")


def _named(members: list[set[tuple[int, str]]], everyone: list[set[tuple[int, str]]], most: int = 4) -> list[str]:
    """The words a group's rows peak on far more often than the clustered rows do, most over-represented first.

    Example:
        >>> a, b = {(1, "shop")}, {(2, "the")}
        >>> _named([a | b, a | b, a], [a | b, a | b, a] + [b] * 9)
        ['shop']
    """
    inside = Counter(w for ws in members for w in {w for _, w in ws})
    overall = Counter(w for ws in everyone for w in {w for _, w in ws})
    lift = {
        w: c / len(members) - overall[w] / len(everyone)
        for w, c in inside.items()
        if c >= max(2, NAME_SHARE * len(members)) and c / len(members) >= NAME_LIFT * overall[w] / len(everyone)
    }
    return sorted(lift, key=lambda w: (-lift[w], w))[:most]
