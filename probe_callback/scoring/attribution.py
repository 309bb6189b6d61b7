"""Attribution: rank training rows, steps (batches) and data sources for a behaviour direction.

Rows are scored by the cosine of the behaviour's direction (or the max over a bank of directions)
with each stored datapoint vector, streamed from the memory-mapped store a chunk at a time. Every
ranking carries a confidence: the row ranking against random rotations of the query, steps and
sources against their share of the global top (hypergeometric), and a source's blame against the
directions of random behaviours (:class:`SourceBlame`).

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import hypergeom, rankdata
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from probe_callback.store.vectors import VectorStore

_EPS = 1e-12
_BLOCK = 4096  # rows converted to float32 at a time (cache-sized)


def _unit_queries(query: np.ndarray) -> np.ndarray:
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
        norms = np.sqrt(np.einsum("ij,ij->i", v, v)) + _EPS
        out[start : start + len(v)] = (v @ unit_queries.T).max(axis=1) / norms
    return out


def score_rows(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``vectors`` (n, d) with ``query`` (d,), or the max over a (k, d) bank.

    Example:
        >>> import numpy as np
        >>> score_rows(np.eye(2), np.array([[1.0, 0.0], [0.0, -1.0]])).tolist()
        [1.0, 0.0]
    """
    return _cosines(np.asarray(vectors), _unit_queries(query))


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
    q = _unit_queries(q)
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
        return np.concatenate(self.rows), v / (np.linalg.norm(v, axis=1, keepdims=True) + _EPS)


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


