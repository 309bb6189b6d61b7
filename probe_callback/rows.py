"""Recognise which row of the user's ``train_dataset`` each sequence of a DPO batch came from.

The collator drops every column but the token ids and the sampler shuffles, so rows are matched by
content: the key of a pair is a hash of its truncated ``prompt+chosen`` and ``prompt+rejected`` ids,
exactly as :class:`trl.trainer.dpo_trainer.DataCollatorForPreference` lays them out. Identical
pairs share a key and are handed out round-robin. Rows TRL dropped for truncation are skipped
through the processed dataset's index mapping, so ``row`` indexes the dataset the user passed. With
``precompute_ref_log_probs=True`` TRL flattens that mapping away inside ``DPOTrainer.__init__``, before any
callback exists: importing ``probe_callback`` wraps ``DPOTrainer._precompute_ref_logps`` (see
:func:`remember_kept_rows`) to note the mapping first, so ``row`` still indexes the user's dataset (a trainer
built before ``probe_callback`` was imported gets a warning instead).

Example:
    >>> index = RowIndex([pair_key([1, 2, 3], [1, 2, 4])], np.array([17]), ids=["a"], sources=["web"])
    >>> index.lookup(torch.tensor([[1, 2, 3], [1, 2, 4]]), torch.ones(2, 3))   # [chosen; rejected] ids
    array([17])
    >>> index.describe(17)
    {'row': 17, 'id': 'a', 'source': 'web'}

    In a run: ``RowIndex.from_trainer(trainer)``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.abc
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .text import to_text

logger = logging.getLogger("probe_callback")


# Where the wrapper below notes, on the trainer, the user's row of each position of the train dataset it precomputes.
KEPT_ROWS = "_probe_callback_kept_rows"
_DPO_MODULE = "trl.trainer.dpo_trainer"


def _kept_rows(dataset: Any) -> np.ndarray:
    """The user's row of each position of a dataset ``DPOTrainer`` prepared (its filter's index mapping)."""
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return np.arange(len(dataset), dtype=np.int64)
    return np.asarray(indices.column(0).to_numpy(), dtype=np.int64)


def _wrap_precompute(module: Any) -> None:
    """Wrap ``DPOTrainer._precompute_ref_logps`` so it notes the train rows TRL kept before it flattens them away.

    The wrapper only reads the dataset it is given; whatever happens in it, TRL's own method runs unchanged.
    """
    cls = getattr(module, "DPOTrainer", None)
    original = getattr(cls, "_precompute_ref_logps", None)
    if original is None or getattr(original, "_probe_callback", False):
        return

    @functools.wraps(original)
    def _precompute_ref_logps(self: Any, dataset: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "train":
            with contextlib.suppress(Exception):  # a failure of ours never stops the user's trainer
                setattr(self, KEPT_ROWS, _kept_rows(dataset))
        return original(self, dataset, name, *args, **kwargs)

    _precompute_ref_logps._probe_callback = True  # type: ignore[attr-defined]
    cls._precompute_ref_logps = _precompute_ref_logps


class _WrapOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps TRL's DPO trainer module when it is imported after ``probe_callback``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _DPO_MODULE:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None and spec.loader is not None:
                    self._loader = spec.loader
                    spec.loader = self
                    return spec
        except Exception:  # the import goes on as if we were not here
            return None
        return None

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the module's own loader, as without us
        self._loader.exec_module(module)
        with contextlib.suppress(Exception):
            _wrap_precompute(module)
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)


def remember_kept_rows() -> None:
    """Make ``DPOTrainer`` note which user rows it kept before ``precompute_ref_log_probs`` flattens them.

    TRL drops the rows whose prompt fills ``max_length`` through an index mapping, and with
    ``precompute_ref_log_probs=True`` joins its cached log-probs to the dataset, which flattens that
    mapping inside ``DPOTrainer.__init__``, before a callback can be made. Called on importing
    ``probe_callback``: wraps TRL's method now if TRL is imported, else when it is.
    """
    module = sys.modules.get(_DPO_MODULE)
    if module is not None:
        _wrap_precompute(module)
    elif not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())


def pair_key(chosen: Sequence[int], rejected: Sequence[int]) -> bytes:
    """A short digest of one preference pair's two token sequences."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(chosen, dtype="<i8").tobytes())
    h.update(b"|")
    h.update(np.asarray(rejected, dtype="<i8").tobytes())
    return h.digest()


def truncate(ids: list[int], max_length: int | None, mode: str) -> list[int]:
    if max_length is None:
        return ids
    return ids[:max_length] if mode == "keep_start" else ids[-max_length:]


