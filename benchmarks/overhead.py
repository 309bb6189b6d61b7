"""Capture overhead of ProbeCallback on SmolLM2-135M-Instruct DPO (CPU).

Step time: two runs of the same seeded training (same batches, same model trajectory, since the
hooks change nothing), the capture hooks installed on even steps in one and on odd steps in the
other, so every step is timed once with and once without them; the median of the per-step ratios.
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

from transformers import TrainerCallback

from benchmarks.common import DATA, ROOT, machine, read_jsonl, save, smollm_trainer
from probe_callback import ProbeCallback
from probe_callback.store import VectorStore


class Interleave(TrainerCallback):
    """Removes the probe's hooks on odd steps (a plain DPO step) and times every step."""

    def __init__(self, probe: ProbeCallback, parity: int) -> None:
        self.probe, self.parity, self.times = probe, parity, {True: {}, False: {}}

    def on_step_begin(self, args, state, control, **kw):
        self.capture = (state.global_step + 1) % 2 == self.parity
        if not self.capture:
            self.probe._capture.__exit__(None, None, None)
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        elapsed = time.perf_counter() - self.started  # the optimizer step is done; probe passes come after
        if not self.capture:
            self.probe._capture.__enter__()
        if state.global_step > 2:  # warm-up steps excluded
            self.times[self.capture][state.global_step] = elapsed


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

    with_hooks, without_hooks = {}, {}
    for parity in (0, 1):
        out = Path(tempfile.mkdtemp())
        trainer = smollm_trainer(read_jsonl(DATA / "organism_train.jsonl"), out, max_steps=args.steps)
        probe = ProbeCallback(trainer, every_n_steps=10**6)  # capture only: no checkpoint probe pass
        trainer.add_callback(probe)
        timer = Interleave(probe, parity)
        trainer.add_callback(timer)
        trainer.train()
        with_hooks.update(timer.times[True])
        without_hooks.update(timer.times[False])
    steps = sorted(set(with_hooks) & set(without_hooks))
    ratios = [with_hooks[s] / without_hooks[s] for s in steps]
    store = VectorStore.open(out / "probe_callback" / "vectors")
    with_cb = statistics.median(with_hooks[s] for s in steps)
    without = statistics.median(without_hooks[s] for s in steps)
    rss_plain, rss_probe = peak_rss(False, args.memory_steps), peak_rss(True, args.memory_steps)
    save(
        "overhead.json",
        {
            "model": "SmolLM2-135M-Instruct",
            "steps": args.steps,
            "batch_size": trainer.args.per_device_train_batch_size,
            "max_length": trainer.args.max_length,
            "median_step_s_with": round(with_cb, 4),
            "median_step_s_without": round(without, 4),
            "median_step_ratio": round(statistics.median(ratios), 4),
            "paired_steps": len(steps),
            "ratio_quartiles": [round(q, 4) for q in statistics.quantiles(ratios, n=4)],
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
