"""Benchmark: vector groups on the stored records of the learning benchmark's runs, step by step.

Replays :func:`~probe_callback.scoring.vector_groups.find_vector_groups` (what a learning check does
with the datapoint vectors) on each run's store of ``benchmarks/learning.py``, keeping only the
records up to steps 20, 30, 45 and 60. For each cut it gives the groups that are news (p <= 0.01):
their size, top source, share of planted rows and words. No model is run; the stores must exist
(run the learning benchmark first, same ``--work``).

Run:
    python -m benchmarks.vector_groups_replay   # every organism, mix, seeds 0-2 -> results/vector_groups_replay.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from benchmarks.common import DATA, read_jsonl, save, smollm2_path
from benchmarks.learning import ORGANISMS
from probe_callback.decide.patterns import PATTERN_ALPHA
from probe_callback.scoring.vector_groups import find_vector_groups
from probe_callback.store.vectors import VectorStore

CUTS = (20, 30, 45, 60)


def replay(work: Path, organism: str, mix: str, seed: int, decode: Any) -> list[dict[str, Any]]:
    """The vector groups that are news at each cut of one run."""
    org = ORGANISMS[organism]
    rows = read_jsonl(DATA / org["train"])
    if mix == "clean":
        rows = [r for r in rows if r["source"] not in org["contaminated"]]
    sources = np.array([r["source"] for r in rows], dtype=object)
    planted = np.array([r["planted"] is not None for r in rows])
    store = VectorStore.open(work / f"{organism}-{mix}-{seed}" / "probe_callback" / "vectors")
    records, stored = store.memberships(), store.row_ids()
    out = []
    for step in CUTS:
        upto = {k: v[records["step"] <= step] for k, v in records.items()}
        groups = find_vector_groups(upto, store.vectors_for, decode, sources, stored=stored)
        news = [
            {
                "n_rows": len(g.rows),
                "p_value": g.p_value,
                "top_source": next(iter(g.sources), None),
                "planted_share": round(float(planted[g.rows].mean()), 2),
                "words": g.words,
            }
            for g in groups
            if g.p_value <= PATTERN_ALPHA
        ]
        out.append({"step": step, "groups": len(groups), "news": news})
    return out


def _said(news: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n['n_rows']} {n['top_source']} ({n['planted_share']:.0%} planted)" for n in news) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/probe_callback_learning")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())

    def decode(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=True)

    results = {}
    for organism in sorted(ORGANISMS):
        for mix in ("planted", "clean"):
            for seed in args.seeds:
                cuts = replay(Path(args.work), organism, mix, seed, decode)
                results[f"{organism} {mix} seed {seed}"] = cuts
                line = "; ".join(f"{c['step']}: {_said(c['news'])}" for c in cuts)
                print(f"{organism} {mix} seed {seed}: {line}", flush=True)
    save("vector_groups_replay.json", results, echo=False)


if __name__ == "__main__":
    main()
