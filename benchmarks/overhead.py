"""Capture overhead of ProbeCallback on SmolLM2-135M-Instruct DPO (CPU).

Step time: three runs of the same seeded training (same batches, same model trajectory, since the
hooks change nothing), each step run in a different arm in each run, so every step is timed once in
each arm: plain DPO (no hooks), the capture hooks without the learning record (no policy hook), and
the capture hooks with it (the default); the medians of the per-step ratios against plain DPO.
Peak memory: the same short run in two child processes, with and without the callback. Store
growth: bytes on disk per captured row at the default settings.

    python -m benchmarks.overhead [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from benchmarks.common import DATA, ROOT, machine, read_jsonl, save, smollm_trainer
from probe_callback import ProbeCallback
from probe_callback.store.vectors import VectorStore

ARMS = ("plain", "hooks", "learning")  # no hooks; hooks without the learning record; the default


class Interleave(TrainerCallback):
    """Runs each step in one arm (rotating with ``shift``) and times it."""

    def __init__(self, probe: ProbeCallback, shift: int) -> None:
        self.probe, self.shift, self.times = probe, shift, {arm: {} for arm in ARMS}

    def on_step_begin(self, args, state, control, **kw):
        self.arm = ARMS[(state.global_step + 1 + self.shift) % len(ARMS)]
        capture = self.probe.recorder.capture
        if self.arm != "learning":
            capture.__exit__(None, None, None)
        if self.arm == "hooks":  # the same hooks, minus the policy's (the learning record's only input)
            self.policy, capture.policy = capture.policy, None
            capture.__enter__()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        elapsed = time.perf_counter() - self.started  # the optimizer step is done; probe passes come after
        capture = self.probe.recorder.capture
        if self.arm != "learning":
            capture.__exit__(None, None, None)
            if self.arm == "hooks":
                capture.policy = self.policy
            capture.__enter__()
        if state.global_step > 2:  # warm-up steps excluded
            self.times[self.arm][state.global_step] = elapsed


def peak_rss(with_callback: bool, steps: int) -> float:
    """Peak RSS (MiB) of a child process running ``steps`` DPO steps."""
    cmd = [sys.executable, "-m", "benchmarks.overhead", "--child", "with" if with_callback else "without"]
    out = subprocess.run([*cmd, "--steps", str(steps)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def child(with_callback: bool, steps: int) -> None:
    trainer = smollm_trainer(read_jsonl(DATA / "organism_train.jsonl"), tempfile.mkdtemp(), max_steps=steps)
    if with_callback:
        trainer.add_callback(ProbeCallback(trainer, every_n_steps=10**6))
    trainer.train()
    print(peak_rss_mib())


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM); ru_maxrss would carry the parent's peak across fork and exec."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--memory-steps", type=int, default=8)
    parser.add_argument("--child", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child == "with", args.steps)

    times: dict[str, dict[int, float]] = {arm: {} for arm in ARMS}
    for shift in range(len(ARMS)):
        out = Path(tempfile.mkdtemp())
        trainer = smollm_trainer(read_jsonl(DATA / "organism_train.jsonl"), out, max_steps=args.steps)
        probe = ProbeCallback(trainer, every_n_steps=10**6)  # capture only: no checkpoint probe pass
        trainer.add_callback(probe)
        timer = Interleave(probe, shift)
        trainer.add_callback(timer)
        trainer.train()
        for arm in ARMS:
            times[arm].update(timer.times[arm])
    steps = sorted(set.intersection(*(set(t) for t in times.values())))
    store = VectorStore.open(out / "probe_callback" / "vectors")
    medians = {arm: statistics.median(times[arm][s] for s in steps) for arm in ARMS}

    def ratios(arm: str, base: str) -> dict[str, Any]:
        r = [times[arm][s] / times[base][s] for s in steps]
        return {"median": round(statistics.median(r), 4), "quartiles": [round(q, 4) for q in statistics.quantiles(r)]}

    rss_plain, rss_probe = peak_rss(False, args.memory_steps), peak_rss(True, args.memory_steps)
    save(
        "overhead.json",
        {
            "model": "SmolLM2-135M-Instruct",
            "steps": args.steps,
            "batch_size": trainer.args.per_device_train_batch_size,
            "max_length": trainer.args.max_length,
            "median_step_s": {arm: round(m, 4) for arm, m in medians.items()},
            "median_step_ratio": ratios("learning", "plain")["median"],
            "ratios": {
                "default_vs_plain": ratios("learning", "plain"),
                "hooks_without_learning_vs_plain": ratios("hooks", "plain"),
                "learning_record_vs_hooks_without_it": ratios("learning", "hooks"),
            },
            "paired_steps": len(steps),
            "peak_rss_mib_without": round(rss_plain, 1),
            "peak_rss_mib_with": round(rss_probe, 1),
            "peak_rss_delta_mib": round(rss_probe - rss_plain, 1),
            "rows_stored": store.n_rows,
            "bytes_per_row": round(store.bytes_on_disk() / max(store.n_rows, 1), 1),
            "layers": store.layers,
            "dim": store.dim,
            "machine": machine(),
            "self_peak_rss_mib": round(peak_rss_mib(), 1),
        },
    )


if __name__ == "__main__":
    main()
