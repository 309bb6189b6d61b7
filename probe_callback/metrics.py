"""What is published at each probe, light check and logging step: scalar metrics from the monitor's
decisions, named as W&B shows them.

Example:
    >>> learning_metrics([])
    {'learning/patterns': 0.0, 'learning/significant': 0.0, 'learning/best_p_value': 1.0}
"""

from __future__ import annotations

from typing import Any

from .decide.patterns import PATTERN_ALPHA
from .monitor import Monitor
from .scoring.learning import Pattern


def learning_metrics(patterns: list[Pattern]) -> dict[str, float]:
    """How many patterns the learning record shows, how many are news, and the best p-value."""
    return {
        "learning/patterns": float(len(patterns)),
        "learning/significant": float(sum(g.p_value <= PATTERN_ALPHA for g in patterns)),
        "learning/best_p_value": float(min((g.p_value for g in patterns), default=1.0)),
    }


def checkpoint_metrics(monitor: Monitor, step: int, cost_share: float | None) -> dict[str, float]:
    """Clusters, prompt drift, the probes' share of the training time, and each behaviour's score and
    p-value decided at ``step``."""
    out: dict[str, float] = {"clusters": float(sum(b.significant for b in monitor.tracker.behaviours.values()))}
    history = monitor.prompt_drift_history
    if history and history[-1]["step"] == step:
        out.update({f"prompt_drift/{k}": history[-1][k] for k in ("median", "p90", "max")})
    if cost_share is not None:
        out["cost_share"] = float(cost_share)
    for name, entry in monitor.behaviours.items():
        if entry["score_history"] and entry["score_history"][-1][0] == step:
            out[f"{name}/score"] = float(entry["score_history"][-1][1])
            if entry["p_value"] is not None:
                out[f"{name}/p_value"] = float(entry["p_value"])
    return out


def flagged_rows(monitor: Monitor, alerts: list[Any], step: int) -> list[dict[str, Any]]:
    """The top rows of every behaviour an ERROR alert names, for the W&B rows table."""
    return [
        {"step": step, **r} for a in alerts if a.level == "ERROR" for r in monitor.behaviours[a.behaviour]["top_rows"]
    ]
