"""Capture -> store: what each training batch leaves in the vector store.

:class:`Recorder` owns the hooks on the reference forward (:class:`~probe_callback.capture.datapoints.DatapointCapture`)
and the store they write to: each new row's datapoint vector, and every row's batch membership and
learning record at every step. It also makes the datapoint pass over rows with no vector yet (at
train begin with precomputed reference log-probs, and at a pause).

Example:
    >>> recorder = Recorder(rows, store, faults, clock=lambda: trainer.state.global_step)  # doctest: +SKIP
    >>> recorder.start(ref_model, blocks, policy, reference_per_step=True)                # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.datapoints import CapturedBatch, DatapointCapture
from ..capture.rows import RowIndex, RowSet
from ..scoring.probing import inference_mode
from ..store.vectors import VectorStore
from .fence import Faults, GuardedStore
from .sharding import RankMirror, from_rank0, on_every_rank

logger = logging.getLogger("probe_callback")


class Recorder:
    """Writes what the hooks capture into ``store`` (rows recognised by ``rows``); ``clock``: the current
    training step. Failures are recorded in ``faults`` and never reach the trainer's forward."""

    def __init__(self, rows: RowIndex, store: GuardedStore, faults: Faults, clock: Callable[[], int]) -> None:
        self.rows, self.store, self.faults, self.clock = rows, store, faults, clock
        self.stored = RowSet(store.row_ids())  # rows with a datapoint vector
        self.capture: DatapointCapture | None = None
        self.unmatched = 0  # batch rows that matched no dataset row
        self._passing = False  # in a datapoint pass: no batch membership
        self._mirror: RankMirror | None = None

    def start(
        self,
        ref_model: torch.nn.Module,
        blocks: list[torch.nn.Module],
        policy: torch.nn.Module,
        reference_per_step: bool,
        mirror: RankMirror,
    ) -> None:
        """Put the hooks on (removed by :meth:`close`)."""
        self._mirror = mirror
        self.capture = DatapointCapture(
            ref_model, blocks, self._on_batch, policy=policy, reference_per_step=reference_per_step
        ).__enter__()

    def active(self, flag: bool) -> None:
        """Capture during training steps only (not during probes)."""
        if self.capture is not None:
            self.capture.active = flag

    def sync(self) -> None:
        """Bring other nodes' store files to rank 0 (a collective; see :class:`RankMirror`)."""
        if self._mirror is not None:
            self._mirror.sync()

    def close(self) -> None:
        """Remove the hooks and close the store (once; later calls do nothing)."""
        if self.capture is None:
            return
        self.capture.__exit__(None, None, None)
        self.capture = None
        self.store.close()
        if self.unmatched:
            logger.warning("probe_callback: %d batch rows matched no dataset row and were skipped.", self.unmatched)

    def _on_batch(self, batch: CapturedBatch) -> None:
        with self.faults.guard("vectors", self.clock()):  # runs inside the trainer's forward: never raise
            self._record(batch)

    def _record(self, batch: CapturedBatch) -> None:
        rows = self.rows.lookup(batch.input_ids, batch.attention_mask)
        known = rows >= 0
        self.unmatched += int((~known).sum())
        if not self._passing:
            record = batch.learning.numpy() if batch.learning is not None else {"rise": np.zeros(len(rows), np.float32)}
            record = {k: v[known] for k, v in record.items()}
            step = np.full(known.sum(), self.clock())
            self.store.append_memberships(rows[known], step, record.pop("rise"), record)
        if batch.pooled is None:
            return
        half = len(rows)
        diff = (batch.pooled[:half] - batch.pooled[half:]).numpy()
        fresh = np.array([r >= 0 and int(r) not in self.stored for r in rows])
        if fresh.any():
            self.store.append_vectors(rows[fresh], diff[fresh])
            self.stored.update(int(r) for r in rows[fresh])

    def datapoint_pass(
        self, trainer: Any, reference: Callable[[], AbstractContextManager[torch.nn.Module]], is_main: bool
    ) -> None:
        """A reference pass over the training rows that have no stored vector yet.

        Made at train begin when DPO precomputes its reference log-probs (no reference forward per
        step), and at a pause, so the report ranks every row, not only those trained on so far.
        Ranks split the batches of the rows rank 0 sees no vector for; every rank makes as many
        forwards (a rank out of batches repeats one, not captured), as a sharded model needs.
        """
        accelerator, capture = trainer.accelerator, self.capture
        if not on_every_rank(accelerator, self.store.path is not None):
            return  # every rank skips together (a collective follows)
        assert capture is not None, "start() puts the hooks on first"
        args = trainer.args
        ds = trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
        self.store.flush()
        accelerator.wait_for_everyone()
        stored = RowSet(VectorStore.open(Path(self.store.path)).row_ids()) if is_main else RowSet()
        todo = from_rank0(accelerator, np.flatnonzero(~stored.contains(self.rows.order)).tolist() if is_main else None)
        bs, world = args.per_device_train_batch_size, args.world_size
        batches = [todo[start : start + bs] for start in range(0, len(todo), bs)]
        mine = batches[args.process_index :: world]
        per_step, capture.reference_per_step, self._passing = capture.reference_per_step, True, True
        try:
            with reference() as ref, inference_mode(ref):
                device = next(ref.parameters()).device
                for k in range(-(-len(batches) // world)):
                    capture.active = k < len(mine)
                    batch = trainer.data_collator([ds[i] for i in (mine[k] if capture.active else batches[0])])
                    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
                    ref(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                        labels=labels.to(device),
                        use_cache=False,
                    )
        finally:
            capture.reference_per_step, self._passing = per_step, False
            capture.active = False
        self.store.flush()
        accelerator.wait_for_everyone()
        self.sync()
        self.stored = RowSet(self.store.row_ids())
