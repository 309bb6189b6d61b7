"""Blame: the training steps (batches) and data sources a behaviour's row scores point at, each with a confidence.

Steps and sources are tested by their share of the global top rows (hypergeometric). Data sources
are tight bundles, so a source's blame is also tested against the directions of random behaviours
(:class:`SourceBlame`). The row scores come from :mod:`probe_callback.scoring.attribution`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import hypergeom

from .attribution import RowRanking, top_rows, unit_queries


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
        >>> from probe_callback.scoring.attribution import rank_rows
        >>> from probe_callback.store.vectors import VectorStore
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
        q = unit_queries(self.project(np.atleast_2d(directions).astype(np.float32)))
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
