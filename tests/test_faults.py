"""Faults around the user's run: full disks, kill -9 at each write point of ours, resumes, reruns, clashes."""

import errno
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dpo_helpers import dpo_trainer, preference_rows
from fault_run import EVERY, MAX_STEPS, SETTINGS, attach
from safetensors.torch import save_file
from tiny_organism import organism_rows, watch_prompts

from probe_callback import ProbeCallback, callback, load_report
from probe_callback.publish.report import summary_text
from probe_callback.publish.sinks import JsonlSink
from probe_callback.run.fence import FolderLock
from probe_callback.run.resume import saved_state
from probe_callback.store.vectors import VectorStore

HERE = Path(__file__).parent


def organism_run(tokenizer, organism_factory, out, resume=None, **options):
    trainer = dpo_trainer(tokenizer, organism_factory, organism_rows(), out, **SETTINGS)
    cb = attach(trainer, **options)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, cb


def alert_keys(out):
    path = out / "probe_callback" / "alerts.jsonl"
    return [(a["behaviour"], a["step"], a["level"]) for a in map(json.loads, path.read_text().splitlines())]


def _raise(code):
    def fail(*args, **kw):
        raise OSError(code, os.strerror(code))

    return fail


# (write point, what the report names, what to break, errno): a full disk or a read-only folder at each write
WRITE_POINTS = [
    ("vectors", "vectors", (VectorStore, "_write"), errno.ENOSPC),
    ("vectors-open", "vectors", (VectorStore, "create"), errno.EROFS),
    ("state", "state", (callback, "options_record"), errno.EROFS),
    ("report", "report", (callback, "write_report"), errno.ENOSPC),
    ("alerts", "JsonlSink.alert", (JsonlSink, "alert"), errno.ENOSPC),
]


@pytest.mark.parametrize("point,what,target,code", WRITE_POINTS, ids=[p[0] for p in WRITE_POINTS])
def test_a_failed_write_of_ours_is_reported_and_training_goes_on(
    point, what, target, code, tiny_tokenizer, organism_factory, tmp_path, monkeypatch
):
    monkeypatch.setattr(*target, _raise(code))
    trainer, cb = organism_run(tiny_tokenizer, organism_factory, tmp_path)
    assert trainer.state.global_step == MAX_STEPS
    report = cb.report()
    [fault] = [f for f in report["not_recorded"] if f["what"] == what]
    assert f"OSError({code}, " in fault["error"]
    assert f"not recorded: {what} from step" in summary_text(report)
    assert [s for s, _ in report["behaviours"][0]["score_history"]] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    if point != "report":
        assert load_report(tmp_path / "probe_callback")["not_recorded"] == report["not_recorded"]
    if point == "vectors":  # nothing written after the failure, and the store still opens
        assert VectorStore.open(tmp_path / "probe_callback" / "vectors").memberships()["row"].size == 0


def test_kill_9_at_each_write_point_then_resume_loses_and_doubles_nothing(tiny_tokenizer, organism_factory, tmp_path):
    weights = tmp_path / "organism.safetensors"
    save_file(organism_factory().state_dict(), str(weights))
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}", "WANDB_MODE": "disabled"}
    out, resume = tmp_path / "run", []
    for point, step in (("vectors", 3), ("state", 4), ("report", 7), ("alerts", 10), ("none", 0)):
        cmd = [sys.executable, str(HERE / "fault_run.py"), str(out), point, str(step), str(weights), *resume]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert done.returncode == (0 if point == "none" else -9), done.stderr[-3000:]
        saved = sorted(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
        resume = [str(saved[-1].parent)]
    # the uninterrupted run, for comparison
    organism_run(tiny_tokenizer, organism_factory, tmp_path / "ref")
    keys = alert_keys(out)
    assert len(keys) == len(set(keys)), "no alert twice"
    assert keys == alert_keys(tmp_path / "ref"), "the same alerts as an uninterrupted run"
    report = load_report(out / "probe_callback")
    assert [s for s, _ in report["behaviours"][0]["score_history"]] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    m = VectorStore.open(out / "probe_callback" / "vectors").memberships()
    assert np.bincount(m["step"])[1:].tolist() == [4] * MAX_STEPS, "each step's batch recorded once"
    pairs = Counter(zip(m["row"].tolist(), m["step"].tolist()))
    assert max(pairs.values()) == 1
    state = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["ProbeCallback"]["attributes"]["probe_state"]["step"] == 12
    assert not list((out / "probe_callback").rglob("*.tmp*")), "no temp files left"


def test_the_state_of_older_runs_is_still_read(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "step-4.json").write_text(json.dumps({"step": 4, "prompts": ["a"]}))
    assert saved_state({}, tmp_path, 4)["prompts"] == ["a"]
    inside = {"ProbeCallback": {"args": {}, "attributes": {"probe_state": {"step": 4, "prompts": ["b"]}}}}
    assert saved_state(inside, tmp_path, 4)["prompts"] == ["b"], "the checkpoint's own state wins"
    assert saved_state({}, tmp_path, 6) is None


def test_one_callback_per_trainer_and_one_run_per_folder(tiny_tokenizer, tiny_model_factory, tmp_path):
    rows = preference_rows(16)
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, rows, tmp_path)
    trainer.add_callback(ProbeCallback(trainer, probe_prompts=["a b", "c d", "e f", "g h"], max_new_tokens=4))
    with pytest.raises(ValueError, match="already has a ProbeCallback"):
        ProbeCallback(trainer, probe_prompts=["a b", "c d", "e f", "g h"])
    restore = {"restore_callback_states_from_checkpoint": True}
    restoring = dpo_trainer(tiny_tokenizer, tiny_model_factory, rows, tmp_path, **restore)
    with pytest.raises(ValueError, match="restore_callback_states_from_checkpoint"):
        ProbeCallback(restoring)

    other_run = FolderLock(tmp_path / "probe_callback" / "run.lock")
    assert other_run.acquire()
    trainer.train()  # this run's callback stands down: the other run owns the folder
    assert trainer.state.global_step == 6
    assert not (tmp_path / "probe_callback" / "vectors").exists()
    assert not (tmp_path / "probe_callback" / "report.json").exists(), "the other run's report is left alone"
    other_run.release()


