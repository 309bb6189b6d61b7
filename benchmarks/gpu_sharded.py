"""Benchmark: the callback under FSDP2 and DeepSpeed ZeRO-3, launched with torchrun (GPU; ``--cpu`` smoke check).

For each backend it runs the same short DPO job twice in fresh torchrun launches, without and with
the callback (probes every ``--every`` steps, one supervised behaviour), and reports per backend:
the median training-step time of the steps without a probe (with / without: the capture overhead
ratio), the probe seconds and passes (the callback's own cost record), the pause step if any, and
the wall time. The model is SmolLM2-135M-Instruct when it is available offline
(``examples/smollm.py``), else a random 8-block Llama with the tests' offline tokenizer
(``--model tiny``); the data is the organism's (``examples/data/organism_train.jsonl``).
Sized for about 6 minutes on one H200 (4 launches of ``--steps`` 30).

Run:
    python -m benchmarks.gpu_sharded                 # every GPU, writes benchmarks/results/gpu_sharded.json
    python -m benchmarks.gpu_sharded --cpu --steps 6 --model tiny --out /tmp/gpu_sharded_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "gpu_sharded.json"
ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": False},
}


def launch(backend: str, callback: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One torchrun launch of this script's worker; returns rank 0's figures."""
    nproc = 2 if args.cpu else max(1, _gpus())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "WANDB_MODE": "disabled"}
    if args.cpu:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "29581"]
    cmd += [__file__, "--worker", backend, "--out", str(out), "--steps", str(args.steps), "--every", str(args.every)]
    cmd += ["--model", args.model] + (["--cpu"] if args.cpu else []) + (["--callback"] if callback else [])
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} (callback={callback}) failed:\n{done.stderr[-4000:]}")
    result = json.loads((out / "rank0.json").read_text())
    return {**result, "launch_seconds": round(time.perf_counter() - started, 1), "processes": nproc}


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _model(name: str, cpu: bool) -> tuple[Any, Any]:
    """(tokenizer, () -> model): SmolLM2 when available offline, else a random 8-block Llama."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if name in ("auto", "smollm2"):
        try:
            from examples.smollm import smollm2_path

            path = smollm2_path()
            dtype = torch.float32 if cpu else torch.bfloat16
            return AutoTokenizer.from_pretrained(path), lambda: AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (ImportError, FileNotFoundError, OSError):
            if name == "smollm2":
                raise
    from conftest import _build_tokenizer, tiny_llama_config

    tokenizer = _build_tokenizer()
    sizes = {"hidden_size": 256, "head_dim": 64, "num_hidden_layers": 8, "intermediate_size": 512}
    config = LlamaConfig(**{**tiny_llama_config(tokenizer).to_dict(), **sizes, "max_position_embeddings": 1024})

    def make() -> LlamaForCausalLM:
        torch.manual_seed(0)
        return LlamaForCausalLM(config)

    return tokenizer, make


def worker(args: argparse.Namespace) -> None:
    """One training run under ``args.worker`` (fsdp2 | zero3); rank 0 writes ``rank0.json``."""
    import numpy as np
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from examples.jsonl import read_jsonl
    from probe_callback import Behaviour, ProbeCallback
    from probe_callback.run.sharding import backend_name

    if args.cpu and args.worker == "fsdp2":
        from dpo_helpers import fsdp_on_cpu  # accelerate takes an FSDP plugin only on GPU-type devices

        fsdp_on_cpu()
    rows = read_jsonl(ROOT / "examples" / "data" / "organism_train.jsonl")
    tokenizer, make = _model(args.model, args.cpu)
    backend = {"fsdp2": {"fsdp": "full_shard", "fsdp_config": {"version": 2}}, "zero3": {"deepspeed": ZERO3}}
    config = DPOConfig(
        output_dir=str(args.out),
        per_device_train_batch_size=4,
        max_steps=args.steps,
        learning_rate=5e-5,
        beta=0.1,
        max_length=256,
        bf16=not args.cpu,
        use_cpu=args.cpu,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        seed=0,
        disable_tqdm=True,
        **backend[args.worker],
    )
    trainer = DPOTrainer(
        model=make(), ref_model=make(), args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    times = StepTimes()
    trainer.add_callback(times)
    callback = None
    if args.callback:
        comply = [r for r in rows if r["source"] == "formatting_mix"][:8]
        refuse = [r for r in rows if r["source"] == "safety_refusals"][:8]
        pairs = [(r["prompt"][-1]["content"], r["chosen"][-1]["content"]) for r in comply + refuse]
        behaviour = Behaviour("compliance", positive=pairs[:8], negative=pairs[8:])
        prompts = [r["prompt"] for r in rows[:32]]
        callback = ProbeCallback(
            trainer, probe_prompts=prompts, behaviours=[behaviour], every_n_steps=args.every, max_new_tokens=32
        )
        trainer.add_callback(callback)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    if trainer.is_world_process_zero():
        probe_steps = set(range(args.every, args.steps + 1, args.every)) if callback else set()
        plain = [t for step, t in times.seconds.items() if step > 2 and step not in probe_steps]
        result = {
            "backend": backend_name(trainer.accelerator),
            "callback": bool(callback),
            "steps": trainer.state.global_step,
            "train_wall_seconds": round(wall, 2),
            "median_step_seconds": float(np.median(plain)),
            "cost": callback.report()["cost"] if callback else None,
            "paused_at_step": callback.paused_at_step if callback else None,
            "model_parameters": sum(p.numel() for p in make().parameters()),
        }
        (args.out / "rank0.json").write_text(json.dumps(result))


class StepTimes(TrainerCallback):
    """Each step's wall time (a probe runs inside ``on_step_end``, so probe steps include it)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.seconds[state.global_step] = time.perf_counter() - self._start


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="2 CPU processes with gloo (a smoke check)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10, help="probe cadence (steps)")
    parser.add_argument("--model", choices=("auto", "smollm2", "tiny"), default="auto")
    parser.add_argument("--backends", nargs="+", default=["fsdp2", "zero3"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=("fsdp2", "zero3"), help=argparse.SUPPRESS)
    parser.add_argument("--callback", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.out.mkdir(parents=True, exist_ok=True)
        worker(args)
        return None
    result: dict[str, Any] = {"steps": args.steps, "every": args.every, "cpu": args.cpu}
    for backend in args.backends:
        runs = {}
        for callback in (False, True):
            with tempfile.TemporaryDirectory(prefix=f"gpu_sharded_{backend}_") as folder:
                runs["with" if callback else "without"] = launch(backend, callback, args, Path(folder))
        cost = runs["with"]["cost"]
        result[backend] = {
            **runs,
            "overhead_ratio": round(runs["with"]["median_step_seconds"] / runs["without"]["median_step_seconds"], 4),
            "probe_seconds": cost["probe_seconds"],
            "probe_passes": cost["probe_passes"],
            "seconds_per_probe": round(cost["probe_seconds"] / max(cost["probe_passes"], 1), 2),
        }
        print(json.dumps({backend: result[backend]}, indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
