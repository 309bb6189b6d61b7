"""Regression policy: catches a strong regression with defaults, never trips on a clean run, resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probe_callback.decide.policy import RegressionPolicy


def run(policy: RegressionPolicy, scores, p_values, name="compliance", kind="supervised", noise=None):
    return [
        policy.update(name, kind, step=10 * i, score=s, p_value=p, noise=noise)
        for i, (s, p) in enumerate(zip(scores, p_values, strict=True))
    ]


def test_strong_regression_is_an_error_within_patience_with_defaults() -> None:
    scores = [0.0, 0.01, 0.35, 0.5, 0.6]
    p_values = [0.7, 0.4, 0.001, 0.001, 0.001]
    decisions = run(RegressionPolicy(), scores, p_values, noise=0.02)
    assert [d.level for d in decisions] == [None, None, "WARN", "ERROR", "ERROR"]
    error = decisions[3]
    assert error.is_regression and error.step == 30 and error.streak == 2
    assert error.threshold == pytest.approx(0.06) and error.z == pytest.approx(25)
    assert "regressed" in error.reason and "p=0.001" in error.reason
    alert = error.to_alert(top_sources=[{"source": "formatting_mix"}])
    assert alert is not None and alert.level == "ERROR" and alert.threshold == pytest.approx(0.06)


def test_clean_noisy_runs_never_reach_error() -> None:
    rng = np.random.default_rng(1234)
    levels = []
    for seed in range(20):
        policy = RegressionPolicy()
        scores = rng.normal(0, 0.02, size=50)
        p_values = rng.uniform(0, 1, size=50)  # p-values are uniform under the null
        levels += [d.level for d in run(policy, scores, p_values, name=f"b{seed}", noise=0.02)]
    assert "ERROR" not in levels
    assert levels.count("WARN") < 20  # about 1% of checkpoints at most


def test_a_significant_but_tiny_move_is_not_a_regression() -> None:
    decisions = run(RegressionPolicy(), [0.0, 0.03, 0.03, 0.03], [0.5, 0.001, 0.001, 0.001], noise=0.02)
    assert [d.level for d in decisions] == [None, "WARN", "WARN", "WARN"]  # below baseline + 3 noise


def test_streak_resets_when_a_checkpoint_is_not_significant() -> None:
    decisions = run(RegressionPolicy(patience=2), [0, 0.5, 0.5, 0.5, 0.5], [0.5, 0.001, 0.2, 0.001, 0.001])
    assert [d.level for d in decisions] == [None, "WARN", None, "WARN", "ERROR"]


def test_without_p_values_the_z_score_decides() -> None:
    decisions = run(RegressionPolicy(baseline_checkpoints=3), [0.0, 0.02, -0.02, 0.5, 0.6], [None] * 5)
    assert [d.level for d in decisions] == [None, None, None, "WARN", "ERROR"]
    assert decisions[3].z == pytest.approx(25)


def test_emergent_first_appearance_is_info() -> None:
    policy = RegressionPolicy()
    first = policy.update("cluster_3", "emergent", step=50, score=0.1, p_value=0.3)
    assert first.level == "INFO" and "new emergent behaviour" in first.reason and first.baseline == 0.0
    assert policy.update("cluster_3", "emergent", step=60, score=0.1, p_value=0.3).level is None
    strong = [policy.update("cluster_9", "emergent", step=s, score=0.5, p_value=0.001) for s in (50, 60)]
    assert [d.level for d in strong] == ["INFO", "ERROR"]


def test_overrides_and_absolute_threshold() -> None:
    policy = RegressionPolicy(threshold=0.2, overrides={"verbosity": {"patience": 3, "threshold": 0.5}})
    scores, p_values = [0.0, 0.4, 0.4, 0.4], [0.5, 0.001, 0.001, 0.001]
    assert [d.level for d in run(policy, scores, p_values)] == [None, "WARN", "ERROR", "ERROR"]
    assert [d.level for d in run(policy, scores, p_values, name="verbosity")] == [
        None,
        "WARN",
        "WARN",
        "WARN",
    ]
    with pytest.raises(ValueError, match="unknown keys"):
        RegressionPolicy(overrides={"x": {"patiense": 3}})
    with pytest.raises(ValueError, match="patience=0 must be an integer >= 1"):
        RegressionPolicy(patience=0)


def test_state_round_trip_resumes_mid_streak() -> None:
    policy = RegressionPolicy(baseline_checkpoints=2, overrides={"v": {"patience": 3}})
    run(policy, [0.0, 0.02, 0.5], [0.5, 0.5, 0.001])
    restored = RegressionPolicy.from_state(json.loads(json.dumps(policy.state())))
    assert restored.state() == policy.state()
    decision = restored.update("compliance", "supervised", step=30, score=0.5, p_value=0.001)
    assert decision.level == "ERROR" and decision.baseline == pytest.approx(0.01)
    assert restored.state()["tracks"]["compliance"]["flagged_at_step"] == 30 and restored.settings("v").patience == 3


def test_non_finite_score_is_skipped() -> None:
    policy = RegressionPolicy(baseline_checkpoints=0)
    decision = policy.update("x", "supervised", step=1, score=float("nan"), p_value=0.0)
    assert decision.level is None and "not finite" in decision.reason
