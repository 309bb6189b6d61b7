"""Score and decide at each checkpoint: behaviour scores, emergent clusters, attribution, policy.

:class:`Monitor` turns one :class:`~probe_callback.scoring.watch.Probe` into decisions and alerts, keeps the
score history, and builds the report (``report.json``'s content). It reads the vector store for
attribution but writes nothing; the callback publishes and saves.

Example:
    >>> monitor = Monitor(fitted, EmergentTracker(), RegressionPolicy(), rows, store_dir)  # doctest: +SKIP
    >>> alerts = monitor.checkpoint(probe, watch)                                          # doctest: +SKIP
    >>> monitor.report(paused_at_step=None, checkpoint=None)["behaviours"]                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .capture.rows import RowIndex
from .decide.alerts import Alert
from .decide.blame_rows import Attribution, calibrate_blame
from .decide.emergent import EmergentClusters
from .decide.entries import Decided, Entries
from .decide.light import LightChecks
from .decide.patterns import LearningPatterns
from .decide.policy import RegressionPolicy
from .scoring.behaviours import FittedBehaviour, score_behaviour
from .scoring.discovery import EmergentTracker
from .scoring.learning import Pattern
from .scoring.pattern_names import PatternNames
from .scoring.watch import Probe, TokenReads, Watch

logger = logging.getLogger("probe_callback")
MIN_THRESHOLD = 0.05  # nats/token


def default_threshold(fitted: FittedBehaviour) -> float:
    """Regression threshold of a supervised behaviour's log-likelihood margin when the user gave none:
    a tenth of the gap M0 keeps between its negative and positive examples (nats/token), at least 0.05.

    Generic drift moves likelihoods a little everywhere (confident answers lose some of theirs); a
    regression closes a real part of the gap between what M0 says and what the behaviour says.
    """
    if fitted.behaviour.threshold is not None:
        return float(fitted.behaviour.threshold)
    gap = float(fitted.ref_logp_negative.mean() - fitted.ref_logp_positive.mean())
    return max(MIN_THRESHOLD, 0.1 * gap)


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


class Monitor:
    """The score -> decide stage for supervised and emergent behaviours.

    It scores the supervised behaviours itself and delegates the learning record's patterns to
    :class:`~probe_callback.decide.patterns.LearningPatterns`, the emergent clusters to
    :class:`~probe_callback.decide.emergent.EmergentClusters` and attribution to
    :class:`~probe_callback.decide.blame_rows.Attribution`; all of them write the same report entries.
    """

    def __init__(
        self,
        fitted: list[FittedBehaviour],
        tracker: EmergentTracker,
        policy: RegressionPolicy,
        rows: RowIndex,
        store_dir: Path,
        layers: list[int],
        top_k: int = 50,
        seed: int = 0,
    ) -> None:
        self.fitted, self.layers, self.seed = fitted, layers, seed
        self.book = Entries(policy)
        self.blame = Attribution(rows, store_dir, top_k, seed)
        self.learner = LearningPatterns(self.book, self.blame, rows, store_dir, top_k, seed)
        self.clusters = EmergentClusters(self.book, self.blame, self.learner, tracker, seed)
        self.light = LightChecks(self.learner, seed)
        self.last_step = 0
        self.failures: list[dict[str, Any]] = []  # stages that failed, for the report

    # ----- shared state, read by the callback, the metrics, tests and benchmarks ----------------
    @property
    def behaviours(self) -> dict[str, dict[str, Any]]:
        """The report's entries by behaviour name."""
        return self.book.behaviours

    @property
    def policy(self) -> RegressionPolicy:
        return self.book.policy

    @policy.setter
    def policy(self, policy: RegressionPolicy) -> None:
        self.book.policy = policy

    @property
    def tracker(self) -> EmergentTracker:
        return self.clusters.tracker

    @property
    def drift_map(self) -> dict[str, Any] | None:
        return self.clusters.drift_map

    @property
    def prompt_drift_history(self) -> list[dict[str, Any]]:
        return self.clusters.prompt_drift_history

    @property
    def patterns(self) -> list[Pattern]:
        """The learning record's patterns at the last check."""
        return self.learner.patterns

    @property
    def pattern_scores(self) -> dict[str, np.ndarray]:
        """Each reported pattern's score of every row."""
        return self.learner.scores

    # What benchmarks/learning.py records of each light check.
    @property
    def _light(self) -> tuple[int, list[Pattern], dict[str, np.ndarray]] | None:
        return self.light.pending

    @property
    def _outside(self) -> Callable[[Watch, np.ndarray, dict[str, np.ndarray]], Callable[[Pattern], np.ndarray]]:
        return self.learner.outside

    @property
    def _foreign(self) -> Callable[[list[int], dict[str, np.ndarray], Watch], np.ndarray]:
        return self.light.foreign

    # ----- per checkpoint -----------------------------------------------------------------------
    def checkpoint(self, probe: Probe, watch: Watch) -> list[Alert]:
        """Score every behaviour at this checkpoint, decide, attribute what is flagged; return alerts.

        Numpy only: every model forward (behaviour likelihoods included) is already in ``probe``.
        """
        self.last_step = probe.step
        decisions: Decided = []
        stages: list[tuple[str, Callable[[], Decided]]] = [
            *((f"supervised:{f.behaviour.name}", partial(self._supervised, f, probe, watch)) for f in self.fitted),
            ("learning", partial(self.learner.decide, probe.step, watch.tokenizer, (probe, watch))),
            ("emergent", partial(self.clusters.decide, probe, watch)),
        ]
        for stage, run in stages:  # each stage fails on its own: a failure is reported, the rest goes on
            try:
                decisions += run()
            except Exception as exc:
                self.record_failure(probe.step, stage, exc)
        return self._alerts(decisions)

    def record_failure(self, step: int, stage: str, exc: BaseException) -> None:
        """Log and report a stage that failed at ``step`` (training goes on)."""
        logger.warning("probe_callback: %s at step %d failed: %r", stage, step, exc)
        self.failures.append({"step": step, "stage": stage, "error": repr(exc)[:500]})

    def learning_check(self, step: int, tokenizer: Any) -> list[Alert]:
        """Between probes: the data side alone (free); new patterns are INFO "being learned"."""
        self.last_step = max(self.last_step, step)
        return self._alerts(self.learner.decide(step, tokenizer, None))

    def light_tokens(self, step: int, tokenizer: Any) -> list[int]:
        """Before a light check (rank 0): the tokens to read on the watched prompts (see
        :meth:`~probe_callback.decide.light.LightChecks.tokens`); none when no pattern is news."""
        self.last_step = max(self.last_step, step)
        return self.light.tokens(step, tokenizer)

    def prompts_to_watch(self, watch: Watch, tokenizer: Any) -> list[tuple[Any, list[int] | None, bool]]:
        """After :meth:`light_tokens`: prompts like a new pattern's rows, not trained on yet, to watch too, each
        with the answer to read (None for M0's) and whether it is whole
        (see :meth:`~probe_callback.decide.light.LightChecks.prompts_to_watch`)."""
        return self.light.prompts_to_watch(watch, tokenizer)

    def light_check(self, tokens: list[int], reads: TokenReads, watch: Watch) -> list[Alert]:
        """Test each pattern of :meth:`light_tokens` on the watched prompts outside its rows, from what the
        light check read (no generation)."""
        return self._alerts(self.light.check(tokens, reads, watch))

    def _alerts(self, decisions: Decided) -> list[Alert]:
        alerts = []
        for decision, direction in decisions:
            entry = self.behaviours[decision.name]
            entry.update(level=decision.level, p_value=_finite(decision.p_value), threshold=decision.threshold)
            if decision.is_regression and entry["flagged_at_step"] is None:
                entry["flagged_at_step"] = decision.step
            if entry["top_rows"] and direction is not None:
                self.book.directions[decision.name] = direction
            lesson = (entry.get("lesson") or {}).get("text")
            alert = decision.to_alert(entry["top_rows"][:5], entry["top_sources"][:3], lesson)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _supervised(self, fitted: FittedBehaviour, probe: Probe, watch: Watch) -> Decided:
        layer_pos = [self.layers.index(x) for x in fitted.layers]
        s = score_behaviour(
            fitted,
            logps=probe.likelihoods[fitted.behaviour.name],
            behaviour_vectors=probe.change[:, layer_pos],
            response_activations=probe.response_means[:, layer_pos],
            responses=list(zip(watch.texts, probe.responses)),
            control_deltas=probe.control,
        )
        name = fitted.behaviour.name
        entry = self.book.entry(name, "supervised")
        entry["score_history"].append([probe.step, s["ll_margin"]])
        entry["probe_accuracy"] = s["probe_accuracy"]
        entry.setdefault("metrics_history", []).append({"step": probe.step, **_jsonable_scores(s)})
        decision = self.policy.update(name, "supervised", probe.step, s["ll_margin"], s["ll_margin_p"])
        primary = fitted.layers.index(self.layers[0]) if self.layers[0] in fitted.layers else 0
        direction = fitted.probing_vectors[primary]
        if decision.level in ("WARN", "ERROR"):  # attribute what is flagged
            rng = np.random.default_rng(self.seed + probe.step)
            entry.update(self.attribute(direction, lambda k: fitted.split_vectors(primary, k, rng)))
        return [(decision, direction)]

    # ----- attribution --------------------------------------------------------------------------
    def attribute(self, direction: np.ndarray, draw_null: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
        """Top rows, steps and sources for a behaviour direction (see
        :meth:`~probe_callback.decide.blame_rows.Attribution.attribute`)."""
        return self.blame.attribute(direction, draw_null)

    def reattribute(self) -> None:
        """Rank the store again for every behaviour attributed so far (e.g. after more rows were stored)."""
        for name, direction in self.book.directions.items():
            entry = self.behaviours[name]
            entry.update(self.attribute(direction))
            calibrate_blame(entry)
        self.learner.reattribute()
        for entry in self.behaviours.values():
            if entry.get("links"):
                self.clusters.take_rows(entry)

    # ----- report and state ---------------------------------------------------------------------
    def report(self, paused_at_step: int | None, checkpoint: str | None) -> dict[str, Any]:
        """The report's content (see DESIGN.md); more fields than the contract are fine."""
        clusters = [
            {
                "id": b.id,
                "size": len(b.members),
                "first_step": b.first_step,
                "significant": b.significant,
                "p_value": b.p_value,
                "drift": b.drift,
                "tokens": b.tokens,
                "prompts": self.behaviours.get(f"emergent-{b.id}", {}).get("members", []),
                "samples": self.behaviours.get(f"emergent-{b.id}", {}).get("samples", []),
            }
            for b in self.tracker.behaviours.values()
        ]
        return {
            "version": 1,
            "paused_at_step": paused_at_step,
            "checkpoint": checkpoint,
            "last_step": self.last_step,
            "layers": self.layers,
            "behaviours": list(self.behaviours.values()),
            "clusters": clusters,
            "drift_map": self.drift_map,
            "prompt_drift": self.prompt_drift_history,
            "learning": self.learner.learning,
            "failures": self.failures,
        }

    def state(self) -> dict[str, Any]:
        """What a resume needs (saved with the trainer's checkpoint; the same keys since the first runs)."""
        return {
            "behaviours": self.behaviours,
            "drift_map": self.drift_map,
            "prompt_drift": self.prompt_drift_history,
            "last_step": self.last_step,
            "tracker": self.tracker.state(),
            "learning": self.learner.learning,
            "pattern_names": self.learner.names.known,
            "grown_for": self.light.grown_for,
            "failures": self.failures,
            "policy": self.policy.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take up a :meth:`state` saved by an earlier run (a resume)."""
        self.book.behaviours, self.clusters.drift_map = state["behaviours"], state["drift_map"]
        self.clusters.prompt_drift_history = state["prompt_drift"]
        self.last_step = state["last_step"]
        self.learner.learning = state.get("learning")
        self.learner.names = PatternNames(state.get("pattern_names"))
        grown = state.get("grown_for", {})
        self.light.grown_for = {name: [] for name in grown} if isinstance(grown, list) else grown
        self.failures = state.get("failures", [])
        self.clusters.tracker = EmergentTracker.from_state(state["tracker"])
        self.policy = RegressionPolicy.from_state(state["policy"])


def _jsonable_scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in scores.items() if k != "behaviour"}
