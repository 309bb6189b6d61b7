"""Unsupervised discovery of emergent behaviours from checkpoint probe activations.

Per watch prompt, a behaviour vector contrasts the current model's answer with the reference
model's answer (both read through the reference model). The paper's plain mean difference is
dominated by DPO's shared drift; weighting the current answer's tokens by how much their
log-probability rose (``weighting="novelty"``) isolates what the model newly wants to say.
Behaviour vectors are clustered with HDBSCAN (:mod:`probe_callback.scoring.clusters`); a cluster is an
emergent behaviour only when it is stronger than the best cluster found in nulls with no joint
structure (each coordinate permuted across prompts, clustered the same way) *and* its members drifted
more than the other prompts.
:class:`EmergentTracker` keeps ids stable across checkpoints.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = [rng.normal(size=(6, 16)) for _ in range(30)]
    >>> cur = [rng.normal(size=(5, 16)) for _ in range(30)]
    >>> nov = [rng.normal(size=5) for _ in range(30)]
    >>> tracker = EmergentTracker(n_null=19)
    >>> [b.significant for b in tracker.update(10, base, cur, nov)]
    []
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import mannwhitneyu

from .clusters import find_clusters
from .unit import EPS, unit_rows

Weighting = Literal["novelty", "mean"]


def behaviour_vectors(
    base_tokens: Sequence[np.ndarray],
    cur_tokens: Sequence[np.ndarray],
    novelty: Sequence[np.ndarray] | None = None,
    weighting: Weighting = "novelty",
) -> np.ndarray:
    """Per-prompt behaviour-change vectors, shape (n, H).

    ``weighting="mean"`` is the paper's ``mean(cur) - mean(base)``. ``"novelty"`` weights each
    current-answer token by ``relu(novelty)`` (its log-prob rise, current minus reference model),
    normalised; a prompt with no rising token falls back to the plain mean.

    Example:
        >>> import numpy as np
        >>> v = behaviour_vectors([np.zeros((2, 3))], [np.eye(3)[:2]], [np.array([0.0, 2.0])])
        >>> v.tolist()
        [[0.0, 1.0, 0.0]]
    """
    if len(base_tokens) != len(cur_tokens) or len(base_tokens) == 0:
        raise ValueError(f"need as many base as current answers (got {len(base_tokens)} and {len(cur_tokens)})")
    if weighting == "novelty" and (novelty is None or len(novelty) != len(cur_tokens)):
        raise ValueError("weighting='novelty' needs one novelty array per current answer")
    out = []
    for i, (base, cur) in enumerate(zip(base_tokens, cur_tokens, strict=True)):
        base, cur = np.asarray(base, dtype=np.float64), np.asarray(cur, dtype=np.float64)
        if len(base) == 0 or len(cur) == 0:
            raise ValueError(f"prompt {i} has an empty answer; behaviour vectors need at least one token")
        w = np.ones(len(cur))
        if novelty is not None and weighting == "novelty":
            rise = np.maximum(np.asarray(novelty[i], dtype=np.float64), 0.0)
            if rise.shape != (len(cur),):
                raise ValueError(f"prompt {i}: novelty has shape {rise.shape}, answer has {len(cur)} tokens")
            if rise.sum() > 0:
                w = rise
        out.append(w @ cur / w.sum() - base.mean(axis=0))
    return np.asarray(out, dtype=np.float32)


def contrast_direction(vectors: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Unit vector: mean of members' unit vectors minus mean of the others' (the specific change).

    Example:
        >>> import numpy as np
        >>> d = contrast_direction(np.array([[0.0, 2.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]))
        >>> [round(float(x), 3) for x in d]
        [-0.707, 0.707]
    """
    u = unit_rows(vectors)
    inside = np.zeros(len(u), dtype=bool)
    inside[members] = True
    d = u[inside].mean(axis=0) - (u[~inside].mean(axis=0) if (~inside).any() else 0.0)
    return (d / (np.linalg.norm(d) + EPS)).astype(np.float32)


