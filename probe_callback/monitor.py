"""Score and decide at each checkpoint: behaviour scores, emergent clusters, attribution, policy.

:class:`Monitor` turns one :class:`~probe_callback.watch.Probe` into decisions and alerts, keeps the
score history, and builds the report (``report.json``'s content). It reads the vector store for
attribution but writes nothing; the callback publishes and saves.

Example:
    >>> monitor = Monitor(fitted, EmergentTracker(), RegressionPolicy(), rows, store_dir)  # doctest: +SKIP
    >>> alerts = monitor.checkpoint(probe, watch)                                          # doctest: +SKIP
    >>> monitor.report(paused_at_step=None, checkpoint=None)["behaviours"]                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .alerts import Alert
from .attribution import SourceBlame, rank_rows, top_sources, top_steps
from .behaviours import FittedBehaviour, score_behaviour
from .discovery import EmergentBehaviour, EmergentTracker, prompt_drift, random_set_directions
from .policy import Decision, RegressionPolicy
from .rows import RowIndex
from .store import VectorStore
from .watch import Probe, Watch

SAMPLES = 3
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
    """The score -> decide stage for supervised and emergent behaviours."""

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
        self.fitted, self.tracker, self.policy, self.rows = fitted, tracker, policy, rows
        self.store_dir, self.layers, self.top_k, self.seed = Path(store_dir), layers, top_k, seed
        self.behaviours: dict[str, dict[str, Any]] = {}
        self.directions: dict[str, np.ndarray] = {}
        self.prompt_drift_history: list[dict[str, Any]] = []
        self.drift_map: dict[str, Any] | None = None
        self.last_step = 0

    # ----- per checkpoint -----------------------------------------------------------------------
    def checkpoint(self, probe: Probe, watch: Watch) -> list[Alert]:
        """Score every behaviour at this checkpoint, decide, attribute what is flagged; return alerts.

        Numpy only: every model forward (behaviour likelihoods included) is already in ``probe``.
        """
        self.last_step = probe.step
        decisions = [self._supervised(f, probe, watch) for f in self.fitted]
        decisions += self._emergent(probe, watch)
        alerts = []
        for decision, direction in decisions:
            entry = self.behaviours[decision.name]
            entry.update(level=decision.level, p_value=_finite(decision.p_value), threshold=decision.threshold)
            if decision.is_regression and entry["flagged_at_step"] is None:
                entry["flagged_at_step"] = decision.step
            if entry["top_rows"]:
                self.directions[decision.name] = direction
            alert = decision.to_alert(entry["top_rows"][:5], entry["top_sources"][:3])
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _entry(self, name: str, kind: str) -> dict[str, Any]:
        return self.behaviours.setdefault(
            name,
            {
                "name": name,
                "kind": kind,
                "flagged_at_step": None,
                "level": None,
                "p_value": None,
                "threshold": None,
                "score_history": [],
                "top_rows": [],
                "top_steps": [],
                "top_sources": [],
                "samples": [],
            },
        )

    def _supervised(self, fitted: FittedBehaviour, probe: Probe, watch: Watch) -> tuple[Decision, np.ndarray]:
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
        entry = self._entry(name, "supervised")
        entry["score_history"].append([probe.step, s["ll_margin"]])
        entry["probe_accuracy"] = s["probe_accuracy"]
        entry.setdefault("metrics_history", []).append({"step": probe.step, **_jsonable_scores(s)})
        decision = self.policy.update(name, "supervised", probe.step, s["ll_margin"], s["ll_margin_p"])
        primary = fitted.layers.index(self.layers[0]) if self.layers[0] in fitted.layers else 0
        direction = fitted.probing_vectors[primary]
        if decision.level in ("WARN", "ERROR"):  # attribute what is flagged
            rng = np.random.default_rng(self.seed + probe.step)
            entry.update(self.attribute(direction, lambda k: fitted.split_vectors(primary, k, rng)))
        return decision, direction

    def _emergent(self, probe: Probe, watch: Watch) -> list[tuple[Decision, np.ndarray]]:
        ok = np.flatnonzero(probe.valid)
        seen = self.tracker.update(
            probe.step,
            [watch.base_tokens()[i] for i in ok],
            [probe.cur_tokens[i] for i in ok],
            [probe.novelty[i] for i in ok],
            [probe.tokens[i] for i in ok],
        )
        vectors = self.tracker.vectors
        self._drift_map(vectors, watch, ok, seen, probe.step)
        drift = prompt_drift(probe.prompt_current[ok, 0], probe.prompt_reference[ok, 0])
        self.prompt_drift_history.append(
            {"step": probe.step, "median": drift.median, "p90": drift.p90, "max": drift.max, "outliers": drift.outliers}
        )
        out: list[tuple[Decision, np.ndarray]] = []
        for b in self.tracker.behaviours.values():
            name = f"emergent-{b.id}"
            if not (b.significant and b.step == probe.step):
                if name in self.behaviours:  # reported before, not significant now: its streak ends here
                    score = b.drift if b.step == probe.step else 0.0
                    decision = self.policy.update(name, "emergent", probe.step, score, None)
                    out.append((decision, self.directions.get(name, b.direction)))
                continue
            entry = self._entry(name, "emergent")
            entry["label"] = " ".join(t.strip() for t in b.tokens[:5] if t.strip())
            entry["members"] = [int(ok[i]) for i in b.members]
            entry["samples"] = self._samples(entry["members"], probe, watch)
            entry["score_history"].append([probe.step, b.drift])
            rng = np.random.default_rng(self.seed + b.step)
            draw_null = partial(random_set_directions, vectors, b.members, rng=rng)
            entry.update(self.attribute(b.direction, draw_null))
            # Discovery only screens; an alarm needs the data blame to beat random sets of other watched prompts.
            p = entry.get("attribution_p_value", 1.0)
            out.append((self.policy.update(name, "emergent", probe.step, b.drift, p), b.direction))
        return out

    def _samples(self, members: list[int], probe: Probe, watch: Watch) -> list[dict[str, str]]:
        r0 = watch.answers(watch.r0)
        return [{"prompt": watch.texts[i], "before": r0[i], "after": probe.responses[i]} for i in members[:SAMPLES]]

    def _drift_map(self, v: np.ndarray, watch: Watch, ok: np.ndarray, seen: list[EmergentBehaviour], step: int) -> None:
        labels = np.full(len(ok), -1)
        for b in seen:
            if b.significant:
                labels[b.members] = b.id
        centred = v - v.mean(axis=0)
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(v) > 1 else np.eye(2, v.shape[1])
        self.drift_map = {
            "step": step,
            "points": (centred @ axes.T).tolist(),
            "labels": labels.tolist(),
            "prompts": [watch.texts[i] for i in ok],
        }

    # ----- attribution --------------------------------------------------------------------------
    def attribute(self, direction: np.ndarray, draw_null: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
        """Top rows, steps and sources for a behaviour direction (hidden size), with p-values.

        With ``draw_null`` (k -> (k, H) directions of random behaviours) the sources' blame is also
        tested against those (``blame_null_p_value``) and no p-value of it is reported below that.
        """
        try:
            store = VectorStore.open(self.store_dir)
        except FileNotFoundError:
            return {}
        if store.n_rows == 0:
            return {}
        ranking = rank_rows(store, direction, layer_pos=0, top_k=self.top_k, seed=self.seed)
        memberships = store.memberships()
        first_step = _first_steps(memberships)
        rows = [
            {
                **self.rows.describe(int(r)),
                "score": float(s),
                "step": first_step.get(int(r)),
                "prompt": self.rows.text(int(r), "prompt"),
                "chosen": self.rows.text(int(r), "chosen"),
                "rejected": self.rows.text(int(r), "rejected"),
            }
            for r, s in zip(ranking.rows, ranking.scores)
        ]
        sources = [
            {**s.to_dict(), "share_in_top": s.score} for s in top_sources(ranking.all_scores, self.rows.sources_array())
        ]
        steps = [s.to_dict() for s in top_steps(ranking.all_scores, memberships)]
        # Bonferroni over the sources tested; without a source column, the ranking's own p-value.
        blame = min(1.0, sources[0]["p_value"] * len(sources)) if sources else ranking.p_value
        out = {
            "top_rows": rows,
            "top_steps": steps,
            "top_sources": sources,
            "ranking_p_value": ranking.p_value,
            "attribution_p_value": blame,
        }
        if draw_null is not None and sources:
            null_blame = SourceBlame(ranking, self.rows.sources_array(), store.project)
            out["blame_null_p_value"] = null_blame.p_value(direction, draw_null)
            _calibrate_blame(out)
        return out

    def reattribute(self) -> None:
        """Rank the store again for every behaviour attributed so far (e.g. after more rows were stored)."""
        for name, direction in self.directions.items():
            entry = self.behaviours[name]
            entry.update(self.attribute(direction))
            _calibrate_blame(entry)

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
        }

    def state(self) -> dict[str, Any]:
        return {
            "behaviours": self.behaviours,
            "drift_map": self.drift_map,
            "prompt_drift": self.prompt_drift_history,
            "last_step": self.last_step,
            "tracker": self.tracker.state(),
            "policy": self.policy.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.behaviours, self.drift_map = state["behaviours"], state["drift_map"]
        self.prompt_drift_history = state["prompt_drift"]
        self.last_step = state["last_step"]
        self.tracker = EmergentTracker.from_state(state["tracker"])
        self.policy = RegressionPolicy.from_state(state["policy"])


def _calibrate_blame(entry: dict[str, Any]) -> None:
    """A behaviour's blame (overall and per source) is only as confident as its null of random
    behaviours allows."""
    floor = entry.get("blame_null_p_value")
    if floor is None or "attribution_p_value" not in entry:
        return
    entry["attribution_p_value"] = max(entry["attribution_p_value"], floor)
    entry["top_sources"] = [{**s, "p_value": max(s["p_value"], floor)} for s in entry["top_sources"]]


def _first_steps(memberships: dict[str, np.ndarray]) -> dict[int, int]:
    """The first step whose batch held each row (records are appended in step order)."""
    rows, first = np.unique(memberships["row"], return_index=True)
    return dict(zip(rows.tolist(), memberships["step"][first].tolist()))


def _jsonable_scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in scores.items() if k != "behaviour"}
