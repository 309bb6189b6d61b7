"""The `probe-callback` command line: help on every verb, report rebuild, mitigate end to end, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from probe_callback.cli import COMMANDS, main
from probe_callback.report import write_report

REPORT = {
    "version": 1,
    "paused_at_step": 20,
    "checkpoint": "out/checkpoint-20",
    "behaviours": [
        {
            "name": "promo",
            "kind": "supervised",
            "flagged_at_step": 20,
            "level": "ERROR",
            "p_value": 0.001,
            "score_history": [[0, 0.0], [10, 0.3], [20, 0.5]],
            "top_rows": [{"row": 2, "id": 2, "score": 0.9, "source": "b", "step": 7, "prompt": "<b>hi</b>"}],
            "top_sources": [{"source": "b", "score": 0.4, "share_in_top": 1.0, "n_rows": 2}],
        }
    ],
}


@pytest.mark.parametrize("verb", [[], *([name] for name in COMMANDS)])
def test_every_verb_has_help(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*verb, "--help"])
    assert stop.value.code == 0
    assert "usage: probe-callback" in capsys.readouterr().out


def test_report_rebuilds_html_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(REPORT, tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "report.html")
    assert out[1:] == [
        "paused at step 20 (checkpoint: out/checkpoint-20)",
        "- promo (supervised): ERROR at step 20, p=0.001, top source b",
    ]
    assert "&lt;b&gt;hi&lt;/b&gt;" in (tmp_path / "report.html").read_text()


def test_mitigate_writes_dataset_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(REPORT, tmp_path / "run")
    rows = {
        "id": [0, 1, 2, 3],
        "source": list("abba"),
        "prompt": list("pqrs"),
        "chosen": list("wxyz"),
        "rejected": list("WXYZ"),
    }
    Dataset.from_dict(rows).to_json(str(tmp_path / "train.jsonl"))
    argv = ["mitigate", "--report", str(tmp_path / "run"), "--dataset", str(tmp_path / "train.jsonl")]
    assert main([*argv, "--action", "swap", "--top-k", "1", "-o", str(tmp_path / "swapped.jsonl")]) == 0
    assert "swap: 1 rows changed, 4 -> 4 rows" in capsys.readouterr().out
    swapped = [json.loads(line) for line in (tmp_path / "swapped.jsonl").read_text().splitlines()]
    assert swapped[2]["chosen"] == "Y" and swapped[1]["chosen"] == "x"
    manifest = json.loads((tmp_path / "swapped.jsonl.manifest.json").read_text())
    assert manifest["rows"] == [{"index": 2, "id": 2, "source": "b"}]

    assert main([*argv, "--action", "drop-source", "-o", str(tmp_path / "nob")]) == 0
    assert json.loads((tmp_path / "nob" / "manifest.json").read_text())["sources"] == ["b"]


def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("probe-callback report: error: no report at")
    with pytest.raises(SystemExit) as stop:
        main(["mitigate", "--report", "r", "--dataset", "d", "--action", "x", "-o", "o"])
    assert stop.value.code == 2 and "invalid choice: 'x'" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "probe_callback", "report", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0 and "usage: probe-callback report" in done.stdout
