"""The whole loop on a real DPOTrainer with a planted behaviour: alert, pause, report, resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from dpo_helpers import dpo_trainer
from tiny_organism import compliance_examples, organism_rows, watch_prompts
from wandb_records import read_finished_run

from probe_callback import Behaviour, ProbeCallback, load_report, mitigate
from probe_callback.cli import main
from probe_callback.publish.report import jsonable, next_steps_text
from probe_callback.scoring.attribution import auroc
from probe_callback.store.vectors import VectorStore

MAX_STEPS = 24
DPO = {"max_steps": MAX_STEPS, "learning_rate": 1e-3, "beta": 0.02}


def probe_callback(trainer, **options):
    positive, negative = compliance_examples()
    return ProbeCallback(
        trainer,
        probe_prompts=watch_prompts(),
        behaviours=[Behaviour("compliance", positive, negative)],
        max_new_tokens=12,
        top_k=100,
        **{"probe_budget": None, **options},  # probe at every default step, however long the probes take
    )


def alerts(out):
    path = out / "probe_callback" / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def paused_run(tiny_tokenizer, organism_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    rows = organism_rows()
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, rows, out, **DPO)
    callback = probe_callback(trainer)
    trainer.add_callback(callback)
    trainer.train()
    return rows, out, trainer, callback


def test_planted_behaviour_pauses_with_defaults(paused_run):
    rows, out, trainer, callback = paused_run
    report = load_report(out / "probe_callback")
    assert report["paused_at_step"] is not None and report["paused_at_step"] < MAX_STEPS
    assert trainer.state.global_step == report["paused_at_step"]
    assert (out / f"checkpoint-{report['paused_at_step']}" / "trainer_state.json").exists()
    assert report["checkpoint"].endswith(f"checkpoint-{report['paused_at_step']}")
    assert report == json.loads(json.dumps(jsonable(callback.report())))  # the API gives the same report

    [b] = [b for b in report["behaviours"] if b["name"] == "compliance"]
    assert b["kind"] == "supervised" and b["flagged_at_step"] == report["paused_at_step"]
    assert b["top_sources"][0]["source"] == "formatting" and b["top_sources"][0]["p_value"] < 0.01
    assert b["blame_null_p_value"] < 0.01  # beats random splits of its examples; the p-values above carry it
    planted = np.array([r["planted"] for r in rows])
    scores = np.full(len(rows), np.nan)
    for r in b["top_rows"]:
        scores[r["row"]] = r["score"]
        assert r["id"] == rows[r["row"]]["id"] and r["source"] == rows[r["row"]]["source"]
    assert auroc(scores, planted) >= 0.9
    levels = [(a["behaviour"], a["level"]) for a in alerts(out)]
    assert ("compliance", "ERROR") in levels
    assert (out / "probe_callback" / "report.html").exists()


def test_mitigated_data_resumes_from_the_checkpoint(paused_run, tiny_tokenizer, organism_factory, tmp_path):
    rows, out, first, _ = paused_run
    paused_at = first.state.global_step
    shutil.copytree(out, tmp_path / "run")
    report = load_report(tmp_path / "run" / "probe_callback")
    cleaned, manifest = mitigate(report, Dataset.from_list(rows), "filter", top_k=16)
    removed = {r["id"] for r in manifest["rows"]}
    assert len(removed) == 16 and sum(rows[i]["planted"] for i in range(len(rows)) if rows[i]["id"] in removed) >= 14
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, cleaned, tmp_path / "run", **DPO)
    trainer.add_callback(probe_callback(trainer, pause_on_regression=False))
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{paused_at}"))
    assert trainer.state.global_step == MAX_STEPS
    assert (tmp_path / "run" / "probe_callback" / f"vectors-before-step-{paused_at}").is_dir()
    store = VectorStore.open(tmp_path / "run" / "probe_callback" / "vectors")
    assert store.row_ids().max() < len(cleaned), "the new store indexes the cleaned dataset"


def test_the_printed_next_steps_clean_the_blamed_rows(paused_run, tmp_path):
    rows, out, _, _ = paused_run
    report = load_report(out / "probe_callback")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = next_steps_text(out / "probe_callback", report).splitlines()
    commands = [line.split("probe-callback ")[1].split("    (")[0] for line in lines if "mitigate --report" in line]
    assert len(commands) == 2, lines  # filter the blamed rows; drop the blamed source (p < 0.01 above)
    kept = {}
    for i, command in enumerate(commands):
        argv = command.replace("TRAIN.jsonl", str(train)).replace("cleaned.jsonl", str(tmp_path / f"{i}.jsonl"))
        assert main(argv.split()) == 0
        kept[i] = [json.loads(line)["id"] for line in (tmp_path / f"{i}.jsonl").read_text().splitlines()]
    [b] = [b for b in report["behaviours"] if b["name"] == "compliance"]
    assert len(rows) - len(kept[0]) == len({r["row"] for r in b["top_rows"]})
    assert kept[1] == [r["id"] for r in rows if r["source"] != "formatting"]


def test_resume_continues_one_history(paused_run, tiny_tokenizer, organism_factory):
    rows, out, first, _ = paused_run
    paused_at = first.state.global_step
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, rows, out, **DPO)
    callback = probe_callback(trainer, pause_on_regression=False)  # the user chose to carry on: alert only
    trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{paused_at}"))
    assert trainer.state.global_step == MAX_STEPS
    report = load_report(out / "probe_callback")
    [b] = [b for b in report["behaviours"] if b["name"] == "compliance"]
    steps = [s for s, _ in b["score_history"]]
    every = report["every_n_steps"]
    assert steps == list(range(every, MAX_STEPS + 1, every)), "one continuous history, no step twice"
    m = VectorStore.open(out / "probe_callback" / "vectors").memberships()
    per_step = np.bincount(m["step"])
    assert per_step[1:].tolist() == [4] * MAX_STEPS, "every step's batch recorded once"


def test_clean_run_does_not_pause(tiny_tokenizer, organism_factory, tmp_path):
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, organism_rows(n_planted=0), tmp_path, **DPO)
    trainer.add_callback(probe_callback(trainer))
    trainer.train()
    assert trainer.state.global_step == MAX_STEPS
    report = load_report(tmp_path / "probe_callback")
    assert report["paused_at_step"] is None and report["failures"] == []
    [b] = [b for b in report["behaviours"] if b["name"] == "compliance"]
    assert len(b["score_history"]) == report["cost"]["probe_passes"] >= 2, "every probe scored the behaviour"
    assert all(b["flagged_at_step"] is None for b in report["behaviours"])
    assert not [a for a in alerts(tmp_path) if a["level"] == "ERROR"]


def test_alerts_and_metrics_reach_an_offline_wandb_run(tiny_tokenizer, organism_factory, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = dpo_trainer(
        tiny_tokenizer, organism_factory, organism_rows(), tmp_path / "out", report_to=["wandb"], **DPO
    )
    trainer.add_callback(probe_callback(trainer))
    trainer.train()
    run_dir = Path(wandb.run.dir).parent
    wandb.finish()
    records = read_finished_run(run_dir)
    titles = [(r.alert.title, r.alert.level) for r in records if r.WhichOneof("record_type") == "alert"]
    assert ("probe_callback ERROR: compliance", "ERROR") in titles
    history = [r.history.item for r in records if r.HasField("history")]
    keys = {i.nested_key[0] if i.nested_key else i.key for items in history for i in items}
    assert {"probe/compliance/score", "probe/compliance/p_value", "probe/clusters", "probe/flagged_rows"} <= keys


def test_stages_fail_on_their_own(tiny_tokenizer, organism_factory, tmp_path, monkeypatch):
    """A failing emergent stage takes neither the supervised verdict nor training down, and is reported."""
    from probe_callback.publish.report import summary_text
    from probe_callback.scoring.discovery import EmergentTracker

    def broken(*args, **kwargs):
        raise RuntimeError("clustering exploded")

    monkeypatch.setattr(EmergentTracker, "update", broken)
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, organism_rows(), tmp_path, **DPO)
    trainer.add_callback(probe_callback(trainer))
    trainer.train()
    report = load_report(tmp_path / "probe_callback")
    assert report["paused_at_step"] is not None, "the supervised regression still pauses the run"
    failures = report["failures"]
    assert failures and {f["stage"] for f in failures} == {"emergent"}
    assert "clustering exploded" in failures[0]["error"]
    assert "failed stage(s) of ours" in summary_text(report)
    assert any(a["behaviour"] == "compliance" and a["level"] == "ERROR" for a in alerts(tmp_path))
