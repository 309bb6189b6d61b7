"""Benchmark: a 10,000,000-row store written by 2 ranks (synthetic float16 vectors, dim 64).

Writes the store with its own writer under /tmp (each rank writes half the rows; deleted after),
then times one ranking (``rank_rows`` + ``top_sources`` + ``top_steps`` with the store's
memberships), a plain ``iter_vectors`` pass (the cross-rank de-duplication) and measures the peak
memory of each stage. The row index (``rows.RowIndex``, kept in memory by the callback) is built
for ``--index-rows`` synthetic rows (ids, sources, 16-byte keys, prompt/chosen/rejected texts of
``--text-chars`` characters) and its memory is extrapolated linearly to ``--rows``.

Run:
    python -m benchmarks.store_scale              # writes benchmarks/results/store_scale.json
    python -m benchmarks.store_scale --rows 1000000 --index-rows 100000
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import RESULTS, save
from benchmarks.ranking import SOURCES, MemorySampler
from probe_callback.attribution import rank_rows, top_sources, top_steps
from probe_callback.rows import RowIndex
from probe_callback.store import VectorStore

CHUNK = 1 << 20


def build(path: Path, rows: int, dim: int, ranks: int = 2, batch: int = 8) -> np.ndarray:
    """Rows split between ``ranks`` writers as a data-parallel run splits batches; every 50th row
    planted along one direction. Returns that direction."""
    rng = np.random.default_rng(0)
    planted = rng.standard_normal(dim).astype(np.float32)
    writers = [VectorStore.create(path, layers=[12], hidden=dim, projection_dim=None, rank=r) for r in range(ranks)]
    for start in range(0, rows, CHUNK):
        idx = np.arange(start, min(start + CHUNK, rows))
        vecs = rng.standard_normal((len(idx), 1, dim), dtype=np.float32)
        vecs[idx % 50 == 0, 0] += 2 * planted
        rank = (idx // batch) % ranks
        for r, w in enumerate(writers):
            mine = rank == r
            w.append_vectors(idx[mine], vecs[mine])
            w.append_memberships(idx[mine], idx[mine] // (batch * ranks) + 1, np.zeros(mine.sum(), np.float32))
    for w in writers:
        w.close()
    return planted


def index_memory(n: int, text_chars: int) -> float:
    """Resident MiB a RowIndex of ``n`` rows adds (16-byte keys, ids, sources, three texts per row)."""
    rng = np.random.default_rng(1)
    before = psutil.Process().memory_info().rss
    keys = [os.urandom(16) for _ in range(n)]
    texts = {f: [f"{f} {i} " + "x" * text_chars for i in range(n)] for f in ("prompt", "chosen", "rejected")}
    index = RowIndex(keys, np.arange(n), [f"row-{i}" for i in range(n)], list(rng.choice(SOURCES, n)), texts)
    del keys, texts
    grown = (psutil.Process().memory_info().rss - before) / 2**20
    assert index.n_rows == n
    return grown


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--index-rows", type=int, default=1_000_000)
    parser.add_argument("--text-chars", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "store_scale.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="probe_callback_scale_", dir="/tmp"))
    try:
        with MemorySampler() as build_mem:
            t0 = time.perf_counter()
            planted = build(folder, args.rows, args.dim)
            build_s = time.perf_counter() - t0
        store = VectorStore.open(folder)
        sources = [SOURCES[i % 4] if i % 50 else "planted" for i in range(args.rows)]
        query = planted + np.random.default_rng(1).standard_normal(args.dim).astype(np.float32)
        load = psutil.getloadavg()[0]
        with MemorySampler() as iter_mem:
            t0 = time.perf_counter()
            seen = sum(len(r) for r, _ in store.iter_vectors(chunk=CHUNK))
            iter_s = time.perf_counter() - t0
        with MemorySampler() as rank_mem:
            t0 = time.perf_counter()
            ranking = rank_rows(store, query, chunk=CHUNK)
            t1 = time.perf_counter()
            srcs = top_sources(ranking.all_scores, sources)
            t2 = time.perf_counter()
            steps = top_steps(ranking.all_scores, store.memberships())
            t3 = time.perf_counter()
        index_mib = index_memory(args.index_rows, args.text_chars)
        result = {
            "rows": args.rows,
            "dim": args.dim,
            "ranks": 2,
            "store_mib": round(store.bytes_on_disk() / 2**20, 1),
            "build_seconds": round(build_s, 1),
            "build_peak_rss_delta_mib": round((build_mem.peak_rss - build_mem.base_rss) / 2**20, 1),
            "iter_vectors_seconds": round(iter_s, 2),
            "iter_vectors_rows": seen,
            "iter_vectors_peak_anon_delta_mib": round((iter_mem.peak_anon - iter_mem.base_anon) / 2**20, 1),
            "ranking_seconds": round(t3 - t0, 2),
            "seconds_rank_rows": round(t1 - t0, 2),
            "seconds_top_sources": round(t2 - t1, 2),
            "seconds_top_steps": round(t3 - t2, 2),
            "ranking_peak_rss_delta_mib": round((rank_mem.peak_rss - rank_mem.base_rss) / 2**20, 1),
            "ranking_peak_anon_delta_mib": round((rank_mem.peak_anon - rank_mem.base_anon) / 2**20, 1),
            "top_source": srcs[0].source,
            "top_step": steps[0].step,
            "row_index_rows_measured": args.index_rows,
            "row_index_text_chars": args.text_chars,
            "row_index_mib_measured": round(index_mib, 1),
            f"row_index_mib_extrapolated_to_{args.rows}": round(index_mib * args.rows / args.index_rows, 1),
            "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpus": psutil.cpu_count(),
            "load_avg_1m": round(load, 2),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
