"""A short organism DPO run with the callback, killed (SIGKILL) at a named write point of ours.

Run as ``python fault_run.py OUT POINT STEP ORGANISM [RESUME]`` from test_faults.py (``ORGANISM``: the
SFT start's weights as safetensors, the ``organism_factory`` fixture's): at the first write to
``POINT`` (``vectors``, ``state``, ``report``, ``alerts``) at or after step ``STEP`` the process kills
itself, as a crash or an OOM kill would. ``POINT=none`` runs to the end. ``RESUME`` is a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from conftest import _build_tokenizer, tiny_llama_config
from dpo_helpers import dpo_trainer
from safetensors.torch import load_file
from tiny_organism import compliance_examples, organism_rows, watch_prompts
from transformers import LlamaForCausalLM

from probe_callback import Behaviour, ProbeCallback, callback
from probe_callback.publish.sinks import JsonlSink
from probe_callback.store.vectors import VectorStore

MAX_STEPS, EVERY = 12, 2
SETTINGS = {"max_steps": MAX_STEPS, "learning_rate": 1e-3, "beta": 0.02, "save_strategy": "steps", "save_steps": 2}


def attach(trainer: Any, **options: Any) -> ProbeCallback:
    positive, negative = compliance_examples()
    defaults = {"probe_prompts": watch_prompts(), "max_new_tokens": 8, "every_n_steps": EVERY}
    cb = ProbeCallback(
        trainer,
        behaviours=[Behaviour("compliance", positive, negative)],
        pause_on_regression=False,
        **{**defaults, **options},
    )
    trainer.add_callback(cb)
    return cb


def kill_at(point: str, step: int) -> list[ProbeCallback]:
    """Make the first write to ``point`` at or after ``step`` kill this process; append the callback to the list."""
    targets = {
        "vectors": (VectorStore, "flush"),
        "state": (callback, "options_record"),  # inside the Trainer's checkpoint save, before trainer_state.json
        "report": (callback, "write_report"),
        "alerts": (JsonlSink, "alert"),
    }
    owner, name = targets[point]
    original, live = getattr(owner, name), []

    def wrapped(*args: Any, **kw: Any) -> Any:
        if live and live[0]._step >= step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kw)

    setattr(owner, name, wrapped)
    return live


def main() -> None:
    torch.set_num_threads(1)
    out, point, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    state, resume = load_file(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None
    tokenizer = _build_tokenizer()
    config = tiny_llama_config(tokenizer)

    def organism() -> LlamaForCausalLM:
        model = LlamaForCausalLM(config)
        model.load_state_dict(state)
        return model.eval()

    trainer = dpo_trainer(tokenizer, organism, organism_rows(), out, **SETTINGS)
    live = kill_at(point, step) if point != "none" else []
    live.append(attach(trainer))
    trainer.train(resume_from_checkpoint=resume)


if __name__ == "__main__":
    main()
