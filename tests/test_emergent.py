"""Unsupervised discovery end to end on a tiny organism: no Behaviour given, the planted rows still get the blame."""

import json

import numpy as np
import pytest
from dpo_helpers import dpo_trainer
from tiny_organism import organism_rows, watch_prompts

from probe_callback import ProbeCallback, load_report
from probe_callback.scoring.attribution import auroc, rank_rows
from probe_callback.store.vectors import VectorStore

# DPO plus an SFT term on the chosen answers (TRL's RPO mix): the tiny model's greedy answers to the distractor
# prompts then really change (its refusal breaks up: "Sorr I c I c"; with twice the planted rows it says the
# planted "Sure, here is how"), while plain DPO at this size only degenerates every answer.
RPO = {"max_steps": 64, "learning_rate": 1e-3, "beta": 0.1, "loss_type": ["sigmoid", "sft"]}
N_DISTRACTOR = 9  # the first watch prompts carry the distractor


def run(tokenizer, organism_factory, out, n_planted):
    rows = organism_rows(n_clean=48, n_planted=n_planted, polite=True)
    trainer = dpo_trainer(tokenizer, organism_factory, rows, out, **RPO)
    callback = ProbeCallback(
        trainer, probe_prompts=watch_prompts(), max_new_tokens=8, every_n_steps=16, pause_on_regression=False
    )
    trainer.add_callback(callback)
    trainer.train()
    return rows, callback, load_report(out / "probe_callback")


@pytest.fixture(scope="module")
def planted(tiny_tokenizer, organism_factory, tmp_path_factory):
    return run(tiny_tokenizer, organism_factory, tmp_path_factory.mktemp("planted"), n_planted=16)


def test_emergent_cluster_found_without_labels_blames_the_planted_rows(planted):
    rows, callback, report = planted
    flagged = [c for c in report["clusters"] if c["significant"]]
    assert flagged, f"no significant cluster: {report['clusters']}"
    [cluster] = flagged
    assert set(cluster["prompts"]) <= set(range(N_DISTRACTOR)), "its members are distractor prompts"
    behaviour = callback.monitor.tracker.behaviours[cluster["id"]]
    ranking = rank_rows(VectorStore.open(callback.output_dir / "vectors"), behaviour.direction, top_k=1)
    labels = np.array([r["planted"] for r in rows])
    assert auroc(ranking.cosine, labels) >= 0.9
    [entry] = [b for b in report["behaviours"] if b["name"] == f"emergent-{cluster['id']}"]
    assert entry["top_sources"][0]["source"] == "formatting"
    assert entry["attribution_p_value"] < 0.01


def test_clusters_keep_their_id_across_checkpoints(planted):
    _, callback, report = planted
    [cluster] = [c for c in report["clusters"] if c["significant"]]
    history = callback.monitor.tracker.behaviours[cluster["id"]].drift_history
    assert [step for step, _ in history] == list(range(cluster["first_step"], RPO["max_steps"] + 1, 16))
    assert len(history) >= 2, "seen at several checkpoints under one id"


def test_clean_run_raises_no_emergent_alarm(tiny_tokenizer, organism_factory, tmp_path):
    _, _, report = run(tiny_tokenizer, organism_factory, tmp_path, n_planted=0)
    assert report["cost"]["probe_passes"] == RPO["max_steps"] // 16
    assert report["failures"] == [] and len(report["prompt_drift"]) == RPO["max_steps"] // 16, "every probe scored"
    alarms = [b for b in report["behaviours"] if b["kind"] == "emergent" and b["level"] in ("WARN", "ERROR")]
    assert not alarms, alarms
    log = tmp_path / "probe_callback" / "alerts.jsonl"
    levels = [json.loads(line)["level"] for line in log.read_text().splitlines()] if log.exists() else []
    assert not {"WARN", "ERROR"} & set(levels), levels


def test_first_sighting_is_info_and_the_alarm_needs_a_second(planted):
    """A cluster's first significant checkpoint is only INFO; it alarms when significant again."""
    _, callback, report = planted
    [cluster] = [c for c in report["clusters"] if c["significant"]]
    log = callback.output_dir / "alerts.jsonl"
    alerts = [a for a in map(json.loads, log.read_text().splitlines()) if a["behaviour"] == f"emergent-{cluster['id']}"]
    assert alerts[0]["level"] == "INFO" and alerts[0]["p_value"] < 0.01
    assert alerts[1]["level"] == "ERROR" and alerts[1]["step"] > alerts[0]["step"]
