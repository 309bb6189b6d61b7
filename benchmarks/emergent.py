"""Unsupervised discovery on a real model: does an emergent cluster, found with no labels, blame the planted rows?

Two DPO runs of SmolLM2-135M-Instruct with the callback and no ``Behaviour`` (by default: watch prompts
sampled from the training prompts, default cadence held to the default probe budget; ``--watch heldout``
watches the organism's 78 held-out prompts instead, ``--every N`` probes every N steps):

- ``planted``: the organism mix (``formatting_mix`` plants distractor-triggered compliance);
- ``clean``: the same mix without the two contaminated sources.

For every cluster the tracker saw: its significance, the sources of its member prompts, and the AUROC of
its direction's row ranking against each planted behaviour's rows. For the clean run: whether any
emergent alarm blamed a source. Also the probe cost share at the default cadence. Saved to
``benchmarks/results/emergent.json``; each probe's activations go to ``<work>/<mix>/probes`` (npz).

    python -m benchmarks.emergent [--epochs 2] [--watch train|heldout] [--every N] [--mix planted clean]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import DATA, machine, quality, read_jsonl, row_scores, save, smollm_trainer
from probe_callback import ProbeCallback
from probe_callback.publish.report import jsonable
from probe_callback.scoring.watch import Probe, Watch
from probe_callback.store.vectors import VectorStore

CONTAMINATED = ("formatting_mix", "user_feedback")
PLANTED = ("distractor_compliance", "flattery")


def record_probes(folder: Path) -> dict[int, np.ndarray]:
    """Save every probe's token activations and log-prob rises (flat arrays + lengths, no pickle).

    Returns the answered-prompt mask of each probe step, filled as training runs (cluster members
    index the answered prompts).
    """
    folder.mkdir(parents=True, exist_ok=True)
    probe, valid = getattr(Watch.probe, "__wrapped__", Watch.probe), {}

    def recorded(self: Watch, step: int, *args: Any) -> Probe:
        out = probe(self, step, *args)
        np.savez_compressed(
            folder / f"step-{step}.npz",
            cur=np.concatenate(out.cur_tokens),
            cur_lengths=[len(t) for t in out.cur_tokens],
            base=np.concatenate(self.base_tokens()),
            base_lengths=[len(t) for t in self.base_tokens()],
            novelty=np.concatenate(out.novelty),
            valid=out.valid,
            responses=np.array(out.responses),
        )
        valid[step] = out.valid
        return out

    recorded.__wrapped__ = probe
    Watch.probe = recorded
    return valid


def run(mix: str, args: argparse.Namespace) -> dict[str, Any]:
    rows = read_jsonl(DATA / "organism_train.jsonl")
    if mix == "clean":
        rows = [r for r in rows if r["source"] not in CONTAMINATED]
    work = Path(args.work) / mix
    answered = record_probes(work / "probes")
    trainer = smollm_trainer(
        rows, work, max_steps=-1, num_train_epochs=args.epochs, learning_rate=args.lr, seed=args.seed
    )
    heldout = read_jsonl(DATA / "organism_heldout.jsonl")
    watch = {"heldout": {"probe_prompts": [r["prompt"] for r in heldout]}, "train": {"n_probe_prompts": args.prompts}}
    cadence = {"every_n_steps": args.every} if args.every else {"probe_budget": args.budget or None}
    callback = ProbeCallback(trainer, **watch[args.watch], **cadence, seed=args.seed)
    trainer.add_callback(callback)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    (work / "tracker.json").write_text(json.dumps(jsonable(callback.monitor.tracker.state())))
    report = callback.report()
    store = VectorStore.open(callback.output_dir / "vectors")
    source_of = {json.dumps(r["prompt"], sort_keys=True): r["source"] for r in rows}
    source_of.update({json.dumps(r["prompt"]): f"heldout:{r['kind']}" for r in heldout})
    watched = [source_of.get(json.dumps(p, sort_keys=True), "?") for p in callback.watch.prompts]
    labels = {kind: np.array([r["planted"] == kind for r in rows]) for kind in PLANTED}
    entries = callback.monitor.behaviours
    clusters = []
    for b in callback.monitor.tracker.behaviours.values():
        entry = entries.get(f"emergent-{b.id}", {})
        scores = row_scores(store, b.direction, len(rows))
        members = [watched[i] for i in np.flatnonzero(answered[b.step])[b.members]]
        clusters.append(
            {
                "id": b.id,
                "step": b.step,
                "size": len(b.members),
                "significant": b.significant,
                "p_value": b.p_value,
                "p_drift": b.p_drift,
                "drift": b.drift,
                "tokens": b.tokens,
                "attribution_p_value": entry.get("attribution_p_value"),
                "blame_null_p_value": entry.get("blame_null_p_value"),
                "top_source": (entry.get("top_sources") or [{}])[0].get("source"),
                "member_sources": {s: members.count(s) for s in sorted(set(members))},
                **{kind: quality(scores, y, int(y.sum())) if y.any() else None for kind, y in labels.items()},
            }
        )
    log = callback.output_dir / "alerts.jsonl"
    alerts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    emergent_alerts = [
        {
            "step": a["step"],
            "level": a["level"],
            "behaviour": a["behaviour"],
            "p_value": a["p_value"],
            "top_source": (a.get("top_sources") or [{}])[0],
        }
        for a in alerts
        if a["behaviour"].startswith("emergent")
    ]
    return {
        "rows": len(rows),
        "planted_rows": {kind: int(y.sum()) for kind, y in labels.items()},
        "steps": trainer.state.global_step,
        "paused_at_step": report["paused_at_step"],
        "wall_seconds": round(wall, 1),
        "cost": report["cost"],
        "every_n_steps": report["every_n_steps"],
        "watched_sources": {s: watched.count(s) for s in sorted(set(watched))},
        "clusters": clusters,
        "emergent_alerts": emergent_alerts,
        "emergent_alarms": [a for a in emergent_alerts if a["level"] in ("WARN", "ERROR")],
        "prompt_drift": report["prompt_drift"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", nargs="+", default=["planted", "clean"], choices=["planted", "clean"])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--watch", choices=["train", "heldout"], default="train", help="train: the default sample")
    parser.add_argument("--prompts", type=int, default=64, help="with --watch train: how many (the default)")
    parser.add_argument("--every", type=int, default=0, help="every_n_steps; 0: the default cadence and budget")
    parser.add_argument("--out", default="emergent.json", help="file name under benchmarks/results/")
    parser.add_argument("--budget", type=float, default=0.1, help="probe_budget (the default); 0 for none")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/probe_callback_emergent")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"settings": vars(args), "machine": machine()}
    for mix in args.mix:
        result[mix] = run(mix, args)
        save(args.out, result)


if __name__ == "__main__":
    main()
