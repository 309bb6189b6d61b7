"""Attribution: rank training rows for a behaviour direction (steps and sources: :mod:`.blame`).

Rows are scored by the cosine of the behaviour's direction (or the max over a bank of directions)
with each stored datapoint vector, streamed from the memory-mapped store a chunk at a time. The
ranking carries a confidence: the query against random rotations of itself on a sample of rows.

Row scores alone are weak evidence: a tight bundle of rows ranks well for many random directions.
Act on a behaviour only when discovery (or a supervised probe) found it significant.

Example:
    >>> import numpy as np
    >>> vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> [round(float(x), 3) for x in score_rows(vecs, np.array([1.0, 0.0]))]
    [1.0, 0.0, 0.707]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from probe_callback.store.vectors import VectorStore

from .unit import EPS, unit_rows

_BLOCK = 4096  # rows converted to float32 at a time (cache-sized)


def unit_queries(query: np.ndarray) -> np.ndarray:
    """``query`` as a (k, H) bank of unit rows; refuses a zero, non-finite or empty one."""
    q = np.atleast_2d(np.asarray(query, dtype=np.float32))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if q.ndim != 2 or len(q) == 0 or not (norms > 0).all() or not np.isfinite(q).all():
        raise ValueError(f"query must be a non-zero finite (H,) vector or (k, H) bank, got shape {q.shape}")
    return q / norms


def _cosines(vectors: np.ndarray, unit_queries: np.ndarray) -> np.ndarray:
    """Max cosine over the bank for every row, converting a cache-sized block at a time.

    torch does the float16 -> float32 conversion (SIMD; about 7x faster than numpy's).
    """
    vectors = np.ascontiguousarray(vectors)
    if vectors.dtype not in (np.float16, np.float32, np.float64):
        vectors = vectors.astype(np.float32)
    out = np.empty(len(vectors), dtype=np.float32)
    with warnings.catch_warnings():  # a read-only map is only ever read
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(vectors)
    buffer = torch.empty((min(_BLOCK, len(vectors)), vectors.shape[1]), dtype=torch.float32)
    for start in range(0, len(vectors), _BLOCK):
        block = buffer[: min(_BLOCK, len(vectors) - start)]
        block.copy_(source[start : start + _BLOCK])
        v = block.numpy()
        norms = np.sqrt(np.einsum("ij,ij->i", v, v)) + EPS
        out[start : start + len(v)] = (v @ unit_queries.T).max(axis=1) / norms
    return out


def score_rows(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``vectors`` (n, d) with ``query`` (d,), or the max over a (k, d) bank.

    Example:
        >>> import numpy as np
        >>> score_rows(np.eye(2), np.array([[1.0, 0.0], [0.0, -1.0]])).tolist()
        [1.0, 0.0]
    """
    return _cosines(np.asarray(vectors), unit_queries(query))


@dataclass
class RowRanking:
    """The result of :func:`rank_rows`.

    ``rows``/``scores``: the top rows, best first, and their cosine. ``cosine``: one value per row
    index (NaN where a row has no vector).
    ``p_value``: how often a random rotation of the query gets a top-1% mean cosine at least as
    high (on a row sample); ``statistic`` that mean for the query. ``sample_rows``/``sample``: that
    uniform sample of stored rows and their unit vectors (store dimension).
    """

    rows: np.ndarray
    scores: np.ndarray
    cosine: np.ndarray
    p_value: float
    statistic: float
    sample_rows: np.ndarray
    sample: np.ndarray

    @property
    def all_scores(self) -> np.ndarray:
        """The score of every row index: its cosine."""
        return self.cosine


def rank_rows(
    store: VectorStore,
    query: np.ndarray,
    layer_pos: int = 0,
    top_k: int = 100,
    chunk: int = 65536,
    n_null: int = 199,
    null_rows: int = 8192,
    seed: int = 0,
) -> RowRanking:
    """Rank every stored row by cosine with ``query`` (hidden-size (H,) or (k, H) bank; max over it).

    Streams the store ``chunk`` rows at a time, so memory is bounded by a chunk plus a few bytes
    per row.

    Example:
        >>> import numpy as np, tempfile
        >>> w = VectorStore.create(tempfile.mkdtemp(), layers=[2], hidden=4)
        >>> w.append_vectors(np.arange(3), np.eye(4, dtype=np.float32)[:3, None, :])
        >>> w.close()
        >>> rank_rows(VectorStore.open(w.path), np.array([0.0, 1.0, 0.0, 0.0]), n_null=9).rows[0]
        np.int64(1)
    """
    q = np.atleast_2d(np.asarray(query, dtype=np.float32))
    if q.shape[-1] == store.meta.hidden:
        q = store.project(q)
    elif q.shape[-1] != store.dim:
        raise ValueError(f"query has size {q.shape[-1]}; the store holds hidden size {store.meta.hidden}")
    q = unit_queries(q)
    rng = np.random.default_rng(seed)
    sample = _RowSample(max(512, null_rows // len(q)), rng)
    parts_rows, parts_cos = [], []
    with threadpool_limits(1):  # small products: BLAS threads only contend with the conversion
        for rows, vecs in store.iter_vectors(layer_pos, chunk):
            parts_rows.append(rows)
            parts_cos.append(_cosines(vecs, q))
            sample.add(rows, vecs)
        if not parts_rows:
            raise ValueError(f"the store at {store.path} holds no vectors yet")
        sample_rows, sample_unit = sample.unit_vectors()
        p_value, statistic = _rotation_p_value(sample_unit, q, n_null, rng)
    rows, cos = np.concatenate(parts_rows), np.concatenate(parts_cos)
    cosine = np.full(int(rows.max()) + 1, np.nan, dtype=np.float32)
    cosine[rows] = cos
    top = top_rows(cosine, top_k)
    return RowRanking(top, cosine[top], cosine, p_value, statistic, sample_rows, sample_unit)


class _RowSample:
    """A uniform sample of streamed rows, about ``size`` to ``2 * size`` of them once enough were seen.

    Each row draws a key in [0, 1) and stays while its key is below the rate, which halves
    whenever the sample overflows; only kept rows are converted.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng, self.rate = size, rng, 1.0
        self.keys: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []

    def add(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        keys = self.rng.random(len(vecs))
        while sum(map(len, self.keys)) + np.count_nonzero(keys < self.rate) > 2 * self.size:
            self.rate /= 2
            kept = [k < self.rate for k in self.keys]
            self.keys = [k[m] for k, m in zip(self.keys, kept, strict=True)]
            self.rows = [r[m] for r, m in zip(self.rows, kept, strict=True)]
            self.vecs = [v[m] for v, m in zip(self.vecs, kept, strict=True)]
        picked = keys < self.rate
        self.keys.append(keys[picked])
        self.rows.append(rows[picked])
        self.vecs.append(np.asarray(vecs[picked], dtype=np.float32))

    def unit_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, unit vectors) of the sample."""
        v = np.concatenate(self.vecs)
        return np.concatenate(self.rows), unit_rows(v)


def _rotation_p_value(
    sample: np.ndarray, q: np.ndarray, n_null: int, rng: np.random.Generator, top_frac: float = 0.01
) -> tuple[float, float]:
    """Top-``top_frac`` mean cosine of the query vs random signed permutations of it on a row sample.

    A signed coordinate permutation is a rotation that keeps a bank's internal geometry.
    """
    k = max(1, round(top_frac * len(sample)))
    d = q.shape[1]
    rotated = [q[:, rng.permutation(d)] * rng.choice(np.array([-1.0, 1.0], dtype=np.float32), d) for _ in range(n_null)]
    banks = np.concatenate([q, *rotated]).T  # (d, (1 + n_null) * bank size): one matrix product
    best = (sample @ banks).reshape(len(sample), 1 + n_null, len(q)).max(axis=2)
    stats = np.partition(best, len(sample) - k, axis=0)[-k:].mean(axis=0)
    return float((1 + np.count_nonzero(stats[1:] >= stats[0])) / (1 + n_null)), float(stats[0])


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest finite scores, best first.

    Example:
        >>> import numpy as np
        >>> top_rows(np.array([0.1, np.nan, 0.9, 0.5]), 2).tolist()
        [2, 3]
    """
    finite = np.flatnonzero(np.isfinite(scores))
    k = min(k, len(finite))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    best = finite[np.argpartition(-scores[finite], k - 1)[:k]]
    return best[np.argsort(-scores[best], kind="stable")].astype(np.int64)


def combine_scores(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted average of percentile ranks (scale-free; NaNs skipped per row, all-NaN stays NaN).

    Example:
        >>> import numpy as np
        >>> combine_scores([np.array([0.1, 0.9, 0.5]), np.array([30.0, 10.0, 20.0])]).tolist()
        [0.6666666865348816, 0.6666666865348816, 0.6666666865348816]
    """
    weight = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = max(len(s) for s in scores)
    total, mass = np.zeros(n), np.zeros(n)
    for s, w in zip(scores, weight, strict=True):
        s = np.asarray(s, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(s))
        total[ok] += w * rankdata(s[ok]) / len(ok)
        mass[ok] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / mass).astype(np.float32)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (bool mask or row indices); NaNs skipped.

    Example:
        >>> import numpy as np
        >>> auroc(np.array([0.1, 0.9, 0.8, np.nan]), np.array([1, 2]))
        1.0
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives)
    label = positives.astype(bool) if positives.dtype == bool else np.isin(np.arange(len(scores)), positives)
    ok = np.isfinite(scores)
    return float(roc_auc_score(label[ok], scores[ok]))
