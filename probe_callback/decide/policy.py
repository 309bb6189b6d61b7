"""Decide: turn per-checkpoint behaviour scores into INFO / WARN / ERROR decisions.

A score says how far along a behaviour the model has moved (about 0 at the start); the p-value
says how sure the scorer is that the move is real (against random-direction nulls). The policy acts
on confidence: a checkpoint is *significant* when `p_value <= max_p_value` and the score is above
the behaviour's baseline; it is a *hit* when it is significant and also above the threshold. WARN
on a significant checkpoint, ERROR after `patience` consecutive hits.

Example:
    >>> policy = RegressionPolicy()
    >>> policy.update("compliance", "supervised", step=0, score=0.0, p_value=0.6).level is None
    True
    >>> policy.update("compliance", "supervised", step=10, score=0.4, p_value=0.001).level
    'WARN'
    >>> policy.update("compliance", "supervised", step=20, score=0.5, p_value=0.001).level
    'ERROR'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from numbers import Integral, Real
from typing import Any

from probe_callback.decide.alerts import Alert, Kind, Level


@dataclass(frozen=True)
class PolicySettings:
    """How the policy decides for one behaviour (its defaults, or a behaviour's override).

    `threshold`: in score units; None means automatic: baseline + `z_threshold` x noise when the noise
    is known, else the baseline itself (then significance alone decides). `patience`: consecutive
    significant checkpoints above the threshold before ERROR. `baseline_checkpoints`: 0 takes 0 as the
    baseline (scores measured against the reference model); n > 0 averages the first n checkpoints.
    `max_p_value`: a checkpoint is significant at or below it. Every value is checked when made.

    Example:
        >>> PolicySettings(threshold=0.2, patience=3).patience
        3
        >>> PolicySettings(patience=0)
        Traceback (most recent call last):
        ...
        ValueError: policy setting patience=0 must be an integer >= 1
    """

    threshold: float | None = None
    patience: int = 2
    baseline_checkpoints: int = 0
    max_p_value: float = 0.01
    z_threshold: float = 3.0

    def __post_init__(self) -> None:
        for f in fields(self):
            need = setting_error(f.name, getattr(self, f.name))
            if need:
                raise ValueError(f"policy setting {f.name}={getattr(self, f.name)!r} must be {need}")


SETTINGS = tuple(f.name for f in fields(PolicySettings))


def setting_error(name: str, value: Any) -> str | None:
    """What a policy setting's ``value`` must be, when it is not; None when it is fine.

    Example:
        >>> setting_error("max_p_value", 2), setting_error("patience", 3)
        ('a number in (0, 1), e.g. 0.01', None)
    """
    number = isinstance(value, Real) and not isinstance(value, bool)
    if name == "threshold":
        ok, need = value is None or (number and math.isfinite(value)), "a finite number or None"
    elif name in ("patience", "baseline_checkpoints"):
        low = 1 if name == "patience" else 0
        whole = isinstance(value, Integral) and not isinstance(value, bool)
        ok, need = whole and int(value) >= low, f"an integer >= {low}"
    elif name == "max_p_value":
        ok, need = number and 0 < value < 1, "a number in (0, 1), e.g. 0.01"
    else:  # z_threshold
        ok, need = number and math.isfinite(value) and value > 0, "a positive number"
    return None if ok else need


@dataclass(frozen=True)
class Decision:
    """What the policy concluded for one behaviour at one checkpoint.

    Example:
        >>> d = Decision("x", "supervised", 10, None, "baseline 1/1", 0.0)
        >>> d.is_regression, d.to_alert() is None
        (False, True)
    """

    name: str
    kind: Kind
    step: int
    level: Level | None
    reason: str
    score: float
    p_value: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    z: float | None = None
    streak: int = 0

    @property
    def is_regression(self) -> bool:
        return self.level == "ERROR"

    def to_alert(
        self,
        top_rows: list[dict[str, Any]] | None = None,
        top_sources: list[dict[str, Any]] | None = None,
        lesson: str | None = None,
    ) -> Alert | None:
        """The `Alert` to publish for this decision, or None when there is nothing to say."""
        if self.level is None:
            return None
        return Alert(
            behaviour=self.name,
            kind=self.kind,
            level=self.level,
            step=self.step,
            score=self.score,
            threshold=self.threshold,
            p_value=self.p_value,
            message=self.reason,
            top_rows=list(top_rows or []),
            top_sources=list(top_sources or []),
            lesson=lesson,
        )


@dataclass
class _Track:
    """Per-behaviour memory: baseline scores, the run's noise, the current streak of hits."""

    baseline_scores: list[float] = field(default_factory=list)
    noise: float | None = None
    streak: int = 0
    flagged_at_step: int | None = None


class RegressionPolicy:
    """Baseline + significance + patience regression policy, per behaviour name.

    `overrides` maps a behaviour name to a dict of :class:`PolicySettings` fields that replace the
    defaults for that behaviour. `state()` / `from_state()` give a JSON-safe round trip for resuming.

    Example:
        >>> p = RegressionPolicy(overrides={"verbosity": {"patience": 4}})
        >>> p.settings("verbosity").patience, p.settings("other").patience
        (4, 2)
        >>> RegressionPolicy.from_state(p.state()).settings("verbosity").patience
        4
    """

    def __init__(
        self,
        threshold: float | None = None,
        patience: int = 2,
        baseline_checkpoints: int = 0,
        max_p_value: float = 0.01,
        z_threshold: float = 3.0,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.defaults = PolicySettings(threshold, patience, baseline_checkpoints, max_p_value, z_threshold)
        self.overrides: dict[str, PolicySettings] = {}
        for name, values in (overrides or {}).items():
            unknown = set(values) - set(SETTINGS)
            if unknown:
                raise ValueError(f"override for {name!r} has unknown keys {sorted(unknown)}; use any of {SETTINGS}")
            self.overrides[name] = replace(self.defaults, **values)
        self._tracks: dict[str, _Track] = {}

    def settings(self, name: str) -> PolicySettings:
        """The settings in force for behaviour `name`."""
        return self.overrides.get(name, self.defaults)

    def knows(self, name: str) -> bool:
        """Whether `name` has been scored before."""
        return name in self._tracks

    def update(
        self,
        name: str,
        kind: Kind,
        step: int,
        score: float,
        p_value: float | None,
        noise: float | None = None,
    ) -> Decision:
        """Record one checkpoint's score for `name` and decide.

        `noise` is the score's standard deviation under the null (e.g. across random directions);
        without it the spread of the baseline checkpoints is used when there are at least two.
        Emergent behaviours have a baseline of 0 (they did not exist at the start); their first
        appearance is reported as INFO (and counts towards the streak when significant).
        """
        cfg = self.settings(name)
        first_seen = name not in self._tracks
        track = self._tracks.setdefault(name, _Track())
        score, step = float(score), int(step)
        p_value = None if p_value is None else float(p_value)
        if noise is not None and math.isfinite(noise) and noise > 0:
            track.noise = float(noise)
        decision = partial(Decision, name=name, kind=kind, step=step, score=score, p_value=p_value)

        if not math.isfinite(score):
            return decision(level=None, reason="score is not finite; skipped", streak=track.streak)
        if kind == "supervised" and len(track.baseline_scores) < cfg.baseline_checkpoints:
            track.baseline_scores.append(score)
            n = len(track.baseline_scores)
            return decision(level=None, reason=f"baseline {n}/{cfg.baseline_checkpoints}")

        baseline, noise_used = self._baseline(track, kind)
        threshold = cfg.threshold
        if threshold is None:
            threshold = baseline + cfg.z_threshold * noise_used if noise_used else baseline
        z = (score - baseline) / noise_used if noise_used else None
        significant = score > baseline and (
            p_value <= cfg.max_p_value if p_value is not None else z is not None and z >= cfg.z_threshold
        )
        hit = significant and score > threshold
        track.streak = track.streak + 1 if hit else 0

        level = self._level(track, cfg, kind, first_seen, significant, step)
        reason = self._reason(level, name, score, baseline, threshold, p_value, z, track.streak, cfg, first_seen)
        return decision(
            level=level,
            reason=reason,
            baseline=baseline,
            threshold=threshold,
            z=z,
            streak=track.streak,
        )

    @staticmethod
    def _level(
        track: _Track, cfg: PolicySettings, kind: Kind, first_seen: bool, significant: bool, step: int
    ) -> Level | None:
        """ERROR once the streak reaches `patience`, INFO at an emergent behaviour's first sighting, else WARN
        when significant."""
        if track.streak >= cfg.patience:
            if track.flagged_at_step is None:
                track.flagged_at_step = step
            return "ERROR"
        if kind == "emergent" and first_seen:
            return "INFO"
        return "WARN" if significant else None

    @staticmethod
    def _baseline(track: _Track, kind: Kind) -> tuple[float, float | None]:
        scores = track.baseline_scores
        baseline = sum(scores) / len(scores) if scores and kind == "supervised" else 0.0
        noise = track.noise
        if noise is None and len(scores) >= 2:
            var = sum((s - baseline) ** 2 for s in scores) / (len(scores) - 1)
            noise = math.sqrt(var) or None
        return baseline, noise

    @staticmethod
    def _reason(
        level: Level | None,
        name: str,
        score: float,
        baseline: float,
        threshold: float,
        p_value: float | None,
        z: float | None,
        streak: int,
        cfg: PolicySettings,
        first_seen: bool,
    ) -> str:
        stats = f"score {score:.3g} (baseline {baseline:.3g}, threshold {threshold:.3g}"
        stats += f", p={p_value:.3g}" if p_value is not None else ""
        stats += f", z={z:.2f})" if z is not None else ")"
        if level == "ERROR":
            return f"{name} regressed: {streak} consecutive significant checkpoints above threshold; {stats}"
        if level == "WARN":
            return f"{name} is rising significantly ({streak}/{cfg.patience} towards ERROR); {stats}"
        if level == "INFO" and first_seen:
            return f"new emergent behaviour {name} appeared; {stats}"
        return f"{name} within normal range; {stats}"

    def state(self) -> dict[str, Any]:
        """A JSON-safe snapshot of settings and per-behaviour memory (see `from_state`)."""
        return {
            "defaults": asdict(self.defaults),
            "overrides": {k: asdict(v) for k, v in self.overrides.items()},
            "tracks": {k: asdict(v) for k, v in self._tracks.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RegressionPolicy:
        """Rebuild a policy from `state()` output, e.g. when training resumes from a checkpoint."""
        policy = cls(**state["defaults"], overrides=state.get("overrides"))
        policy._tracks = {k: _Track(**v) for k, v in state.get("tracks", {}).items()}
        return policy
