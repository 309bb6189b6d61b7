"""Shared set-up of the benchmarks: SmolLM2-135M-Instruct (offline), the organism's data, saving figures.

Run the benchmarks from the repository root as modules, e.g. ``python -m benchmarks.ranking``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from examples.jsonl import read_jsonl as read_jsonl  # the benchmarks read the examples' data through here
from examples.smollm import smollm2_path
from probe_callback.scoring.attribution import auroc, rank_rows
from probe_callback.store.vectors import VectorStore

if TYPE_CHECKING:
    from trl import DPOTrainer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def smollm_trainer(rows: list[dict[str, Any]], out: Path, **config: Any) -> DPOTrainer:
    """A DPOTrainer on SmolLM2-135M-Instruct with a separate frozen reference, CPU settings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    folder = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_steps": 40,
        "learning_rate": 1e-5,
        "beta": 0.1,
        "max_length": 128,
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
        "gradient_checkpointing": False,
        "logging_steps": 10,
        "save_strategy": "no",
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(config)
    return DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        args=DPOConfig(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def save(name: str | Path, result: dict[str, Any], echo: bool = True) -> Path:
    """Write ``result`` as JSON to ``name`` under ``benchmarks/results/`` (a ``Path`` is taken as it is);
    with ``echo``, print it and where it went."""
    path = name if isinstance(name, Path) else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if echo:
        print(json.dumps(result, indent=2))
        print(f"saved {path}")
    return path


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of planted rows among the ``k`` best finite scores."""
    finite = np.flatnonzero(np.isfinite(scores))
    top = finite[np.argsort(-scores[finite], kind="stable")[:k]]
    return float(labels[top].mean())


def quality(scores: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float | None]:
    """AUROC (None unless the scored rows hold both classes) and precision@k against the planted rows."""
    scored = labels[np.isfinite(scores)]
    area = auroc(scores, labels) if 0 < scored.sum() < len(scored) else None
    return {"auroc": area, "precision_at_k": precision_at_k(scores, labels, k)}


def row_scores(store: VectorStore, direction: np.ndarray, n_rows: int) -> np.ndarray:
    """Cosine of every row (NaN where none is stored) with ``direction``."""
    cosine = rank_rows(store, direction, top_k=1).cosine
    out = np.full(n_rows, np.nan)
    out[: len(cosine)] = cosine
    return out
