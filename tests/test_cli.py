"""The `probe-callback` command line: help on every verb, report rebuild, mitigate end to end, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from probe_callback.cli import COMMANDS, main
from probe_callback.publish.report import write_report

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


def _with_row(**changes: object) -> dict:
    """REPORT with its first top row changed (a value of ... deletes the key)."""
    report = json.loads(json.dumps(REPORT))
    row = report["behaviours"][0]["top_rows"][0]
    row.update(changes)
    return {
        **report,
        "behaviours": [{**report["behaviours"][0], "top_rows": [{k: v for k, v in row.items() if v != ...}]}],
    }


def _with_behaviour(**changes: object) -> dict:
    return {**REPORT, "behaviours": [{**REPORT["behaviours"][0], **changes}]}


GOOD_ROWS = '{"id": 0, "source": "a", "prompt": "p", "chosen": "c", "rejected": "r"}\n' * 4
# (id, report.json content (text or JSON), train.jsonl content, extra mitigate arguments; "report" runs that verb)
MALFORMED = [
    ("row-null", _with_row(row=None), GOOD_ROWS, []),
    ("row-list", _with_row(row=[2]), GOOD_ROWS, []),
    ("row-missing", _with_row(row=...), GOOD_ROWS, []),
    ("row-text", _with_row(row="2"), GOOD_ROWS, []),
    ("row-negative", _with_row(row=-1), GOOD_ROWS, []),
    ("row-out-of-range", _with_row(row=99), GOOD_ROWS, []),
    ("score-text", _with_row(score="high"), GOOD_ROWS, []),
    (
        "score-nan-only",
        '{"behaviours": [{"name": "x", "flagged_at_step": 1, "top_rows": [{"row": 0, "score": NaN}]}]}',
        GOOD_ROWS,
        [],
    ),
    ("top-rows-text", _with_behaviour(top_rows="abc"), GOOD_ROWS, []),
    ("behaviours-text", {"behaviours": "abc"}, GOOD_ROWS, []),
    ("behaviour-number", {"behaviours": [1]}, GOOD_ROWS, []),
    ("report-array", [1, 2], GOOD_ROWS, []),
    ("report-deep", "[" * 100_000 + "]" * 100_000, GOOD_ROWS, []),
    ("report-broken", '{"behaviours": [', GOOD_ROWS, []),
    ("report-not-utf8", "\udcff", GOOD_ROWS, []),
    (
        "share-text",
        _with_behaviour(top_sources=[{"source": "a", "score": 1, "share_in_top": "x"}]),
        GOOD_ROWS,
        ["--action", "drop-source", "--top-frac", "0.5"],
    ),
    ("dataset-empty", REPORT, "", []),
    ("dataset-broken", REPORT, '{"id": 0, "prompt": \n', []),
    ("dataset-scalars", REPORT, "1\n2\n", []),
    ("unknown-source", REPORT, GOOD_ROWS, ["--action", "drop-source", "--source", "nope"]),
    ("source-with-filter", REPORT, GOOD_ROWS, ["--source", "a"]),
    ("top-k-zero", REPORT, GOOD_ROWS, ["--top-k", "0"]),
    ("top-k-text", REPORT, GOOD_ROWS, ["--top-k", "many"]),
    ("out-is-a-folder", REPORT, GOOD_ROWS, ["-o", "."]),
    ("report-verb-deep", "[" * 100_000 + "]" * 100_000, GOOD_ROWS, "report"),
    ("report-verb-bad-history", _with_behaviour(score_history=5), GOOD_ROWS, "report"),
    ("report-verb-bad-sources", _with_behaviour(top_sources=[5]), GOOD_ROWS, "report"),
]


@pytest.mark.parametrize(("report", "rows", "extra"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_input_exits_non_zero_with_one_line(
    report: object, rows: str, extra: list[str] | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = report if isinstance(report, str) else json.dumps(report)
    (tmp_path / "report.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    (tmp_path / "train.jsonl").write_text(rows)
    if extra == "report":
        argv = ["report", str(tmp_path)]
    else:
        argv = ["mitigate", "--report", str(tmp_path), "--dataset", str(tmp_path / "train.jsonl")]
        argv += ["--action", "filter", "-o", str(tmp_path / "out.jsonl"), *extra]
        argv += [] if {"--top-k", "--top-frac", "--source"} & set(extra) else ["--top-k", "1"]
    try:
        code, usage = main(argv), False
    except SystemExit as stop:  # argparse's usage errors: the usage, then one error line
        code, usage = stop.code, True
    lines = capsys.readouterr().err.splitlines()
    assert code != 0 and "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith(f"probe-callback {argv[0]}: error: ") and (usage or len(lines) == 1)


def test_drop_source_by_name_compares_sources_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Integer sources in the dataset, text in the report: the right rows go, and unknown names are listed."""
    report = _with_behaviour(top_sources=[{"source": "2", "score": 0.4, "share_in_top": 1.0}])
    write_report(report, tmp_path)
    rows = {
        "id": [0, 1, 2, 3],
        "source": [1, 2, 2, 1],
        "prompt": list("pqrs"),
        "chosen": list("wxyz"),
        "rejected": list("WXYZ"),
    }
    Dataset.from_dict(rows).to_json(str(tmp_path / "train.jsonl"))
    argv = [
        "mitigate",
        "--report",
        str(tmp_path),
        "--dataset",
        str(tmp_path / "train.jsonl"),
        "--action",
        "drop-source",
    ]
    assert main([*argv, "-o", str(tmp_path / "top.jsonl")]) == 0
    kept = [json.loads(line)["id"] for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    assert kept == [0, 3]
    assert main([*argv, "--source", "1", "-o", str(tmp_path / "named.jsonl")]) == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "named.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    assert main([*argv, "--source", "7", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "no such source ['7'] in 'source'; the dataset has ['1', '2']" in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: object) -> dict:
        raise RuntimeError("disk\non fire")

    monkeypatch.setattr("probe_callback.cli.load_report", broken)
    assert main(["report", "x"]) == 1
    assert capsys.readouterr().err == "probe-callback report: error: unexpected RuntimeError: disk on fire\n"
