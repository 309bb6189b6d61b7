"""Sinks: console line, JSONL durability, failure isolation, and what really reaches an offline W&B run."""

from __future__ import annotations

import builtins
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainingArguments
from wandb_records import read_finished_run

from probe_callback.decide.alerts import Alert
from probe_callback.publish.sinks import (
    WANDB_TITLE_MAX,
    ConsoleSink,
    JsonlSink,
    Publisher,
    Sink,
    WandbSink,
    alert_line,
    make_publisher,
)

ERROR = Alert(
    behaviour="compliance",
    kind="supervised",
    level="ERROR",
    step=40,
    score=0.41,
    threshold=0.2,
    p_value=0.002,
    message="compliance regressed",
    top_rows=[{"row": 3, "id": np.int64(7), "source": "formatting_mix", "step": 38, "score": 0.5}],
    top_sources=[{"source": "formatting_mix", "score": 0.4, "share_in_top": 0.8, "n_rows": 60}],
)
LONG = Alert("x" * 100, "emergent", "INFO", 10, 0.1, None, None, "new cluster")


def test_alert_line_reads_like_the_spec() -> None:
    assert alert_line(ERROR) == (
        "[probe_callback] ERROR step 40 compliance (supervised): score 0.41 > 0.2 (p=0.002); top source formatting_mix"
    )
    assert alert_line(LONG) == f"[probe_callback] INFO step 10 {'x' * 100} (emergent): score 0.1"


def test_console_and_jsonl_sinks(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = tmp_path / "sub" / "alerts.jsonl"
    publisher = Publisher([ConsoleSink(stream), JsonlSink(path)])
    publisher.alert(ERROR)
    publisher.alert(LONG)
    publisher.metrics(40, {"compliance/score": 0.41})
    publisher.close()
    assert stream.getvalue().splitlines() == [alert_line(ERROR), alert_line(LONG)]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["level"] for x in lines] == ["ERROR", "INFO"]
    assert lines[0]["top_rows"][0]["id"] == 7 and lines[0]["p_value"] == 0.002
    JsonlSink(path).alert(ERROR)  # append mode: a resumed run keeps the earlier alerts
    assert len(path.read_text().splitlines()) == 3


class Broken(Sink):
    def alert(self, alert: Alert) -> None:
        raise RuntimeError("sink is down")


def test_failing_sink_warns_once_and_never_propagates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "alerts.jsonl"
    publisher = Publisher([Broken(), JsonlSink(path)])
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        for _ in range(3):
            publisher.alert(ERROR)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Broken.alert failed" in warnings[0].getMessage()
    assert len(path.read_text().splitlines()) == 3


def test_non_main_process_publishes_nothing(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    publisher = make_publisher(args, tmp_path, is_main_process=False)
    publisher.alert(ERROR)
    assert publisher.sinks == [] and not (tmp_path / "alerts.jsonl").exists()


def test_wandb_unavailable_warns_and_keeps_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_wandb(name: str, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=["wandb"])
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        publisher = make_publisher(args, tmp_path, is_main_process=True)
    assert [type(s).__name__ for s in publisher.sinks] == ["ConsoleSink", "JsonlSink"]
    assert sum("W&B unavailable" in r.getMessage() for r in caplog.records) == 1
    publisher.alert(ERROR)
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["behaviour"] == "compliance"


def test_wandb_init_failure_warns_and_keeps_console_and_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "init", refuse)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=["wandb"])
    with caplog.at_level(logging.WARNING, logger="probe_callback"):
        publisher = make_publisher(args, tmp_path, is_main_process=True)
    assert [type(s).__name__ for s in publisher.sinks] == ["ConsoleSink", "JsonlSink"]
    assert [r.getMessage() for r in caplog.records if "W&B unavailable" in r.getMessage()] != []


def test_wandb_offline_run_receives_alerts_metrics_and_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=["wandb"], run_name="probe-test")
    publisher = make_publisher(args, tmp_path / "out", is_main_process=True)
    assert [type(s).__name__ for s in publisher.sinks] == ["ConsoleSink", "JsonlSink", "WandbSink"]
    run = wandb.run
    publisher.alert(ERROR)
    publisher.alert(LONG)
    publisher.metrics(40, {"compliance/score": 0.41, "compliance/p_value": 0.002})
    publisher.rows_table(40, [{"step": 38, "row": 3, "id": "a", "source": "s", "score": 0.5, "prompt": "<p>"}])
    pattern = {"name": "learning-0", "words": ["sure"], "n_rows": 12, "excess_rise": 3.1, "p_value": 0.001}
    publisher.patterns_table(40, [{**pattern, "sources": {"formatting_mix": 12}, "steps": [3, 39]}])
    rng = np.random.default_rng(0)
    publisher.drift(40, rng.normal(size=(6, 2)), [0, 0, 1, 1, -1, -1], [f"q{i}" for i in range(6)])
    publisher.close()  # the publisher started this run, so it finishes it
    assert wandb.run is None
    assert [r.getMessage() for r in caplog.records if r.name.startswith("probe_callback")] == []

    records = read_finished_run(Path(run.dir).parent)
    alerts = [r.alert for r in records if r.WhichOneof("record_type") == "alert"]
    assert [(a.title, a.level) for a in alerts] == [
        ("probe_callback ERROR: compliance", "ERROR"),
        (("probe_callback INFO: " + "x" * 100)[: WANDB_TITLE_MAX - 3] + "...", "INFO"),
    ]
    assert all(len(a.title) < 64 for a in alerts)
    assert "score 0.41 > 0.2 (p=0.002)" in alerts[0].text and "row 3 (id 7" in alerts[0].text
    history = [
        {item.nested_key[0] if item.nested_key else item.key: item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    metrics = next(h for h in history if "probe/compliance/score" in h)
    assert json.loads(metrics["probe/compliance/score"]) == 0.41 and json.loads(metrics["train/global_step"]) == 40
    logged = set().union(*history)
    assert {"probe/flagged_rows", "probe/drift_points", "probe/drift_map", "probe/learning_patterns"} <= logged


def test_wandb_sink_reuses_an_active_run_and_leaves_it_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", project="probe-test")
    try:
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
        publisher = make_publisher(args, tmp_path, is_main_process=True)
        sink = publisher.sinks[-1]
        assert isinstance(sink, WandbSink) and sink.run is run and not sink.owns_run
        publisher.close()
        assert wandb.run is run
    finally:
        run.finish()


def test_console_escapes_control_characters_and_jsonl_keeps_them(tmp_path: Path) -> None:
    hostile = "web\x1b[2J\x1b]0;pwned\x07\r\nfake\u202eline"
    alert = Alert("b\x1b[31m", "supervised", "WARN", 5, 0.3, None, 0.01, "m", top_sources=[{"source": hostile}])
    stream = io.StringIO()
    Publisher([ConsoleSink(stream), JsonlSink(tmp_path / "alerts.jsonl")]).alert(alert)
    line = stream.getvalue()
    assert line.count("\n") == 1 and not any(c in line for c in "\x1b\x07\r\u202e")
    assert "b\\x1b[31m (supervised)" in line and "web\\x1b[2J\\x1b]0;pwned\\x07\\r\\nfake\\u202eline" in line
    saved = json.loads((tmp_path / "alerts.jsonl").read_text())
    assert saved["behaviour"] == "b\x1b[31m" and saved["top_sources"][0]["source"] == hostile
