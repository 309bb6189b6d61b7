"""Builders shared by the tests that run a real DPOTrainer on a tiny model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

TOPICS = ["cat", "dog", "bird", "fish", "tree", "river", "city", "music", "book", "code"]


def preference_rows(n: int, seed: int = 0, sources: tuple[str, ...] = ("alpha", "beta")) -> list[dict[str, Any]]:
    """n preference rows with ``id`` and ``source`` columns and varied lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        prompt = f"tell me about the {topic} " + " ".join(rng.choices(TOPICS, k=rng.randint(1, 6)))
        rows.append(
            {
                "id": f"row-{i}",
                "source": sources[i % len(sources)],
                "prompt": prompt,
                "chosen": f" the {topic} is " + " ".join(rng.choices(TOPICS, k=rng.randint(2, 8))),
                "rejected": " no " + " ".join(rng.choices(TOPICS, k=rng.randint(1, 5))),
            }
        )
    return rows


def dpo_trainer(
    tokenizer: Any,
    model_factory: Any,
    rows: list[dict[str, Any]] | Dataset,
    out: Path,
    peft_config: Any = None,
    eval_rows: list[dict[str, Any]] | None = None,
    **config: Any,
) -> DPOTrainer:
    """A real DPOTrainer on CPU with a separate reference model (both from ``model_factory``).

    With a ``peft_config`` there is no separate reference: the policy with its adapter disabled is.
    ``eval_rows``: an eval split (the callback samples its watched prompts there by default).
    """
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_steps": 6,
        "learning_rate": 1e-3,
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    settings.update(config)
    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    return DPOTrainer(
        model=model_factory(),
        ref_model=None if peft_config else model_factory(),
        peft_config=peft_config,
        args=DPOConfig(**settings),
        train_dataset=dataset,
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
    )


def fsdp_on_cpu() -> None:
    """accelerate takes an FSDP plugin only on GPU-type devices: let a CPU (gloo) run use it too.

    FSDP1 also needs the device as plain ``cpu``: accelerate passes ``device_id=accelerator.device`` (``cpu:0``
    on CPU ranks) and FSDP1 refuses one that differs from its compute device (``cpu``).
    """
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            if fsdp_plugin.fsdp_version == 1:
                self.device = PartialState._shared_state["device"] = torch.device("cpu")

    AcceleratorState.__init__ = patched
