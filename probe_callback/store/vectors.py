"""Append-only, crash-safe on-disk store of per-row datapoint vectors and per-step batch membership.

Layout under the store folder::

    meta.json                   layers, hidden size, stored dim, projection seed (written once)
    rank-00000/vectors.f16      float16 records, one per row: (n_layers, dim) chosen-minus-rejected
    rank-00000/rows.i64         int64 row index of each vector record (written after its vector)
    rank-00000/steps.bin        learning records, one per row per step it was trained in (``STEP_RECORD``:
                                row, step, the chosen answer's largest log-prob rise, the rejected
                                answer's largest fall, the 3 peak token ids and their rises)

Every file only grows. A reader counts complete records only, so a process killed at any point
(``kill -9``) leaves everything written before the last ``flush()`` readable. Each rank writes its
own folder; :meth:`VectorStore.open` reads them all as one store.

Example:
    >>> import numpy as np, tempfile
    >>> d = tempfile.mkdtemp()
    >>> w = VectorStore.create(d, layers=[3], hidden=8)
    >>> w.append_vectors(np.array([0, 1]), np.ones((2, 1, 8), dtype=np.float32))
    >>> w.append_memberships(np.array([0, 1]), np.array([1, 1]), np.zeros(2, dtype=np.float32))
    >>> w.close()
    >>> VectorStore.open(d).n_rows
    2
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .files import atomic_write_text

STEP_RECORD = np.dtype(
    [
        ("row", "<i8"),
        ("step", "<i8"),
        ("rise", "<f4"),
        ("fall", "<f4"),
        ("peak_ids", "<i4", (3,)),
        ("peak_rises", "<f2", (3,)),
        ("pad", "<i2", (3,)),
    ]
)  # 48 bytes
STORE_VERSION = 2
AUTO_PROJECTION_ABOVE = 1024
AUTO_PROJECTION_DIM = 768


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds: the layers (HF ``hidden_states`` indices), the model's hidden size,
    the stored dimension and the projection seed (``None`` when vectors are stored unprojected)."""

    layers: list[int]
    hidden: int
    dim: int
    projection_seed: int | None
    version: int = STORE_VERSION

    @property
    def record_bytes(self) -> int:
        return len(self.layers) * self.dim * 2


def resolve_projection_dim(hidden: int, projection_dim: int | None | str) -> int | None:
    """``"auto"`` projects only hidden sizes above 1024 (to 768), keeping a row under 2 KiB a layer."""
    if projection_dim == "auto":
        return AUTO_PROJECTION_DIM if hidden > AUTO_PROJECTION_ABOVE else None
    if projection_dim is not None and not 0 < int(projection_dim) <= hidden:
        raise ValueError(
            f"projection_dim={projection_dim} must be between 1 and the hidden size {hidden}; "
            "pass None to store full vectors or 'auto'."
        )
    return None if projection_dim is None else int(projection_dim)


