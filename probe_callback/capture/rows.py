"""Recognise which row of the user's ``train_dataset`` each sequence of a DPO batch came from.

The collator drops every column but the token ids and the sampler shuffles, so rows are matched by
content: the key of a pair is a hash of its truncated ``prompt+chosen`` and ``prompt+rejected`` ids,
exactly as :class:`trl.trainer.dpo_trainer.DataCollatorForPreference` lays them out. Identical
pairs share a key and are handed out round-robin. Rows TRL dropped for truncation are skipped
through the processed dataset's index mapping, so ``row`` indexes the dataset the user passed (with
``precompute_ref_log_probs=True`` too: see :mod:`probe_callback.capture.kept_rows`).

Example:
    >>> index = RowIndex([pair_key([1, 2, 3], [1, 2, 4])], np.array([17]), ids=["a"], sources=["web"])
    >>> index.lookup(torch.tensor([[1, 2, 3], [1, 2, 4]]), torch.ones(2, 3))   # [chosen; rejected] ids
    array([17])
    >>> index.describe(17)
    {'row': 17, 'id': 'a', 'source': 'web'}

    In a run: ``RowIndex.from_trainer(trainer)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .kept_rows import KEPT_ROWS, dataset_rows
from .text import conversational, to_text

logger = logging.getLogger("probe_callback")


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
    """Maps batch sequences back to rows of the user's dataset, with their ``id``, ``source`` and texts.

    ``order`` is the row of each position of the tokenized dataset; ``fingerprint`` identifies it.
    Memory is a few compact arrays, 36 bytes a row (``benchmarks/store_scale.py``: 343 MiB at 10M rows):
    the pair keys sorted for binary search, ``order``, the sources as integer codes into a table of
    names. Texts and ids are not copied: :meth:`text` and :meth:`id` read the row from the trainer's
    dataset (Arrow, memory-mapped when it lives in the datasets cache) when a report needs them.
    Built from lists (``RowIndex(keys, rows, ids, sources, texts)``) it keeps the lists it is given.
    """

    def __init__(
        self,
        keys: Sequence[bytes] | np.ndarray,
        rows: np.ndarray,
        ids: Sequence[Any] | None,
        sources: Sequence[str | None] | np.ndarray | None,
        texts: dict[str, Sequence[str]] | None = None,
        *,
        dataset: Any = None,
        id_column: str | None = None,
        source_table: Sequence[str | None] | None = None,
        answer_end: str | None = None,
    ) -> None:
        """``keys``: one 16-byte :func:`pair_key` per position (or an ``(n, 16)`` uint8 array); ``rows``:
        the row of each position; ``ids``/``sources``/``texts``: per position, kept as given. With
        ``dataset`` (positions as ``rows``), ids (its ``id_column``) and texts are read from it on
        demand instead, and ``sources`` may be integer codes into ``source_table`` (-1: none). ``answer_end``:
        the text TRL appended to each answer (the eos of standard-format data), left out of their texts."""
        raw = keys if isinstance(keys, np.ndarray) else np.frombuffer(b"".join(keys), dtype=np.uint8)
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, 16)
        self.fingerprint = hashlib.blake2b(raw.tobytes(), digest_size=16).hexdigest()
        self.order = np.asarray(rows, dtype=np.int64)
        self.n_rows = int(self.order.max()) + 1 if len(self.order) else 0
        halves = raw.view(">u8")  # (n, 2): sorting them sorts the keys
        by_key = np.lexsort((halves[:, 1], halves[:, 0]))
        self._hi, self._lo = halves[by_key, 0].astype(np.uint64), halves[by_key, 1].astype(np.uint64)  # native order
        self._key_rows = self.order[by_key]
        del halves, by_key
        same = (self._hi[1:] == self._hi[:-1]) & (self._lo[1:] == self._lo[:-1])
        self.duplicates = int(same.sum())
        self._turn: dict[int, int] = {}  # first sorted position of a duplicated key -> pairs handed out
        ascending = len(self.order) < 2 or bool((self.order[1:] > self.order[:-1]).all())
        self._by_row = None if ascending else np.argsort(self.order, kind="stable")
        self._dataset, self._id_column, self._answer_end = dataset, id_column, answer_end
        self._ids = ids
        self._texts = dict(texts or {})
        if sources is None:
            self._source_codes, self._source_table = None, np.array([None], dtype=object)
        elif source_table is not None:
            self._source_codes = np.asarray(sources, dtype=np.int32)
            self._source_table = np.array([*source_table, None], dtype=object)  # code -1 -> None
        else:
            names: dict[str | None, int] = {}
            codes = np.fromiter(
                (-1 if s is None else names.setdefault(s, len(names)) for s in sources),
                dtype=np.int32,
                count=len(sources),
            )
            self._source_codes, self._source_table = codes, np.array([*names, None], dtype=object)
        self._prompt_rows: dict[tuple[str, ...], list[list[int]]] = {}

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        max_length: int | None = None,
        truncation_mode: str = "keep_start",
        id_column: str = "id",
        source_column: str = "source",
        rows: np.ndarray | None = None,
        batch_size: int = 65536,
        answer_end: str | None = None,
    ) -> RowIndex:
        """Index a dataset processed by ``DPOTrainer`` (with ``prompt_ids``/``chosen_ids``/``rejected_ids``).

        Reads it in Arrow batches of ``batch_size`` rows; keeps the keys, the rows and the source codes,
        and a column selection of ``dataset`` (no copy) to read ids and texts from. ``rows``: the user's
        row of each position, when the dataset no longer holds that mapping itself."""
        missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"The trainer's train_dataset has no {sorted(missing)} columns: it was not tokenized by "
                "DPOTrainer. probe_callback needs the map-style dataset DPOTrainer prepares."
            )
        positions = dataset_rows(dataset)  # each position's index into the Arrow table behind the dataset
        if rows is None or len(rows) != len(dataset):
            rows = positions
        cols = set(dataset.column_names)
        has_source = source_column in cols
        wanted = ["prompt_ids", "chosen_ids", "rejected_ids"] + ([source_column] if has_source else [])
        keys = np.empty((len(dataset), 16), dtype=np.uint8)
        codes = np.empty(len(dataset), dtype=np.int32) if has_source else None
        names: dict[str, int] = {}
        start = 0
        for batch in _arrow_batches(dataset, wanted, positions, batch_size):
            n = batch.num_rows
            keys[start : start + n] = _batch_keys(batch, max_length, truncation_mode)
            if codes is not None:
                codes[start : start + n] = [
                    -1 if s is None else names.setdefault(str(s), len(names))
                    for s in batch.column(source_column).to_pylist()
                ]
            start += n
        lazy = [c for c in (id_column, "prompt", "chosen", "rejected") if c in cols]
        return cls(
            keys,
            rows,
            ids=None,
            sources=codes,
            source_table=list(names),
            dataset=dataset.select_columns(lazy) if lazy else None,
            id_column=id_column if id_column in cols else None,
            answer_end=answer_end,
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
            answer_end=None if conversational(dataset) else getattr(trainer.processing_class, "eos_token", None),
        )

    def lookup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        """Row of each pair in a ``[chosen; rejected]`` batch (length B); -1 where unknown."""
        half = input_ids.shape[0] // 2
        ids, mask = input_ids.numpy(), attention_mask.numpy().astype(bool)
        out = np.full(half, -1, dtype=np.int64)
        for i in range(half):
            hi, lo = np.frombuffer(pair_key(ids[i][mask[i]], ids[i + half][mask[i + half]]), dtype=">u8").astype(
                np.uint64
            )
            first, last = np.searchsorted(self._hi, hi, "left"), np.searchsorted(self._hi, hi, "right")
            first += int(np.searchsorted(self._lo[first:last], lo, "left"))
            count = int(np.searchsorted(self._lo[first:last], lo, "right"))
            if count == 0:
                continue
            if count > 1:  # identical pairs: handed out round-robin
                turn = self._turn.get(first, 0)
                self._turn[first] = turn + 1
                first += turn % count
            out[i] = self._key_rows[first]
        return out

    def _position(self, row: int) -> int:
        """Position of ``row`` in the tokenized dataset; -1 when TRL dropped it or it is out of range."""
        if self._by_row is None:
            pos = int(np.searchsorted(self.order, row))
        else:
            at = int(np.searchsorted(self.order, row, sorter=self._by_row))
            pos = int(self._by_row[at]) if at < len(self._by_row) else len(self.order)
        return pos if pos < len(self.order) and int(self.order[pos]) == row else -1

    def _value(self, row: int, column: str | None, given: Sequence[Any] | None) -> Any:
        pos = self._position(row)
        if pos < 0:
            return None
        if given is not None:
            return given[pos]
        if self._dataset is None or column is None or column not in self._dataset.column_names:
            return None
        return self._dataset[pos][column]

    def id(self, row: int) -> Any:
        return self._value(row, self._id_column, self._ids)

    def source(self, row: int) -> str | None:
        pos = self._position(row)
        return None if pos < 0 or self._source_codes is None else self._source_table[self._source_codes[pos]]

    def raw(self, row: int, field: str) -> Any:
        """A row's ``field`` as the dataset holds it (e.g. a prompt's chat messages); None when not at hand."""
        return None if field in self._texts else self._value(row, field, None)

    def text(self, row: int, field: str) -> str:
        if field in self._texts:
            value = self._value(row, None, self._texts[field])
            return "" if value is None else value
        text = to_text(self._value(row, field, None))
        end = self._answer_end if field in ("chosen", "rejected") else None
        return text[: -len(end)] if end and text.endswith(end) else text

    def rows_with_prompts(self, prompts: Sequence[str], batch_size: int = 65536) -> list[list[int]]:
        """The rows whose prompt (as :func:`~probe_callback.capture.text.to_text` writes it) is each of ``prompts``.

        One pass over the prompt column in batches (remembered for the same ``prompts``).
        """
        wanted = tuple(prompts)
        if wanted in self._prompt_rows:
            return self._prompt_rows[wanted]
        found: dict[str, list[int]] = {p: [] for p in wanted}
        batches: Iterable[Sequence[Any]]
        if "prompt" in self._texts:
            batches = [self._texts["prompt"]]
        elif self._dataset is not None and "prompt" in self._dataset.column_names:
            batches = (
                b.column("prompt").to_pylist()
                for b in _arrow_batches(self._dataset, ["prompt"], self.order, batch_size)
            )
        else:
            batches = []
        start = 0
        for batch in batches:
            for pos, value in enumerate(batch, start):
                hit = found.get(to_text(value))
                if hit is not None:
                    hit.append(int(self.order[pos]))
            start += len(batch)
        self._prompt_rows = {wanted: [sorted(found[p]) for p in wanted]}
        return self._prompt_rows[wanted]

    def sources_array(self) -> np.ndarray:
        """Source of every row index (``None`` where unknown), for per-source aggregation: an object array
        of ``n_rows`` references to the few source names (8 bytes a row, built on each call)."""
        out = np.full(self.n_rows, None, dtype=object)
        if self._source_codes is not None:
            out[self.order] = self._source_table[self._source_codes]
        return out

    def describe(self, row: int) -> dict[str, Any]:
        return {"row": row, "id": self.id(row), "source": self.source(row)}


class RowSet:
    """A set of row indices kept as a bitmap (one byte a row up to the largest): what ``set`` does for
    the callback's stored rows, without 60 bytes a row at 10M rows.

    Example:
        >>> seen = RowSet(np.array([3, 5]))
        >>> seen.update([7]); 5 in seen, 4 in seen, len(seen), seen.contains(np.array([3, 4, 99])).tolist()
        (True, False, 3, [True, False, False])
    """

    def __init__(self, rows: Iterable[int] | np.ndarray = ()) -> None:
        self._bits = np.zeros(0, dtype=bool)
        self._count = 0
        self.update(rows)

    def update(self, rows: Iterable[int] | np.ndarray) -> None:
        rows = np.fromiter(rows, dtype=np.int64) if not isinstance(rows, np.ndarray) else rows.astype(np.int64)
        rows = np.unique(rows[rows >= 0])
        if not len(rows):
            return
        top = int(rows[-1]) + 1
        if top > len(self._bits):
            self._bits = np.concatenate([self._bits, np.zeros(max(top, 2 * len(self._bits)) - len(self._bits), bool)])
        self._count += int((~self._bits[rows]).sum())
        self._bits[rows] = True

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Membership of each of ``rows`` (a boolean array)."""
        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= 0) & (rows < len(self._bits))
        out = np.zeros(len(rows), dtype=bool)
        out[inside] = self._bits[rows[inside]]
        return out

    def __contains__(self, row: object) -> bool:
        return isinstance(row, (int, np.integer)) and 0 <= int(row) < len(self._bits) and bool(self._bits[int(row)])

    def __len__(self) -> int:
        return self._count


