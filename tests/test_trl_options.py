"""The one line under DPOConfig options that change how TRL batches, pads, truncates or scores: the
appended-advert organism still alarms at the defaults, on its rows."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from dpo_helpers import dpo_trainer
from test_learning import RPO
from tiny_organism import appended_rows, eval_rows

from probe_callback import ProbeCallback, load_report
from probe_callback.decide.cadence import Cadence

OPTIONS = {
    "evaluation every 6 steps": {"eval_strategy": "steps", "eval_steps": 6},
    "gradient accumulation": {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 2},
    "padding-free batches": {"padding_free": True},
    "keep_end truncation": {"truncation_mode": "keep_end", "max_length": 24},
    "plain sigmoid loss": {"loss_type": ["sigmoid"]},
    "TR-DPO (sync_ref_model)": {"sync_ref_model": True, "ref_model_sync_steps": 8, "ref_model_mixup_alpha": 1.0},
}


def _train(tokenizer: Any, factory: Any, out: Any, **config: Any) -> tuple[list[dict], dict, list[dict]]:
    rows = appended_rows()
    trainer = dpo_trainer(tokenizer, factory, rows, out, eval_rows=eval_rows(), **{**RPO, **config})
    trainer.add_callback(ProbeCallback(trainer))
    with pytest.MonkeyPatch.context() as patch:  # the light checks alone decide (see test_learning)
        patch.setattr(Cadence, "within_budget", lambda self, light=False: light)
        patch.setattr(Cadence, "learning_due", lambda self: True)
        trainer.train()
    log = out / "probe_callback" / "alerts.jsonl"
    return rows, load_report(out / "probe_callback"), [json.loads(x) for x in log.read_text().splitlines()]


@pytest.mark.parametrize("config", list(OPTIONS.values()), ids=list(OPTIONS))
def test_the_planted_rows_alarm_under_trl_options(config, tiny_tokenizer, organism_factory, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        rows, report, alerts = _train(tiny_tokenizer, organism_factory, tmp_path, **config)
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