def projection_matrix(hidden: int, dim: int, seed: int) -> np.ndarray:
    """The fixed seeded Gaussian projection (hidden -> dim), scaled to preserve norms on average."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((hidden, dim)) / np.sqrt(dim)).astype(np.float32)


class VectorStore:
    """Read and write access to a store folder. Use :meth:`create` to write, :meth:`open` to read."""

    def __init__(self, path: str | Path, meta: StoreMeta, rank: int | None = None) -> None:
        self.path = Path(path)
        self.meta = meta
        self.rank = rank
        self._proj = (
            projection_matrix(meta.hidden, meta.dim, meta.projection_seed) if meta.projection_seed is not None else None
        )
        self._files: dict[str, BinaryIO] = {}
        if rank is not None:
            folder = self.path / f"rank-{rank:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            self._repair(folder)
            self._files = {
                name: open(folder / name, "ab")  # noqa: SIM115 (kept open for appends; closed in close())
                for name in ("vectors.f16", "rows.i64", "steps.bin")
            }

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        layers: list[int],
        hidden: int,
        projection_dim: int | None | str = "auto",
        projection_seed: int = 0,
        rank: int = 0,
    ) -> VectorStore:
        """Open a store for appending from ``rank``; writes ``meta.json`` if new, checks it if not."""
        path = Path(path)
        dim = resolve_projection_dim(hidden, projection_dim)
        meta = StoreMeta(
            layers=[int(x) for x in layers],
            hidden=int(hidden),
            dim=dim or int(hidden),
            projection_seed=projection_seed if dim else None,
        )
        meta_path = path / "meta.json"
        if meta_path.exists():
            existing = _read_meta(path)
            if existing != meta:
                raise ValueError(
                    f"The vector store at {path} was written with {existing}, not {meta}. "
                    "Use a fresh output_dir or the same layers and projection as before."
                )
        else:
            path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(meta_path, json.dumps(asdict(meta)))
        return cls(path, meta, rank=rank)

    @classmethod
    def open(cls, path: str | Path) -> VectorStore:
        """A read view over every rank's files."""
        return cls(path, _read_meta(Path(path)))

    # ----- writing ------------------------------------------------------------------------------
    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the store's projection on the last axis (identity when there is none)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors if self._proj is None else vectors @ self._proj

    def append_vectors(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Append one (n_layers, hidden) float vector per row; vectors go before their row ids."""
        vectors = self.project(vectors).astype(np.float16)
        expected = (len(self.meta.layers), self.meta.dim)
        if vectors.shape[1:] != expected or len(vectors) != len(rows):
            raise ValueError(f"vectors of shape {vectors.shape} do not fit rows {len(rows)} x {expected}")
        self._write("vectors.f16", vectors.tobytes())
        self._write("rows.i64", np.asarray(rows, dtype="<i8").tobytes())

    def append_memberships(
        self, rows: np.ndarray, steps: np.ndarray, rises: np.ndarray, learning: dict[str, np.ndarray] | None = None
    ) -> None:
        """Record that each row was in the batch of ``steps`` with its log-prob rise there, and optionally
        the rest of its learning record (``fall``, ``peak_ids``, ``peak_rises``; peak ids -1 when absent)."""
        rec = np.zeros(len(rows), dtype=STEP_RECORD)
        rec["row"], rec["step"], rec["rise"] = rows, steps, rises
        rec["peak_ids"] = -1
        for name, values in (learning or {}).items():
            rec[name] = values
        self._write("steps.bin", rec.tobytes())

    def flush(self, fsync: bool = False) -> None:
        """Make everything appended so far survive a killed process (and a power loss with fsync)."""
        for f in self._files.values():
            f.flush()
            if fsync:
                os.fsync(f.fileno())

    def close(self) -> None:
        self.flush(fsync=True)
        for f in self._files.values():
            f.close()
        self._files = {}

    def truncate_steps_after(self, step: int) -> None:
        """Forget memberships of steps after ``step`` in this rank's files (used on resume)."""
        folder = self.path / f"rank-{self.rank:05d}"
        self.flush()
        recs = _map(folder / "steps.bin", STEP_RECORD)
        keep = int(np.searchsorted(np.maximum.accumulate(recs["step"]), step, side="right")) if len(recs) else 0
        self._files["steps.bin"].truncate(keep * STEP_RECORD.itemsize)

    def _write(self, name: str, data: bytes) -> None:
        if not self._files:
            raise RuntimeError("this VectorStore is a read view; use VectorStore.create(...) to append")
        self._files[name].write(data)

    def _repair(self, folder: Path) -> None:
        """Cut partial records left by a crash so new appends stay aligned."""
        n = min(_count(folder / "vectors.f16", self.meta.record_bytes), _count(folder / "rows.i64", 8))
        _truncate(folder / "vectors.f16", n * self.meta.record_bytes)
        _truncate(folder / "rows.i64", n * 8)
        _truncate(folder / "steps.bin", _count(folder / "steps.bin", STEP_RECORD.itemsize) * STEP_RECORD.itemsize)

    # ----- reading ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return self.meta.layers

    @property
    def dim(self) -> int:
        return self.meta.dim

    def _rank_folders(self) -> list[Path]:
        return sorted(p for p in self.path.glob("rank-*") if p.is_dir())

    def _rank_vectors(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        n = min(_count(folder / "vectors.f16", self.meta.record_bytes), _count(folder / "rows.i64", 8))
        shape = (len(self.meta.layers), self.meta.dim)
        vecs = _map(folder / "vectors.f16", np.dtype((np.float16, shape)), n)
        return _map(folder / "rows.i64", np.dtype("<i8"), n), vecs

    def row_ids(self) -> np.ndarray:
        """Every distinct row with a stored vector."""
        parts = [self._rank_vectors(f)[0] for f in self._rank_folders()]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    @property
    def n_rows(self) -> int:
        return len(self.row_ids())

    def iter_vectors(self, layer_pos: int = 0, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows, vectors)`` chunks of one layer, each row once, read a chunk at a time
        (memory: one chunk, plus with several ranks a one-byte flag per row index to drop rows
        another rank stored too)."""
        folders = self._rank_folders()
        seen = np.zeros(0, dtype=bool)
        shape = (len(self.meta.layers), self.meta.dim)
        record = np.dtype((np.float16, shape))
        for folder in folders:
            rows, _ = self._rank_vectors(folder)
            with open(folder / "vectors.f16", "rb") as f:
                for start in range(0, len(rows), chunk):
                    r = np.asarray(rows[start : start + chunk])
                    v = np.fromfile(f, dtype=record, count=len(r))[:, layer_pos]
                    if len(folders) > 1 and len(r):
                        if r.max() >= len(seen):
                            seen = np.concatenate([seen, np.zeros(int(r.max()) + 1 - len(seen), dtype=bool)])
                        fresh = ~seen[r]
                        seen[r] = True
                        r, v = r[fresh], v[fresh]
                    if len(r):
                        yield r, v

    def vectors_for(self, rows: np.ndarray, layer_pos: int = 0) -> np.ndarray:
        """Vectors (float32) of the given rows in that order, read from where they lie (no pass over the
        store); a row stored twice gives its first vector; rows with no vector raise KeyError."""
        want = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(want), self.meta.dim), dtype=np.float32)
        found = np.zeros(len(want), dtype=bool)
        for folder in self._rank_folders():
            ids, vecs = self._rank_vectors(folder)
            if not len(ids) or found.all():
                continue
            order = np.argsort(np.asarray(ids), kind="stable")
            ordered = np.asarray(ids)[order]
            at = np.minimum(np.searchsorted(ordered, want), len(ordered) - 1)
            hit = ~found & (ordered[at] == want)
            out[hit] = vecs[order[at[hit]], layer_pos]
            found |= hit
        if not found.all():
            raise KeyError(f"no stored vector for rows {want[~found][:10].tolist()}")
        return out

    def memberships(self) -> dict[str, np.ndarray]:
        """Every learning record across ranks, by field (``row``, ``step``, ``rise``, ``fall``,
        ``peak_ids`` (n, 3), ``peak_rises`` (n, 3))."""
        parts = [_map(f / "steps.bin", STEP_RECORD) for f in self._rank_folders()]
        recs = np.concatenate(parts) if parts else np.zeros(0, dtype=STEP_RECORD)
        return {name: np.asarray(recs[name]) for name in STEP_RECORD.names or () if name != "pad"}

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for f in self._rank_folders() for p in f.iterdir())


def _read_meta(path: Path) -> StoreMeta:
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a probe_callback vector store (no meta.json)")
    return StoreMeta(**json.loads(meta_path.read_text()))


def _count(path: Path, size: int) -> int:
    return path.stat().st_size // size if path.exists() else 0


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size != size:
        with open(path, "r+b") as f:
            f.truncate(size)


def _map(path: Path, dtype: np.dtype, n: int | None = None) -> np.ndarray:
    n = _count(path, dtype.itemsize) if n is None else n
    if n == 0:
        return np.zeros((0, *dtype.shape), dtype=dtype.base if dtype.shape else dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))
