"""Benchmark: what one learning check costs on rank 0 as a run grows (synthetic store, no model).

A learning check runs at every logging step between probes. Its parts, timed on a store of ``n``
trained rows (float16 datapoint vectors of SmolLM2's width, 576; one learning record a row; rows from 8
topics, each with its own direction, plus 4% of rows teaching one lesson that they learn faster):

- ``read_records_s``: the store's learning records (``VectorStore.memberships``);
- ``word_patterns_s``: :func:`~probe_callback.scoring.learning.find_patterns` (token ids spelled as
  ``w<id>``: the tokenizer's decode is cached per token in a run);
- ``cluster_s``: :func:`~probe_callback.scoring.vector_groups.lesson_clusters` (HDBSCAN on up to 2048
  rows), which a run repeats only once the trained rows grew by a quarter;
- ``vector_groups_s``: :func:`~probe_callback.scoring.vector_groups.vector_groups`, testing the clusters
  (every check);
- ``centre_s``: the mean unit vector of every stored row (the pattern names' directions; one pass);
- ``reversals_s``: :func:`~probe_callback.scoring.reversals.reversed_lessons`, each row's lesson (the
  tokens where its answers part) read from a dict, as the run's cache holds them (a row is tokenised
  once, for the word patterns' lesson starts). The planted rows prefer token 1 over 2, one topic's
  rows 2 over 1 (the rule), the others one of 50 openers over another in both orders.

Each figure is the median of ``--repeats`` calls after one warm-up call. It also says whether the
planted lesson was found (a vector group at p <= 0.01 that is 90% planted rows), and whether the
reversal was (its exception side is exactly the planted rows, and no other side is found).

Run:
    python -m benchmarks.learning_check                  # n = 1,000 / 10,000 / 100,000 -> results/learning_check.json
    python -m benchmarks.learning_check --rows 1000 5000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, save
from probe_callback.decide.patterns import mean_unit_vector
from probe_callback.scoring.learning import find_patterns
from probe_callback.scoring.reversals import reversed_lessons
from probe_callback.scoring.vector_groups import lesson_clusters, vector_groups
from probe_callback.store.vectors import VectorStore

DIM = 576
TOPICS = 8
PLANTED = 0.04  # share of rows teaching the lesson (a group must hold 2% of the clustered rows)


def build(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """A store of ``n`` rows trained 8 a step; returns which rows are planted."""
    rng = np.random.default_rng(seed)
    planted = rng.random(n) < PLANTED
    axes = rng.standard_normal((TOPICS + 1, DIM)).astype(np.float32) * 3
    store = VectorStore.create(path, layers=[12], hidden=DIM, projection_dim=None)
    for start in range(0, n, 65536):
        rows = np.arange(start, min(n, start + 65536))
        topic = np.where(planted[rows], TOPICS, rows % TOPICS)
        vectors = rng.standard_normal((len(rows), DIM)).astype(np.float32) + axes[topic]
        store.append_vectors(rows, vectors[:, None, :])
        learning = {
            "peak_ids": rng.integers(100, 5000, (len(rows), 3)),
            "peak_rises": rng.gamma(2.0, 1.0, (len(rows), 3)),
            "fall": rng.gamma(2.0, 1.0, len(rows)),
        }
        rise = rng.gamma(2.0, 1.0, len(rows)) + 3.0 * planted[rows]
        store.append_memberships(rows, rows // 8 + 1, rise, learning)
    store.close()
    return planted


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls after a warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def measure(n: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        planted = build(Path(tmp), n)
        store = VectorStore.open(tmp)
        decode = "w{}".format
        read_s, records = timed(store.memberships, repeats)
        words_s, _ = timed(lambda: find_patterns(records, decode), repeats)
        cluster_s, lessons = timed(lambda: lesson_clusters(records, store.vectors_for, store.row_ids()), repeats)
        groups_s, groups = timed(lambda: vector_groups(records, lessons, decode), repeats)
        centre_s, _ = timed(lambda: mean_unit_vector(store), repeats)
        found = any(g.p_value <= 0.01 and planted[g.rows].mean() >= 0.9 for g in groups)
        lessons_of, sources = _lessons(planted)
        reversals_s, sides = timed(lambda: reversed_lessons(records, lessons_of.get, decode, sources), repeats)
        exception = [g for g in sides if g.words == ["w1"]]
        return {
            "rows": n,
            "read_records_s": round(read_s, 3),
            "word_patterns_s": round(words_s, 3),
            "cluster_s": round(cluster_s, 3),
            "vector_groups_s": round(groups_s, 3),
            "centre_s": round(centre_s, 3),
            "clusters": len(lessons[1]),
            "planted_lesson_found": bool(found),
            "reversals_s": round(reversals_s, 3),
            "reversal_found": len(sides) == 2
            and len(exception) == 1
            and set(exception[0].rows.tolist()) == set(np.flatnonzero(planted).tolist()),
        }


def _lessons(planted: np.ndarray) -> tuple[dict[int, tuple[int, int]], np.ndarray]:
    """Each row's lesson and source: planted rows (source ``planted``) prefer 1 over 2, topic 0's rows 2
    over 1, the other topics' rows one of 50 openers over another (both orders, every topic alike)."""
    rng = np.random.default_rng(1)
    n = len(planted)
    topic = np.arange(n) % TOPICS
    a, b = rng.integers(10, 60, n), rng.integers(10, 60, n)
    lessons = {r: (int(a[r]), int(b[r])) for r in range(n)}
    lessons |= {int(r): (2, 1) for r in np.flatnonzero(~planted & (topic == 0))}
    lessons |= {int(r): (1, 2) for r in np.flatnonzero(planted)}
    sources = np.where(planted, "planted", np.char.add("topic", topic.astype(str))).astype(object)
    return lessons, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for n in args.rows:
        results.append(measure(n, args.repeats))
        print(results[-1], flush=True)
    save("learning_check.json", {"machine": machine(), "repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
