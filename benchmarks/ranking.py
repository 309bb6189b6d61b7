"""Benchmark: attribution over 1,000,000 stored rows (synthetic float16 vectors, dim 576).

Writes a store with the store's own writer under a temporary folder (about 1.1 GB, deleted after),
then times ``rank_rows`` + ``top_sources`` + ``top_steps`` (memberships read from the store; the
median of ``--repeats`` runs) and samples the process's memory while they run. The page cache
is warm (the store was just written). Also times the blame null a flagged behaviour adds
(``SourceBlame.p_value`` on the ranking's row sample, 999 random directions: the most it draws).
``peak_rss_delta_mib`` counts resident pages of the memory map too (the kernel can drop those);
``peak_anon_delta_mib`` is the memory the ranking itself allocates.

Run:
    python -m benchmarks.ranking            # writes benchmarks/results/ranking.json
    python -m benchmarks.ranking --rows 100000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import RESULTS, save
from probe_callback.scoring.attribution import rank_rows
from probe_callback.scoring.blame import SourceBlame, top_sources, top_steps
from probe_callback.store.vectors import VectorStore

SOURCES = ("alpaca", "code", "chat", "math", "planted")


def build_store(path: Path, rows: int, dim: int, batch: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Write ``rows`` synthetic datapoint vectors (every 50th row planted along one direction) and one
    membership per row; returns the row sources and the planted direction."""
    rng = np.random.default_rng(seed)
    planted_dir = rng.standard_normal(dim).astype(np.float32)
    writer = VectorStore.create(path, layers=[18], hidden=dim, projection_dim=None)
    sources = [SOURCES[i % 4] for i in range(rows)]
    for start in range(0, rows, 65536):
        idx = np.arange(start, min(start + 65536, rows))
        vecs = rng.standard_normal((len(idx), 1, dim), dtype=np.float32)
        planted = idx % 50 == 0
        vecs[planted, 0] += 2 * planted_dir
        for i in idx[planted]:
            sources[i] = "planted"
        writer.append_vectors(idx, vecs)
        writer.append_memberships(idx, idx // batch, rng.gamma(2.0, 1.0, len(idx)).astype(np.float32))
    writer.close()
    return sources, planted_dir


class MemorySampler:
    """Peak resident and anonymous memory of this process, sampled every few milliseconds."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak_rss = self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        info = self.proc.memory_info()
        self.peak_rss = max(self.peak_rss, info.rss)
        self.peak_anon = max(self.peak_anon, info.rss - info.shared)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._sample()
        self.base_rss, self.base_anon = self.peak_rss, self.peak_anon
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS / "ranking.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="probe_callback_bench_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        sources, planted_dir = build_store(folder, args.rows, args.dim)
        write_s = time.perf_counter() - t0
        store = VectorStore.open(folder)
        query = planted_dir + np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
        load = psutil.getloadavg()[0]  # other processes competing for the CPUs
        runs = []
        with MemorySampler() as mem:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ranking = rank_rows(store, query, chunk=args.chunk)
                t1 = time.perf_counter()
                srcs = top_sources(ranking.all_scores, sources)
                t2 = time.perf_counter()
                steps = top_steps(ranking.all_scores, store.memberships())
                runs.append((time.perf_counter() - t0, t1 - t0, t2 - t1, time.perf_counter() - t2))
        total, rank_s, sources_s, steps_s = sorted(runs)[len(runs) // 2]  # the median run
        rng = np.random.default_rng(2)
        t0 = time.perf_counter()
        blame = SourceBlame(ranking, sources, store.project)
        blame_p = blame.p_value(query, lambda k: rng.standard_normal((k, args.dim)))
        blame_s = time.perf_counter() - t0
        result = {
            "rows": args.rows,
            "dim": args.dim,
            "seconds": round(total, 3),
            "peak_rss_delta_mib": round((mem.peak_rss - mem.base_rss) / 2**20, 1),
            "chunk": args.chunk,
            "seconds_rank_rows": round(rank_s, 3),
            "seconds_top_sources": round(sources_s, 3),
            "seconds_top_steps": round(steps_s, 3),
            "seconds_all_runs": [round(r[0], 3) for r in runs],
            "peak_anon_delta_mib": round((mem.peak_anon - mem.base_anon) / 2**20, 1),
            "store_mib": round(store.bytes_on_disk() / 2**20, 1),
            "write_seconds": round(write_s, 1),
            "ranking_p_value": ranking.p_value,
            "seconds_blame_null": round(blame_s, 3),
            "blame_sample_rows": len(ranking.sample_rows),
            "blame_null_p_value": blame_p,
            "top_source": srcs[0].source,
            "top_step": steps[0].step,
            "cpus": psutil.cpu_count(),
            "load_avg_1m": round(load, 2),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