def random_set_directions(vectors: np.ndarray, members: Sequence[int], k: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast directions (k, H) of ``k`` random sets of as many *non-members*: behaviours drawn at
    random, the null for a cluster's blame (sets that may include members inherit its own signal).

    Example:
        >>> import numpy as np
        >>> v = np.random.default_rng(0).normal(size=(10, 4))
        >>> random_set_directions(v, [0, 1], 3, np.random.default_rng(1)).shape
        (3, 4)
    """
    others = np.setdiff1d(np.arange(len(vectors)), members)
    size = min(len(members), len(others) - 1)
    return np.stack([contrast_direction(vectors, rng.choice(others, size, replace=False)) for _ in range(k)])


def naming_tokens(
    tokens: Sequence[Sequence[str]],
    novelty: Sequence[np.ndarray],
    members: np.ndarray,
    top: int = 8,
    min_rise: float = 1.0,
) -> list[str]:
    """Tokens whose log-prob rose by ``min_rise`` nats on the most member prompts (net of the others).

    Example:
        >>> import numpy as np
        >>> naming_tokens([["a", "x"], ["b", "x"], ["c", "d"]], [np.array([0, 3.0])] * 3, np.array([0, 1]))
        ['x']
    """
    inside = set(int(i) for i in members)
    rose_in: Counter[str] = Counter()
    rose_out: Counter[str] = Counter()
    for i, (toks, rise) in enumerate(zip(tokens, novelty, strict=True)):
        risen = {t for t, r in zip(toks, np.asarray(rise), strict=True) if r >= min_rise}
        (rose_in if i in inside else rose_out).update(risen)
    n_in, n_out = max(len(inside), 1), max(len(tokens) - len(inside), 1)
    net = {t: c / n_in - rose_out[t] / n_out for t, c in rose_in.items() if c >= min(2, n_in)}
    return [t for t, s in sorted(net.items(), key=lambda kv: (-kv[1], kv[0])) if s > 0][:top]


@dataclass
class PromptDrift:
    """Cheap drift with no generation: per-prompt ``||a_cur - a_ref|| / ||a_ref||`` and a summary.

    ``outliers``: prompts whose drift is > 3.5 robust z-scores (median/MAD) above the others.
    """

    drift: np.ndarray
    median: float
    p90: float
    max: float
    outliers: list[int]

    def summary(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "max": self.max, "outliers": self.outliers}


def prompt_drift(current: np.ndarray, reference: np.ndarray) -> PromptDrift:
    """Relative drift of prompt-token activations (n, H), current model vs reference model.

    Example:
        >>> import numpy as np
        >>> ref = np.ones((3, 4))
        >>> round(prompt_drift(ref * 1.5, ref).median, 6)
        0.5
    """
    cur, ref = np.asarray(current, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if cur.shape != ref.shape or cur.ndim != 2:
        raise ValueError(f"current {cur.shape} and reference {ref.shape} must both be (n, H)")
    d = np.linalg.norm(cur - ref, axis=1) / (np.linalg.norm(ref, axis=1) + EPS)
    med = float(np.median(d))
    mad = float(np.median(np.abs(d - med))) * 1.4826 + EPS
    return PromptDrift(
        drift=d,
        median=med,
        p90=float(np.quantile(d, 0.9)),
        max=float(d.max()),
        outliers=np.flatnonzero((d - med) / mad > 3.5).tolist(),
    )


@dataclass
class EmergentBehaviour:
    """One tracked cluster of watch prompts at the latest checkpoint it was seen.

    ``direction`` (unit, hidden size) is the contrast members minus non-members, ready for
    attribution. ``drift`` is the members' median behaviour-vector norm over all prompts' median
    (1 = the run's own noise level); ``p_drift`` a one-sided Mann-Whitney test that members drifted
    more than the others. ``significant``: both p-values below alpha and drift above 1.
    ``first_step``: first checkpoint it was seen at; ``flagged_step``: first one it was significant at.
    """

    id: int
    members: list[int]
    direction: np.ndarray
    p_value: float
    drift: float
    p_drift: float
    first_step: int
    step: int
    tokens: list[str]
    significant: bool
    flagged_step: int | None = None
    drift_history: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["direction"] = self.direction.astype(float).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmergentBehaviour:
        return cls(**{**d, "direction": np.asarray(d["direction"], dtype=np.float32)})


class EmergentTracker:
    """Find emergent behaviours at each checkpoint and keep their ids across checkpoints.

    A new cluster takes the id of the previous behaviour it best matches (direction cosine plus
    member overlap, above ``match_threshold``); otherwise a fresh id. Clusters never significant are
    forgotten once they vanish. State is plain JSON.

    Example:
        >>> t = EmergentTracker()
        >>> EmergentTracker.from_state(t.state()).state() == t.state()
        True
    """

    def __init__(
        self,
        alpha: float = 0.01,
        min_cluster_size: int | None = None,
        weighting: Weighting = "novelty",
        n_null: int = 199,
        match_threshold: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.alpha, self.min_cluster_size, self.weighting = alpha, min_cluster_size, weighting
        self.n_null, self.match_threshold, self.seed = n_null, match_threshold, seed
        self.behaviours: dict[int, EmergentBehaviour] = {}
        self.next_id = 0
        self.vectors = np.zeros((0, 0), dtype=np.float32)  # the last checkpoint's behaviour vectors

    def update(
        self,
        step: int,
        base_tokens: Sequence[np.ndarray],
        cur_tokens: Sequence[np.ndarray],
        novelty: Sequence[np.ndarray],
        tokens: Sequence[Sequence[str]] | None = None,
    ) -> list[EmergentBehaviour]:
        """Cluster this checkpoint's behaviour vectors (kept as ``vectors``); returns the clusters seen
        now (ids tracked)."""
        v = self.vectors = behaviour_vectors(base_tokens, cur_tokens, novelty, self.weighting)
        _, clusters = find_clusters(v, self.min_cluster_size, n_null=self.n_null, seed=self.seed + step)
        norms = np.linalg.norm(v, axis=1)
        seen = []
        for cl in clusters:
            inside = np.zeros(len(v), dtype=bool)
            inside[cl.members] = True
            drift = float(np.median(norms[inside]) / (np.median(norms) + EPS))
            p_drift = float(mannwhitneyu(norms[inside], norms[~inside], alternative="greater").pvalue)
            seen.append(
                EmergentBehaviour(
                    id=-1,
                    members=cl.members.tolist(),
                    direction=contrast_direction(v, cl.members),
                    p_value=cl.p_value,
                    drift=drift,
                    p_drift=p_drift,
                    first_step=step,
                    step=step,
                    tokens=naming_tokens(tokens, novelty, cl.members) if tokens is not None else [],
                    significant=cl.p_value < self.alpha and p_drift < self.alpha and drift > 1.0,
                )
            )
        self._assign_ids(step, seen)
        return seen

    def _assign_ids(self, step: int, seen: list[EmergentBehaviour]) -> None:
        pairs = []
        for i, new in enumerate(seen):
            for old in self.behaviours.values():
                a, b = set(new.members), set(old.members)
                score = float(new.direction @ old.direction) + len(a & b) / len(a | b)
                if score >= self.match_threshold:
                    pairs.append((score, i, old.id))
        taken_new, taken_old = set(), set()
        for _, i, old_id in sorted(pairs, reverse=True):
            if i in taken_new or old_id in taken_old:
                continue
            taken_new.add(i)
            taken_old.add(old_id)
            old = self.behaviours[old_id]
            seen[i].id, seen[i].first_step = old_id, old.first_step
            seen[i].flagged_step, seen[i].drift_history = old.flagged_step, old.drift_history
        for new in seen:
            if new.id < 0:
                new.id, self.next_id = self.next_id, self.next_id + 1
            if new.flagged_step is None and new.significant:
                new.flagged_step = new.step
            new.drift_history = [*new.drift_history, [new.step, new.drift]]
            self.behaviours[new.id] = new
        self.behaviours = {  # forget clusters that vanished without ever being significant
            i: b for i, b in self.behaviours.items() if b.flagged_step is not None or b.step == step
        }

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (settings, next id, every behaviour seen)."""
        return {
            "alpha": self.alpha,
            "min_cluster_size": self.min_cluster_size,
            "weighting": self.weighting,
            "n_null": self.n_null,
            "match_threshold": self.match_threshold,
            "seed": self.seed,
            "next_id": self.next_id,
            "behaviours": [b.to_dict() for b in self.behaviours.values()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EmergentTracker:
        """Rebuild a tracker from :meth:`state` (e.g. after a resume)."""
        settings = {k: v for k, v in state.items() if k not in ("next_id", "behaviours")}
        tracker = cls(**settings)
        tracker.next_id = int(state["next_id"])
        for d in state["behaviours"]:
            b = EmergentBehaviour.from_dict(d)
            tracker.behaviours[b.id] = b
        return tracker