class RowIndex:
    """Maps batch sequences back to rows of the user's dataset, with their ``id`` and ``source``.

    ``order`` is the row of each position of the tokenized dataset; ``fingerprint`` identifies it.
    """

    def __init__(
        self,
        keys: list[bytes],
        rows: np.ndarray,
        ids: list[Any] | None,
        sources: list[str | None] | None,
        texts: dict[str, list[str]] | None = None,
    ) -> None:
        digest = hashlib.blake2b(digest_size=16)
        for key in keys:
            digest.update(key)
        self.fingerprint = digest.hexdigest()
        self._by_key: dict[bytes, list[int]] = {}
        for key, row in zip(keys, rows):
            self._by_key.setdefault(key, []).append(int(row))
        self._turn: dict[bytes, int] = {}
        self.order = rows
        self.n_rows = int(rows.max()) + 1 if len(rows) else 0
        self._ids = dict(zip(rows.tolist(), ids)) if ids is not None else {}
        self._sources = dict(zip(rows.tolist(), sources)) if sources is not None else {}
        self._texts = {k: dict(zip(rows.tolist(), v)) for k, v in (texts or {}).items()}
        self.duplicates = sum(len(v) - 1 for v in self._by_key.values())

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        max_length: int | None = None,
        truncation_mode: str = "keep_start",
        id_column: str = "id",
        source_column: str = "source",
        rows: np.ndarray | None = None,
    ) -> RowIndex:
        """Index a dataset processed by ``DPOTrainer`` (with ``prompt_ids``/``chosen_ids``/``rejected_ids``).

        ``rows``: the user's row of each position, when the dataset no longer holds that mapping itself.
        """
        missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"The trainer's train_dataset has no {sorted(missing)} columns: it was not tokenized by "
                "DPOTrainer. probe_callback needs the map-style dataset DPOTrainer prepares."
            )
        if rows is None or len(rows) != len(dataset):
            rows = _kept_rows(dataset)
        keys = []
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
            keys.append(
                pair_key(truncate(p + c, max_length, truncation_mode), truncate(p + r, max_length, truncation_mode))
            )
        cols = set(dataset.column_names)
        texts = {k: [to_text(v) for v in dataset[k]] for k in ("prompt", "chosen", "rejected") if k in cols}
        return cls(
            keys,
            rows,
            ids=list(dataset[id_column]) if id_column in cols else None,
            sources=[None if s is None else str(s) for s in dataset[source_column]] if source_column in cols else None,
            texts=texts,
        )

    @classmethod
    def from_trainer(cls, trainer: Any, id_column: str = "id", source_column: str = "source") -> RowIndex:
        collator = trainer.data_collator
        dataset, args = trainer.train_dataset, trainer.args
        kept = getattr(trainer, KEPT_ROWS, None)
        if kept is not None and len(kept) != len(dataset):
            kept = None  # the train dataset was replaced after TRL built it: its own mapping is all there is
        if (
            kept is None
            and getattr(args, "precompute_ref_log_probs", False)
            and getattr(dataset, "_indices", None) is None
            and getattr(args, "max_length", None) is not None
            and getattr(args, "truncation_mode", "keep_start") == "keep_start"
        ):
            logger.warning(
                "probe_callback: with precompute_ref_log_probs=True TRL keeps no record of the rows it drops (those "
                "whose prompt fills max_length=%s tokens), and this trainer was built before probe_callback was "
                "imported (which notes them), so `row` counts the rows TRL kept and is off by the rows dropped "
                "before it, if any. Import probe_callback before building the DPOTrainer, or identify rows by "
                "their %r column.",
                args.max_length,
                id_column,
            )
        return cls.from_dataset(
            trainer.train_dataset,
            max_length=getattr(collator, "max_length", None),
            truncation_mode=getattr(collator, "truncation_mode", "keep_start"),
            id_column=id_column,
            source_column=source_column,
            rows=kept,
        )

    def lookup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        """Row of each pair in a ``[chosen; rejected]`` batch (length B); -1 where unknown."""
        half = input_ids.shape[0] // 2
        ids, mask = input_ids.numpy(), attention_mask.numpy().astype(bool)
        out = np.full(half, -1, dtype=np.int64)
        for i in range(half):
            key = pair_key(ids[i][mask[i]], ids[i + half][mask[i + half]])
            rows = self._by_key.get(key)
            if rows:
                turn = self._turn.get(key, 0)
                out[i] = rows[turn % len(rows)]
                self._turn[key] = turn + 1
        return out

    def id(self, row: int) -> Any:
        return self._ids.get(row)

    def source(self, row: int) -> str | None:
        return self._sources.get(row)

    def text(self, row: int, field: str) -> str:
        return self._texts.get(field, {}).get(row, "")

    def sources_array(self) -> list[str | None]:
        """Source of every row index (``None`` where unknown), for per-source aggregation."""
        return [self._sources.get(i) for i in range(self.n_rows)]

    def describe(self, row: int) -> dict[str, Any]:
        return {"row": row, "id": self.id(row), "source": self.source(row)}