def test_a_fresh_run_or_another_model_sets_the_old_store_aside(tiny_tokenizer, tiny_model_factory, tmp_path):
    rows = preference_rows(24)

    def run(seed, resume=None, **settings):
        trainer = dpo_trainer(tiny_tokenizer, lambda: tiny_model_factory(seed=seed), rows, tmp_path, **settings)
        trainer.add_callback(
            ProbeCallback(trainer, probe_prompts=["a b", "c d", "e f", "g h"], max_new_tokens=4, every_n_steps=3)
        )
        trainer.train(resume_from_checkpoint=resume)
        return VectorStore.open(tmp_path / "probe_callback" / "vectors")

    first = run(1, save_strategy="steps", save_steps=3)
    assert first.n_rows > 0
    (tmp_path / "probe_callback" / "alerts.jsonl").write_text('{"step": 3}\n')  # the first run's alert
    run(1)  # the same data and model, from step 0 again: a new run, not more of the old one
    aside = tmp_path / "probe_callback" / "vectors-before-step-0"
    assert aside.is_dir() and VectorStore.open(aside).n_rows == first.n_rows
    assert (tmp_path / "probe_callback" / "alerts-before-step-0.jsonl").read_text() == '{"step": 3}\n'
    again = run(2, resume=str(tmp_path / "checkpoint-3"))  # resumed, but with another reference model
    assert (tmp_path / "probe_callback" / "vectors-before-step-3").is_dir()
    assert "|hidden=32|" in (tmp_path / "probe_callback" / "vectors" / "model.txt").read_text()
    assert np.bincount(again.memberships()["step"])[1:].tolist() == [0, 0, 0, 4, 4, 4], "only this run's steps"


def test_the_summary_says_how_many_probes_ran_and_why_none_did(tiny_tokenizer, tiny_model_factory, tmp_path):
    trainer = dpo_trainer(tiny_tokenizer, tiny_model_factory, preference_rows(24), tmp_path)
    cb = ProbeCallback(
        trainer, probe_prompts=["a b", "c d", "e f", "g h"], max_new_tokens=4
    )  # default cadence and budget
    trainer.add_callback(cb)
    trainer.train()
    text = summary_text(cb.report())
    assert "probes: 0 (every 1 steps); none ran: 6 due held back by the 10% budget" in text, text


def test_resume_with_changed_options_says_what_is_used(tiny_tokenizer, organism_factory, tmp_path, caplog):
    _, first = organism_run(tiny_tokenizer, organism_factory, tmp_path)
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        trainer, cb = organism_run(
            tiny_tokenizer,
            organism_factory,
            tmp_path,
            resume=str(tmp_path / "checkpoint-6"),
            policy={"patience": 3},
            probe_prompts=watch_prompts()[:-1],
        )
    text = "\n".join(r.getMessage() for r in caplog.records if "differ from the saved run" in r.getMessage())
    assert "policy: saved {}, now {'patience': 3} -> using {'patience': 3}" in text
    assert "probe_prompts: differ from the saved run's -> keeping the saved prompts" in text
    assert cb.monitor.policy.defaults.patience == 3, "the new policy wins"
    assert cb.watch.prompts == first.watch.prompts, "the watched prompts stay the saved ones"
    assert trainer.state.global_step == MAX_STEPS
