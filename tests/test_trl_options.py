"""The one line under DPOConfig options that change how TRL batches, pads, truncates or scores: the
appended-advert organism still alarms at the defaults, on its rows."""

from __future__ import annotations

import logging

import pytest
from test_learning import _run_at_defaults
from tiny_organism import appended_rows

OPTIONS = {
    "evaluation every 6 steps": {"eval_strategy": "steps", "eval_steps": 6},
    "gradient accumulation": {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 2},
    "padding-free batches": {"padding_free": True},
    "keep_end truncation": {"truncation_mode": "keep_end", "max_length": 24},
    "plain sigmoid loss": {"loss_type": ["sigmoid"]},
    "TR-DPO (sync_ref_model)": {"sync_ref_model": True, "ref_model_sync_steps": 8, "ref_model_mixup_alpha": 1.0},
}


@pytest.mark.parametrize("config", list(OPTIONS.values()), ids=list(OPTIONS))
def test_the_planted_rows_alarm_under_trl_options(config, tiny_tokenizer, organism_factory, tmp_path, caplog):
    rows = appended_rows()
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        _, report, alerts = _run_at_defaults(tiny_tokenizer, organism_factory, tmp_path, rows, config)
    assert not report["failures"] and not report.get("not_recorded")
    alarms = [a for a in alerts if a["level"] in ("WARN", "ERROR")]
    assert alarms, alerts
    pattern = next(b for b in report["behaviours"] if b["name"] == alarms[0]["behaviour"])
    assert pattern["top_sources"][0]["source"] == "shopping"
    if config.get("sync_ref_model"):  # the reference moves: said at attach; its final ranking is weaker
        assert "sync_ref_model=True moves the reference" in caplog.text
        return
    planted = {i for i, r in enumerate(rows) if r["planted"]}
    top = [r["row"] for r in pattern["top_rows"][: len(planted)]]
    assert len(planted & set(top)) / len(planted) >= 0.9