def _arrow_batches(dataset: Any, columns: list[str], rows: np.ndarray, batch_size: int) -> Iterator[Any]:
    """``columns`` of a ``datasets.Dataset`` as Arrow tables of ``batch_size`` positions, in position order;
    ``rows`` is the index (into ``dataset.data``, the Arrow table behind it) of each position.

    Reads the memory-mapped table directly (slice, then take): the datasets iterator over an index
    mapping leaves its copies in Arrow's memory pool, which grew with the dataset (200 MiB at 300k rows)."""
    table = dataset.data.table.select(columns)
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        low, high = int(part.min()), int(part.max()) + 1
        window = table.slice(low, high - low)
        yield window if high - low == len(part) and (np.diff(part) == 1).all() else window.take(pa.array(part - low))


def _flat(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (from 0) and values (as little-endian int64) of an Arrow list column."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    offsets = np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    values = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype="<i8")
    return offsets - offsets[0], values


def _batch_keys(batch: Any, max_length: int | None, mode: str) -> np.ndarray:
    """:func:`pair_key` of every row of an Arrow batch with ``prompt_ids``/``chosen_ids``/``rejected_ids``."""
    (po, pv), (co, cv), (ro, rv) = (_flat(batch.column(c)) for c in ("prompt_ids", "chosen_ids", "rejected_ids"))
    out = np.empty((batch.num_rows, 16), dtype=np.uint8)
    cut = None if max_length is None else 8 * max_length
    for i in range(batch.num_rows):
        p = pv[po[i] : po[i + 1]].tobytes()
        chosen, rejected = p + cv[co[i] : co[i + 1]].tobytes(), p + rv[ro[i] : ro[i + 1]].tobytes()
        if cut is not None:
            chosen, rejected = (x[:cut] if mode == "keep_start" else x[-cut:] for x in (chosen, rejected))
        h = hashlib.blake2b(digest_size=16)
        h.update(chosen)
        h.update(b"|")
        h.update(rejected)
        out[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return out
