"""Benchmark: the row index and a store of 10,000,000 rows (synthetic): build time, memory, ranking time.

Store (``--part store``): a store written by 2 ranks (float16 vectors, dim 64) with its own writer under
/tmp (each rank writes half the rows; deleted after); times one ranking (``rank_rows`` + ``top_sources`` +
``top_steps`` with the store's memberships) and a plain ``iter_vectors`` pass (the cross-rank
de-duplication), and the peak memory of each stage.

Row index (``--part index``): a tokenized DPO dataset of ``--index-rows`` rows written as one Arrow file
under /tmp (token ids, prompt/chosen/rejected texts of ``--text-chars`` characters, ``id``, ``source``;
every 1000th row dropped through an index mapping as TRL drops truncated rows) and read memory-mapped,
as the datasets cache holds the trainer's dataset; then ``RowIndex.from_dataset`` on it: build time,
the memory it keeps and its peak, batch lookups, a report's top rows (ids, sources, texts read from the
file), ``sources_array`` and ``rows_with_prompts`` (one pass over the prompt column).

Memory is reported as resident (rss) and anonymous (rss - shared: what the process really holds; pages
of a memory-mapped file are shared and the kernel can drop them, so the process's peak rss counts the
pages of the dataset file it read). ``index_kept_mib`` is the exact size of the index's arrays;
``index_kept_anon_delta_mib`` what the process's anonymous memory grew by (the allocator may reuse memory
freed before, so it can be lower).

Run:
    python -m benchmarks.store_scale                     # both parts at 10M rows -> results/store_scale.json
    python -m benchmarks.store_scale --part index        # the row index alone
    python -m benchmarks.store_scale --rows 1000000 --index-rows 100000
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import torch

from benchmarks.common import RESULTS, save
from benchmarks.ranking import SOURCES, MemorySampler
from probe_callback.capture.rows import RowIndex
from probe_callback.scoring.attribution import rank_rows
from probe_callback.scoring.blame import top_sources, top_steps
from probe_callback.store.vectors import VectorStore

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


TOKENS = {"prompt_ids": 16, "chosen_ids": 12, "rejected_ids": 12}


def write_dataset(path: Path, n: int, text_chars: int, chunk: int = 250_000) -> None:
    """``n`` tokenized DPO rows as one Arrow stream file (the datasets cache's format)."""
    rng = np.random.default_rng(2)
    fields = [(c, pa.string()) for c in ("id", "source", "prompt", "chosen", "rejected")]
    schema = pa.schema(fields + [(c, pa.list_(pa.int32())) for c in TOKENS])
    pad = "x" * text_chars
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, n, chunk):
            idx = range(start, min(start + chunk, n))
            m = len(idx)
            columns = [
                pa.array([f"row-{i}" for i in idx]),
                pa.array([SOURCES[i % 4] if i % 50 else "planted" for i in idx]),
                *(pa.array([f"{f} {i} {pad}" for i in idx]) for f in ("prompt", "chosen", "rejected")),
            ]
            for length in TOKENS.values():
                values = rng.integers(3, 50_000, m * length, dtype=np.int32)
                offsets = np.arange(0, m * length + 1, length, dtype=np.int32)
                columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
            writer.write_batch(pa.record_batch(columns, schema=schema))


