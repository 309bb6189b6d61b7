"""``ProbeCallback``: the one line a user adds to a TRL ``DPOTrainer`` script.

Example:
    >>> trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds,
    ...                      processing_class=tok)                                   # doctest: +SKIP
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
    >>> trainer.train()                                                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .capture import CapturedBatch, DatapointCapture
from .config import ProbeOptions
from .probing import find_decoder_blocks
from .rows import RowIndex
from .store import VectorStore

logger = logging.getLogger("probe_callback")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class ProbeCallback(TrainerCallback):
    """Probe a DPO run live: capture datapoint vectors, probe checkpoints, alert, pause, attribute.

    ``trainer``: the ``trl.DPOTrainer`` this callback is added to. ``options``: see
    :class:`~probe_callback.config.ProbeOptions` (``probe_prompts``, ``behaviours``,
    ``every_n_steps``, ``pause_on_regression``, ``output_dir``, ``layers``, ...).

    With ``precompute_ref_log_probs=True`` DPO makes no reference forward per step, so the datapoint
    vectors come from one pass over the training rows at train begin (about the cost of TRL's own
    precompute pass); batch membership is still recorded every step.
    """

    def __init__(self, trainer: Any, **options: Any) -> None:
        try:
            self.options = ProbeOptions(**options)
        except TypeError as e:
            raise TypeError(f"{e}. ProbeCallback options are the fields of probe_callback.ProbeOptions.") from e
        self.trainer = trainer
        self._check_trainer(trainer)
        self.ref_model = self._reference_module(trainer)
        self.num_layers = len(find_decoder_blocks(self.ref_model))
        self.options.validate(self.num_layers)
        self.layers = self.options.resolve_layers(self.num_layers)
        self.output_dir = Path(self.options.output_dir or Path(trainer.args.output_dir) / "probe_callback")
        self.precomputed = bool(getattr(trainer.args, "precompute_ref_log_probs", False))
        self.rows: RowIndex | None = None
        self.store: VectorStore | None = None
        self._capture: DatapointCapture | None = None
        self._stored: set[int] = set()
        self._step = 0
        self.unmatched = 0

    # ----- attach-time checks -------------------------------------------------------------------
    @staticmethod
    def _check_trainer(trainer: Any) -> None:
        needed = ("args", "model", "train_dataset", "data_collator", "add_callback")
        if not all(hasattr(trainer, a) for a in needed) or not hasattr(trainer, "ref_model"):
            raise TypeError(
                f"ProbeCallback needs the trl.DPOTrainer it is added to, got {type(trainer).__name__}. "
                "Use: trainer.add_callback(ProbeCallback(trainer, ...))."
            )
        if trainer.train_dataset is None or not hasattr(trainer.train_dataset, "column_names"):
            raise ValueError(
                "ProbeCallback needs a map-style datasets.Dataset as train_dataset (an IterableDataset has no "
                "row indices to attribute to)."
            )

    @staticmethod
    def _reference_module(trainer: Any) -> torch.nn.Module:
        if trainer.ref_model is not None:
            return _unwrap(trainer.ref_model)
        if _is_peft(_unwrap(trainer.model)):
            return _unwrap(trainer.model)
        raise ValueError(
            "The trainer has no reference model. Pass ref_model=... to DPOTrainer (or train a PEFT adapter, "
            "whose disabled-adapter model is the reference)."
        )

    @property
    def is_main(self) -> bool:
        return bool(self.trainer.is_world_process_zero())

    # ----- trainer events -----------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rows = RowIndex.from_trainer(self.trainer, self.options.id_column, self.options.source_column)
        rank = int(getattr(args, "process_index", 0))
        hidden = int(self.ref_model.config.get_text_config().hidden_size)
        self.store = VectorStore.create(
            self.output_dir / "vectors",
            layers=self.layers,
            hidden=hidden,
            projection_dim=self.options.projection_dim,
            projection_seed=self.options.seed,
            rank=rank,
        )
        self.store.truncate_steps_after(state.global_step)
        self._stored = set(self.store.row_ids().tolist())
        policy = _unwrap(self.trainer.model)
        blocks = [find_decoder_blocks(self.ref_model)[layer - 1] for layer in self.layers]
        self._capture = DatapointCapture(
            self.ref_model, blocks, self._on_batch, policy=policy, reference_per_step=not self.precomputed
        ).__enter__()
        if self.precomputed and len(self._stored) < len(self.trainer.train_dataset):
            self._datapoint_pass()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self._step = state.global_step + 1
        if self._capture is not None:
            self._capture.active = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        if self._capture is not None:
            self._capture.active = False
        if self.store is not None:
            self.store.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any):
        self.close()

    def close(self) -> None:
        """Remove the hooks and close the store (also done at train end)."""
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.unmatched:
            logger.warning("probe_callback: %d batch rows matched no dataset row and were skipped.", self.unmatched)

    # ----- capture ------------------------------------------------------------------------------
    def _on_batch(self, batch: CapturedBatch) -> None:
        rows = self.rows.lookup(batch.input_ids, batch.attention_mask)
        known = rows >= 0
        self.unmatched += int((~known).sum())
        half = len(rows)
        rise = batch.rise[:half].numpy() if batch.rise is not None else np.zeros(half, dtype=np.float32)
        if self._step > 0:  # step 0 is the datapoint pass at train begin, not a training batch
            self.store.append_memberships(rows[known], np.full(known.sum(), self._step), rise[known])
        if batch.pooled is None:
            return
        diff = (batch.pooled[:half] - batch.pooled[half:]).numpy()
        fresh = np.array([r >= 0 and int(r) not in self._stored for r in rows])
        if fresh.any():
            self.store.append_vectors(rows[fresh], diff[fresh])
            self._stored.update(int(r) for r in rows[fresh])

    @torch.no_grad()
    def _datapoint_pass(self) -> None:
        """One reference pass over the training rows when DPO precomputes its reference log-probs."""
        trainer, model = self.trainer, self.ref_model
        device = next(model.parameters()).device
        bs = trainer.args.per_device_train_batch_size
        cols = ["prompt_ids", "chosen_ids", "rejected_ids"]
        ds = trainer.train_dataset.select_columns(cols)
        capture, saved = self._capture, (self._capture.reference_per_step, self._step)
        capture.reference_per_step, capture.active, self._step = True, True, 0
        was_training = model.training
        model.eval()
        adapter = model.disable_adapter() if trainer.ref_model is None else contextlib.nullcontext()
        try:
            with adapter:
                for start in range(0, len(ds), bs):
                    batch = trainer.data_collator([ds[i] for i in range(start, min(start + bs, len(ds)))])
                    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
                    model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                        labels=labels.to(device),
                        use_cache=False,
                    )
        finally:
            capture.reference_per_step, self._step = saved
            capture.active = False
            model.train(was_training)
        self.store.flush()
