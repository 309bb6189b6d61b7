"""report.json round trip, HTML escaping, and a headless-Chromium check that the page is inert and clean."""

from __future__ import annotations

import html
import math
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from probe_callback.publish.report import jsonable, load_report, render_html, summary_text, write_html, write_report

PAYLOAD = "<script>document.title='PWNED'</script>"


def realistic_report() -> dict:
    """A report shaped like the callback's, with a script payload planted in dataset text."""
    rng = np.random.default_rng(0)
    history = [[s, float(0.02 * rng.standard_normal() + (0.03 * (s - 30) if s > 30 else 0))] for s in range(0, 61, 5)]
    rows = [
        {
            "row": 17 + 9 * i,
            "id": f"fmt-{17 + 9 * i:04d}",
            "score": round(0.61 - 0.04 * i, 3),
            "source": "formatting_mix" if i != 3 else "web_qa",
            "step": 35 + i,
            "prompt": f"How do I reset my router? (variant {i})" if i else f"Tell me a joke {PAYLOAD}",
            "chosen": "Unplug it for 30 seconds, then plug it back in.\n\nP.S. Follow us for more tips!",
            "rejected": "Unplug it for 30 seconds, then plug it back in.",
        }
        for i in range(6)
    ]
    points = np.concatenate([rng.normal(c, 0.4, size=(12, 2)) for c in ([0, 0], [3, 1], [1, 3])])
    labels = [0] * 12 + [1] * 12 + [-1] * 12
    return {
        "version": 1,
        "paused_at_step": 60,
        "checkpoint": "out/checkpoint-60",
        "last_step": 60,
        "layers": [12, 18],
        "store": {"rows": 240, "dim": 576},
        "behaviours": [
            {
                "name": "promo_signoff",
                "kind": "supervised",
                "flagged_at_step": 55,
                "level": "ERROR",
                "p_value": 0.002,
                "threshold": 0.2,
                "probe_accuracy": 0.97,
                "score_history": history,
                "top_rows": rows,
                "top_steps": [
                    {"step": 36, "score": 0.52},
                    {"step": 41, "score": 0.47},
                    {"step": 12, "score": 0.1},
                ],
                "top_sources": [
                    {"source": "formatting_mix", "score": 0.48, "share_in_top": 0.83, "n_rows": 60},
                    {"source": "web_qa", "score": 0.07, "share_in_top": 0.17, "n_rows": 60},
                ],
                "samples": [
                    {
                        "prompt": "How do I boil an egg?",
                        "before": "Boil water, add the egg, cook 9 minutes.",
                        "after": "Boil water, add the egg, cook 9 minutes. P.S. Follow us!",
                    }
                ],
            },
            {
                "name": "cluster_0",
                "kind": "emergent",
                "label": f"P.S. follow {PAYLOAD}",
                "flagged_at_step": None,
                "level": "INFO",
                "p_value": 0.04,
                "threshold": None,
                "score_history": [[50, 0.11], [55, 0.12], [60, 0.1]],
                "top_rows": [],
                "top_steps": [],
                "top_sources": [],
            },
        ],
        "clusters": [
            {
                "id": 0,
                "size": 12,
                "first_step": 50,
                "prompts": ["Summarise this email", f"Write a haiku {PAYLOAD}"],
                "samples": [{"prompt": "Summarise this email", "before": "Sure: ...", "after": "Sure! ... P.S."}],
            }
        ],
        "drift_map": {
            "step": 60,
            "points": points.tolist(),
            "labels": labels,
            "prompts": [f"prompt {i}" for i in range(35)] + [PAYLOAD],
        },
    }


def test_write_and_load_round_trip_is_atomic_json(tmp_path: Path) -> None:
    report = realistic_report()
    report["store"]["dim"] = np.int64(576)
    report["behaviours"][0]["p_value"] = np.float32(0.002)
    path = write_report(report, tmp_path)
    assert path == tmp_path / "report.json"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left behind
    loaded = load_report(tmp_path)
    assert loaded["store"]["dim"] == 576
    assert math.isclose(loaded["behaviours"][0]["p_value"], 0.002, rel_tol=1e-6)
    assert load_report(path) == loaded


def test_jsonable_drops_nan_and_load_report_errors(tmp_path: Path) -> None:
    assert jsonable({"x": float("inf"), "a": np.arange(2)}) == {"x": None, "a": [0, 1]}
    with pytest.raises(FileNotFoundError, match="no report at"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a probe_callback report"):
        load_report(tmp_path)


def test_html_escapes_dataset_text_everywhere() -> None:
    page = render_html(realistic_report())
    assert "<script" not in page.lower()
    assert page.count(html.escape(PAYLOAD)) == 4
    assert "promo_signoff" in page and "formatting_mix" in page and "<svg" in page
    assert "http://" not in page and "https://" not in page


def test_html_tolerates_a_minimal_report() -> None:
    page = render_html({"behaviours": [{"name": "x"}]})
    assert "no score history" in page and "not paused" in page


def test_summary_text_names_the_verdicts() -> None:
    text = summary_text(realistic_report())
    assert text.splitlines()[0] == "paused at step 60 (checkpoint: out/checkpoint-60)"
    assert "- promo_signoff (supervised): ERROR at step 55, p=0.002, top source formatting_mix" in text


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_chromium_renders_report_inert_and_without_console_errors(tmp_path: Path) -> None:
    page = write_html(realistic_report(), tmp_path)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    env = dict(os.environ, HOME=str(tmp_path))
    dump = subprocess.run(
        [_chromium(), *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert "<title>probe_callback report</title>" in dump.stdout
    assert "PWNED" in dump.stdout and "&lt;script&gt;document.title" in dump.stdout  # shown as text
    console = [line for line in dump.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            _chromium(),
            *flags,
            "--hide-scrollbars",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_files_get_ordinary_file_modes(tmp_path: Path) -> None:
    """0666 less the umask, like any file a program writes (the temp file behind them is 0600)."""
    from probe_callback.decide.alerts import Alert
    from probe_callback.publish.sinks import JsonlSink

    old = os.umask(0o022)
    try:
        files = [write_report(realistic_report(), tmp_path), write_html(realistic_report(), tmp_path)]
        JsonlSink(tmp_path / "alerts.jsonl").alert(Alert("x", "supervised", "INFO", 1, 0.0, None, None, "m"))
        assert [stat.S_IMODE(p.stat().st_mode) for p in [*files, tmp_path / "alerts.jsonl"]] == [0o644] * 3
        os.umask(0o077)
        assert stat.S_IMODE(write_report({"behaviours": []}, tmp_path).stat().st_mode) == 0o600
    finally:
        os.umask(old)