def _batch(index: RowIndex, dataset, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated ``[chosen; rejected]`` batch of dataset positions (right padding)."""
    seqs = []
    for pos in positions:
        ex = dataset[int(pos)]
        seqs.append(ex["prompt_ids"] + ex["chosen_ids"])
    for pos in positions:
        ex = dataset[int(pos)]
        seqs.append(ex["prompt_ids"] + ex["rejected_ids"])
    width = max(len(x) for x in seqs)
    ids, mask = torch.zeros(len(seqs), width, dtype=torch.long), torch.zeros(len(seqs), width, dtype=torch.long)
    for k, x in enumerate(seqs):
        ids[k, : len(x)], mask[k, : len(x)] = torch.tensor(x), 1
    return ids, mask


def _anon() -> int:
    info = psutil.Process().memory_info()
    return info.rss - info.shared


def index_part(n: int, text_chars: int) -> dict:
    """The row index over an ``n``-row memory-mapped dataset (see the module's docstring)."""
    from datasets import Dataset

    folder = Path(tempfile.mkdtemp(prefix="probe_callback_index_", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        write_dataset(folder / "data.arrow", n, text_chars)
        write_s = time.perf_counter() - t0
        kept = np.flatnonzero(np.arange(n) % 1000 != 999)  # TRL's dropped rows: an index mapping
        dataset = Dataset.from_file(str(folder / "data.arrow")).select(kept)
        del kept
        gc.collect()
        before = _anon()
        with MemorySampler() as mem:
            t0 = time.perf_counter()
            index = RowIndex.from_dataset(dataset, max_length=1024)
            build_s = time.perf_counter() - t0
        gc.collect()
        kept_mib = (_anon() - before) / 2**20
        arrays = sum(v.nbytes for v in vars(index).values() if isinstance(v, np.ndarray))
        rng = np.random.default_rng(3)
        batches = [_batch(index, dataset, rng.choice(len(dataset), 8, replace=False)) for _ in range(200)]
        t0 = time.perf_counter()
        found = [index.lookup(ids, mask) for ids, mask in batches]
        lookup_ms = (time.perf_counter() - t0) / len(batches) * 1e3
        top = rng.choice(index.order, 100, replace=False)
        t0 = time.perf_counter()
        rows = [
            {**index.describe(int(r)), **{f: index.text(int(r), f) for f in ("prompt", "chosen", "rejected")}}
            for r in top
        ]
        top_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sources = index.sources_array()
        sources_s = time.perf_counter() - t0
        prompts = [f"prompt {int(r)} " + "x" * text_chars for r in top[:64]]
        with MemorySampler() as scan_mem:
            t0 = time.perf_counter()
            watched = index.rows_with_prompts(prompts)
            scan_s = time.perf_counter() - t0
        assert all((f >= 0).all() for f in found) and [w for w in watched] == [[int(r)] for r in top[:64]]
        assert rows[0]["id"] == f"row-{int(top[0])}" and sources[int(top[0])] == rows[0]["source"]
        return {
            "index_rows": n,
            "index_positions": len(index.order),
            "index_text_chars": text_chars,
            "index_dataset_gib_on_disk": round((folder / "data.arrow").stat().st_size / 2**30, 2),
            "index_dataset_write_seconds": round(write_s, 1),
            "index_build_seconds": round(build_s, 1),
            "index_kept_mib": round(arrays / 2**20, 1),
            "index_kept_bytes_per_row": round(arrays / n, 1),
            "index_kept_anon_delta_mib": round(kept_mib, 1),
            "index_build_peak_anon_delta_mib": round((mem.peak_anon - mem.base_anon) / 2**20, 1),
            "index_build_peak_rss_delta_mib": round((mem.peak_rss - mem.base_rss) / 2**20, 1),
            "index_lookup_ms_per_batch_of_8_pairs": round(lookup_ms, 3),
            "index_top_100_rows_seconds": round(top_s, 3),
            "index_sources_array_seconds": round(sources_s, 2),
            "index_rows_with_64_prompts_seconds": round(scan_s, 1),
            "index_rows_with_prompts_peak_anon_delta_mib": round((scan_mem.peak_anon - scan_mem.base_anon) / 2**20, 1),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def store_part(rows: int, dim: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="probe_callback_scale_", dir="/tmp"))
    try:
        with MemorySampler() as build_mem:
            t0 = time.perf_counter()
            planted = build(folder, rows, dim)
            build_s = time.perf_counter() - t0
        store = VectorStore.open(folder)
        sources = [SOURCES[i % 4] if i % 50 else "planted" for i in range(rows)]
        query = planted + np.random.default_rng(1).standard_normal(dim).astype(np.float32)
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
        return {
            "rows": rows,
            "dim": dim,
            "ranks": 2,
            "store_mib": round(store.bytes_on_disk() / 2**20, 1),
            "build_seconds": round(build_s, 1),
            "build_peak_rss_delta_mib": round((build_mem.peak_rss - build_mem.base_rss) / 2**20, 1),
            "build_peak_anon_delta_mib": round((build_mem.peak_anon - build_mem.base_anon) / 2**20, 1),
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
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "index", "store"], default="all")
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the store")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--index-rows", type=int, default=10_000_000, help="rows of the row index's dataset")
    parser.add_argument("--text-chars", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "store_scale.json")
    args = parser.parse_args(argv)
    load = psutil.getloadavg()[0]
    result: dict = {}
    if args.part in ("all", "store"):
        result.update(store_part(args.rows, args.dim))
    if args.part in ("all", "index"):
        result.update(index_part(args.index_rows, args.text_chars))
    result.update(
        {
            "command": "python -m benchmarks.store_scale " + " ".join(sys.argv[1:] if argv is None else argv),
            "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpus": psutil.cpu_count(),
            "load_avg_1m_at_start": round(load, 2),
        }
    )
    save(args.out, result)
    return result


if __name__ == "__main__":
    main()