@dataclass
class StepScore:
    """A training step (batch): mean score of its rows, how many of them are in the global top,
    and the hypergeometric p-value of that count given the top's base rate."""

    step: int
    score: float
    n_rows: int
    n_top: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top_mask(scores: np.ndarray, top_frac: float, min_top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(finite mask, in-global-top mask): the top ``top_frac`` of the scored rows, but at least
    ``min_top`` (at most half) so that a small store can still give a significant count."""
    finite = np.isfinite(scores)
    n = int(finite.sum())
    top = np.zeros(len(scores), dtype=bool)
    top[top_rows(scores, max(1, min(max(round(top_frac * n), min_top), n // 2)))] = True
    return finite, top


def top_steps(
    scores: np.ndarray, memberships: dict[str, np.ndarray], top_frac: float = 0.01, limit: int = 20
) -> list[StepScore]:
    """The steps whose batches scored highest (mean row score), best first.

    Example:
        >>> import numpy as np
        >>> m = {"row": np.array([0, 1, 2, 3]), "step": np.array([1, 1, 2, 2]), "rise": np.zeros(4)}
        >>> [s.step for s in top_steps(np.array([0.1, 0.2, 0.9, 0.8]), m)]
        [2, 1]
    """
    finite, top = _top_mask(scores, top_frac)
    rows = np.asarray(memberships["row"], dtype=np.int64)
    rows_ok = rows < len(scores)
    rows = rows[rows_ok]
    keep = finite[rows]
    rows = rows[keep]
    steps, idx = np.unique(np.asarray(memberships["step"], dtype=np.int64)[rows_ok][keep], return_inverse=True)
    n = np.bincount(idx, minlength=len(steps))
    mean = np.bincount(idx, weights=scores[rows], minlength=len(steps)) / np.maximum(n, 1)
    hits = np.bincount(idx, weights=top[rows], minlength=len(steps)).astype(np.int64)
    order = np.argsort(-mean, kind="stable")[:limit]
    p = hypergeom.sf(hits[order] - 1, int(finite.sum()), int(top.sum()), n[order])
    return [
        StepScore(int(steps[i]), float(mean[i]), int(n[i]), int(hits[i]), float(pi))
        for i, pi in zip(order, p, strict=True)
    ]


@dataclass
class SourceScore:
    """A data source: ``score`` is the share of its rows in the global top (``lift`` = that share
    over the top fraction), ``p_value`` the hypergeometric chance of at least that many by luck."""

    source: str
    score: float
    n_rows: int
    n_top: int
    mean_score: float
    lift: float
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_sources(scores: np.ndarray, sources: Sequence[str | None], top_frac: float = 0.05) -> list[SourceScore]:
    """Per source (indexed by row; None = unknown, skipped): share of its rows in the global top
    (``top_frac`` of the scored rows, at least 10).

    Sorted by p-value, then share: the first entry is the source most worth dropping.

    Example:
        >>> import numpy as np
        >>> s = top_sources(np.arange(40, dtype=np.float32), ["a"] * 30 + ["b"] * 10, top_frac=0.25)
        >>> (s[0].source, s[0].score)
        ('b', 1.0)
    """
    n = min(len(scores), len(sources))
    finite, top = _top_mask(scores, top_frac)
    names: dict[str, int] = {}
    codes = np.fromiter(
        (-1 if s is None else names.setdefault(s, len(names)) for s in sources[:n]), dtype=np.int64, count=n
    )
    ok = (codes >= 0) & finite[:n]
    c, sc, hit = codes[ok], scores[:n][ok], top[:n][ok]
    count = np.bincount(c, minlength=len(names))
    hits = np.bincount(c, weights=hit, minlength=len(names)).astype(np.int64)
    means = np.bincount(c, weights=sc, minlength=len(names)) / np.maximum(count, 1)
    p = hypergeom.sf(hits - 1, int(finite.sum()), int(top.sum()), count)
    base = top.sum() / max(finite.sum(), 1)
    out = [
        SourceScore(
            source=name,
            score=float(hits[i] / count[i]),
            n_rows=int(count[i]),
            n_top=int(hits[i]),
            mean_score=float(means[i]),
            lift=float(hits[i] / count[i] / base),
            p_value=float(p[i]),
        )
        for name, i in names.items()
        if count[i]
    ]
    return sorted(out, key=lambda s: (s.p_value, -s.score))


class SourceBlame:
    """How strongly behaviour directions blame one data source, and how often random behaviours do as much.

    Data sources are tight bundles in activation space, so almost any direction puts some source's
    rows in the top and the hypergeometric p-value of :func:`top_sources` is no confidence against
    random *behaviours*. A direction's strength here is the highest mean cosine of one source's rows
    (sources of 5+ sampled rows; rank-based shares saturate: half of all random directions put a tight
    bundle on top), on the uniform row sample a :class:`RowRanking` kept. :meth:`p_value` compares it
    with null directions: the directions of behaviours drawn at random (the contrasts of random sets
    of watched prompts, the contrasts of random halves of a behaviour's own examples).

    Example:
        >>> import numpy as np, tempfile
        >>> rng = np.random.default_rng(0)
        >>> w = VectorStore.create(tempfile.mkdtemp(), layers=[2], hidden=4)
        >>> w.append_vectors(np.arange(40), rng.normal(size=(40, 1, 4)).astype(np.float32))
        >>> w.close()
        >>> store, direction = VectorStore.open(w.path), np.array([1.0, 0.0, 0.0, 0.0])
        >>> blame = SourceBlame(rank_rows(store, direction, n_null=9), ["a", "b"] * 20, store.project)
        >>> 0 < blame.p_value(direction, lambda k: rng.normal(size=(k, 4))) <= 1
        True
    """

    def __init__(
        self,
        ranking: RowRanking,
        sources: Sequence[str | None],
        project: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        names = {name: code for code, name in enumerate(sorted({s for s in sources if s is not None}))}
        codes = np.array([names.get(sources[r], -1) if r < len(sources) else -1 for r in ranking.sample_rows])
        known = codes >= 0
        self.project = project
        self.unit = ranking.sample[known]
        self.onehot = np.eye(len(names), dtype=np.float32)[codes[known]]  # (rows, sources)
        counts = self.onehot.sum(axis=0)
        self.counts = np.maximum(counts, 1)
        self.eligible = counts >= min(5, counts.max(initial=0))

    def strength(self, directions: np.ndarray) -> np.ndarray:
        """Per direction (k, H) or (H,): the highest mean cosine of one source's rows."""
        q = _unit_queries(self.project(np.atleast_2d(directions).astype(np.float32)))
        means = (self.unit @ q.T).T @ self.onehot / self.counts
        return np.where(self.eligible, means, -np.inf).max(axis=1)

    def p_value(
        self,
        direction: np.ndarray,
        draw_null: Callable[[int], np.ndarray],
        n_null: int = 999,
        block: int = 200,
        stop_after: int = 10,
    ) -> float:
        """Share of null directions (``draw_null(k)`` -> (k, H)) at least as strong as ``direction``.

        Draws ``block`` at a time, up to ``n_null``, and stops once ``stop_after`` have beaten it
        (then it is clearly not significant); 1.0 when no sampled row has a source.
        """
        if not len(self.unit):
            return 1.0
        observed = self.strength(direction)[0]
        beaten = done = 0
        while done < n_null and beaten < stop_after:
            k = min(block, n_null - done)
            beaten += int(np.count_nonzero(self.strength(draw_null(k)) >= observed))
            done += k
        return (1 + beaten) / (1 + done)


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
