"""Benchmark: the light check's reading anywhere in the answers, replayed on every saved check, three ways.

Each run of ``benchmarks/learning.py`` saves what its light checks read (``results/*_light.npz``). This replays
the reading *anywhere in the answers* of every pattern at every saved check (no model is run) as:

- ``raw``: every token of the pattern, log-probs as read (the code before 2026-12-07, last);
- ``floor``: the same, each log-prob read as ``FLOOR`` (-10 nats) when below it;
- ``floor_lead`` (today's code): with the floor, and a pattern whose rows part at one token read by that token
  (and its appended line's first tokens) alone.

A reading confirms at p <= 0.01 after the correction for the check's patterns and two readings each. Two
approximations, the same for all three: controls are read only where foreign (the check also reads every token
on prompts of the pattern's own kind, which the saved arrays do not mark), and only this one reading is
replayed (a check takes the best of this and the first-token or after-the-answer reading). Runs named
``clean`` or ``cut`` have no planted rows: any confirmation there is a false one.

Run:
    python -m benchmarks.light_replay                 # every saved check -> results/light_replay.json
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, save
from probe_callback.decide.light import FLOOR, leading
from probe_callback.scoring.confirmation import word_rise

VARIANTS = ("raw", "floor", "floor_lead")
ALPHA = 0.01


def replay(path: Path) -> list[dict[str, Any]]:
    """Every pattern at every check of one run's saved light checks, its p-value under each variant."""
    z = np.load(path)
    out = []
    for step in sorted({int(m.group(1)) for k in z.files if (m := re.match(r"s(\d+)_tokens$", k))}):
        key = f"s{step}"
        tokens = [int(t) for t in z[f"{key}_tokens"]]
        column = {t: j for j, t in enumerate(tokens)}
        names = sorted({m.group(1) for k in z.files if (m := re.match(rf"{key}_(.+)_tokens$", k))})
        own = {int(t) for n in names for t in z[f"{key}_{n}_tokens"]}
        control = [j for j, t in enumerate(tokens) if t not in own]
        now, before, foreign = z[f"{key}_now"], z[f"{key}_before"], z[f"{key}_foreign"]
        for name in names:
            outside = z[f"{key}_{name}_outside"]
            mine = [column[int(t)] for t in z[f"{key}_{name}_tokens"]]
            start_key, closers_key = f"{key}_{name}_start", f"{key}_{name}_closers"  # older runs kept neither
            start = int(z[start_key]) if start_key in z.files and int(z[start_key]) >= 0 else None
            closers = [int(t) for t in z[closers_key]] if closers_key in z.files else []
            lead = [column[t] for t in leading(start, closers, [tokens[j] for j in mine])]
            read = {"raw": (mine, None), "floor": (mine, FLOOR), "floor_lead": (lead, FLOOR)}
            entry: dict[str, Any] = {"step": step, "pattern": name, "outside": int(outside.sum())}
            for variant, (columns, floor) in read.items():
                w = word_rise(now, before, columns, control, outside, foreign, seed=step, floor=floor)
                entry[variant] = {
                    "p": min(1.0, w.p_value * len(names) * 2),
                    "score": round(w.score, 3),
                    "above": w.above,
                }
            out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glob", default="learning_*_light.npz", help="which saved checks (under results/)")
    args = parser.parse_args(argv)
    runs = {
        p.name.removeprefix("learning_").removesuffix("_light.npz"): replay(p) for p in sorted(RESULTS.glob(args.glob))
    }
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        confirmed = {
            run: [f"{e['pattern']} at {e['step']}" for e in entries if e[variant]["p"] <= ALPHA]
            for run, entries in runs.items()
        }
        clean = {run: c for run, c in confirmed.items() if ("clean" in run or "cut" in run) and c}
        planted = sum(len(c) for run, c in confirmed.items() if "planted" in run)
        summary[variant] = {"planted_confirmations": planted, "clean_confirmations": clean}
        n_clean = sum(map(len, clean.values()))
        print(f"{variant:10s} planted checks confirmed: {planted:3d}   clean ones: {n_clean} {clean}")
    checks = sum(map(len, runs.values()))
    print(f"{checks} readings over {len(runs)} runs")
    save(
        "light_replay.json",
        {"alpha": ALPHA, "floor": FLOOR, "readings": checks, "summary": summary, "runs": runs},
        echo=False,
    )


if __name__ == "__main__":
    main()
