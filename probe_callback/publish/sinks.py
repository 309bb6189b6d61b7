"""Publish: fan alerts, metrics, flagged rows and the drift map out to the console, a JSONL log and W&B.

Every sink call goes through `Publisher`, which logs a failing sink once as a warning and carries
on: nothing in here may stop training.

Example:
    >>> import tempfile
    >>> from probe_callback.decide.alerts import Alert
    >>> out = Path(tempfile.mkdtemp())
    >>> pub = Publisher([JsonlSink(out / "alerts.jsonl")])
    >>> pub.alert(Alert("spam", "emergent", "WARN", 40, 0.31, 0.2, 0.004, "spam is rising"))
    >>> pub.close()
    >>> json.loads((out / "alerts.jsonl").read_text())["behaviour"]
    'spam'
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from probe_callback.decide.alerts import Alert, source_text
from probe_callback.publish.report import jsonable
from probe_callback.publish.report_html import ROW_COLUMNS, svg_scatter

logger = logging.getLogger(__name__)

PREFIX = "probe/"
STEP_METRIC = "train/global_step"  # transformers' WandbCallback step axis
WANDB_TITLE_MAX = 63  # wandb.Run.alert: "title ... must be less than 64 characters long"
PATTERN_COLUMNS = [
    "step",
    "name",
    "found_by",
    "words",
    "lesson",
    "n_rows",
    "excess_rise",
    "p_value",
    "sources",
    "steps",
]
# C0/C1 controls (ESC starts ANSI sequences), line separators, bidi overrides: dataset text must not drive a terminal.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\x1b`, `\\n`, `\\u202e`...), safe to print as one line.

    Example:
        >>> print(printable("red\\x1b[31m\\nnext"))
        red\\x1b[31m\\nnext
    """
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def alert_line(alert: Alert) -> str:
    """One human-readable line describing `alert`.

    Example:
        >>> a = Alert("compliance", "supervised", "ERROR", 40, 0.41, 0.2, 0.002, "regressed",
        ...           top_sources=[{"source": "formatting_mix"}])
        >>> print(alert_line(a))  # doctest: +ELLIPSIS
        [probe_callback] ERROR step 40 compliance (supervised): score 0.41 > 0.2 (p=0.002); top source ...
        >>> ad = Alert("learning-0", "emergent", "WARN", 18, 2.9, 0.0, 0.002, "", lesson="Brought to you")
        >>> print(alert_line(ad))
        [probe_callback] WARN step 18 learning-0 (emergent): score 2.9 > 0 (p=0.002); its rows choose "Brought to you"
    """
    line = f"[probe_callback] {alert.level} step {alert.step} {alert.behaviour} ({alert.kind})"
    line += f": score {alert.score:.3g}"
    if alert.threshold is not None:
        line += f" {'>' if alert.score > alert.threshold else '<='} {alert.threshold:.3g}"
    if alert.p_value is not None:
        line += f" (p={alert.p_value:.2g})"
    if alert.top_sources:
        line += f"; top source {source_text(alert.top_sources[0])}"
    if alert.lesson:
        line += f'; its rows choose "{alert.lesson}"'
    return line


class Sink:
    """Base sink: every method is a no-op, so a sink overrides only what it publishes."""

    def alert(self, alert: Alert) -> None:
        """Publish one alert."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """Publish scalar metrics (keys without the `probe/` prefix) at trainer step `step`."""

    def rows_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Publish the flagged training rows (`report_html.ROW_COLUMNS`)."""

    def patterns_table(self, step: int, patterns: list[dict[str, Any]]) -> None:
        """Publish what is being learned: the learning record's patterns (see `PATTERN_COLUMNS`)."""

    def drift(self, step: int, points: np.ndarray, labels: list[int], prompts: list[str]) -> None:
        """Publish the 2-D drift map: `points` (n, 2), cluster `labels` (-1 = noise) and prompts."""

    def close(self) -> None:
        """Release resources at the end of training."""


class ConsoleSink(Sink):
    """Prints one line per alert (to stderr by default), e.g. `[probe_callback] ERROR step 40 ...`, its
    control characters escaped (`printable`); `alerts.jsonl` keeps the exact text."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def alert(self, alert: Alert) -> None:
        print(printable(alert_line(alert)), file=self.stream or sys.stderr, flush=True)


class JsonlSink(Sink):
    """Appends each alert as one JSON object to `path` (flushed and fsynced per line).

    Example:
        >>> import tempfile
        >>> sink = JsonlSink(Path(tempfile.mkdtemp()) / "alerts.jsonl")
        >>> sink.alert(Alert("x", "supervised", "INFO", 1, 0.0, None, None, "hello"))
        >>> len(sink.path.read_text().splitlines())
        1
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def alert(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(jsonable(alert.to_dict()), ensure_ascii=False, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


class WandbSink(Sink):
    """Publishes to a W&B run: `run.alert`, `probe/*` metrics on `train/global_step`, tables, drift map.

    `owns_run`: finish the run on `close()` (only for a run this package started).

    Example:
        >>> import wandb  # doctest: +SKIP
        >>> sink = WandbSink(wandb.init(mode="offline"), owns_run=True)  # doctest: +SKIP
    """

    def __init__(self, run: Any, owns_run: bool = False, wait_duration: float = 60.0) -> None:
        import wandb

        self.wandb: Any = wandb  # (its stubs want list[str | int] columns and hide AlertLevel)
        self.run = run
        self.owns_run = owns_run
        self.wait_duration = wait_duration
        if owns_run:
            run.define_metric(STEP_METRIC)
            run.define_metric(f"{PREFIX}*", step_metric=STEP_METRIC, step_sync=True)

    def alert(self, alert: Alert) -> None:
        title = f"probe_callback {alert.level}: {alert.behaviour}"
        if len(title) > WANDB_TITLE_MAX:
            title = title[: WANDB_TITLE_MAX - 3] + "..."
        text = [alert_line(alert), alert.message]
        text += [
            f"row {r.get('row')} (id {r.get('id')}, source {r.get('source')}, step {r.get('step')}): "
            f"score {r.get('score')}"
            for r in alert.top_rows[:5]
        ]
        self.run.alert(
            title=title,
            text="\n".join(text),
            level=getattr(self.wandb.AlertLevel, alert.level),
            wait_duration=self.wait_duration,
        )

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**{f"{PREFIX}{k}": float(v) for k, v in values.items()}, STEP_METRIC: step})

    def rows_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns = [name for name, _ in ROW_COLUMNS]
        data = [[_cell(r.get(c)) for c in columns] for r in rows]
        table = self.wandb.Table(columns=columns, data=data)
        self.run.log({f"{PREFIX}flagged_rows": table, STEP_METRIC: step})

    def patterns_table(self, step: int, patterns: list[dict[str, Any]]) -> None:
        data = [[_cell(step if c == "step" else p.get(c)) for c in PATTERN_COLUMNS] for p in patterns]
        self.run.log(
            {f"{PREFIX}learning_patterns": self.wandb.Table(columns=PATTERN_COLUMNS, data=data), STEP_METRIC: step}
        )

    def drift(self, step: int, points: np.ndarray, labels: list[int], prompts: list[str]) -> None:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        data = [
            [float(x), float(y), int(lab), _cell(p)]
            for (x, y), lab, p in zip(pts, labels, _pad(prompts, len(pts)), strict=True)
        ]
        table = self.wandb.Table(columns=["x", "y", "cluster", "prompt"], data=data)
        picture = svg_scatter(pts.tolist(), list(labels), _pad(prompts, len(pts)))
        self.run.log(
            {
                f"{PREFIX}drift_points": table,
                f"{PREFIX}drift_scatter": self.wandb.plot.scatter(table, "x", "y", title=f"drift at step {step}"),
                f"{PREFIX}drift_map": self.wandb.Html(f"<html><body>{picture}</body></html>", inject=False),
                STEP_METRIC: step,
            }
        )

    def close(self) -> None:
        if self.owns_run:
            self.run.finish()


def _cell(value: Any) -> Any:
    """A W&B table cell: numbers and None as they are, anything else (messages, ids) as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(jsonable(value), ensure_ascii=False)


def _pad(prompts: Sequence[str], n: int) -> list[str]:
    return list(prompts[:n]) + [""] * max(0, n - len(prompts))


class Publisher:
    """Fans every call out to its sinks; a sink that raises is logged once as a warning and skipped.

    Example:
        >>> Publisher([]).metrics(10, {"spam/score": 0.1})  # no sinks: nothing happens
    """

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)
        self._warned: set[tuple[int, str]] = set()

    def _each(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a failure of ours must never kill training
                key = (id(sink), method)
                log = logger.debug if key in self._warned else logger.warning
                self._warned.add(key)
                log(
                    "probe_callback: %s.%s failed (%r); continuing without it",
                    type(sink).__name__,
                    method,
                    exc,
                )

    def alert(self, alert: Alert) -> None:
        self._each("alert", alert)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._each("metrics", step, values)

    def rows_table(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._each("rows_table", step, rows)

    def patterns_table(self, step: int, patterns: list[dict[str, Any]]) -> None:
        self._each("patterns_table", step, patterns)

    def drift(self, step: int, points: np.ndarray, labels: list[int], prompts: list[str]) -> None:
        self._each("drift", step, points, labels, prompts)

    def close(self) -> None:
        self._each("close")


def _wants_wandb(report_to: Any) -> bool:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    active = "wandb" in sys.modules and getattr(sys.modules["wandb"], "run", None) is not None
    return "wandb" in names or active


def make_publisher(args: Any, output_dir: Path, is_main_process: bool) -> Publisher:
    """The publisher for a training run: console + `output_dir/alerts.jsonl`, plus W&B when wanted.

    Only the main process publishes (other ranks get an empty publisher). W&B is used when
    `"wandb" in args.report_to` or a run is already active; the active run is reused, otherwise one
    is started (respecting `WANDB_MODE`, `WANDB_PROJECT` and `args.run_name`). If W&B cannot be
    imported or started, one warning is logged and the console and JSONL sinks carry on. Call it
    from `on_train_begin`, after transformers' `WandbCallback` has set its run up.

    Example:
        >>> import tempfile, types
        >>> args = types.SimpleNamespace(report_to="none")   # the trainer's TrainingArguments
        >>> [type(s).__name__ for s in make_publisher(args, Path(tempfile.mkdtemp()), True).sinks]
        ['ConsoleSink', 'JsonlSink']
    """
    if not is_main_process:
        return Publisher([])
    sinks: list[Sink] = [ConsoleSink(), JsonlSink(Path(output_dir) / "alerts.jsonl")]
    if _wants_wandb(getattr(args, "report_to", None)):
        try:
            import wandb

            run, owns = wandb.run, False
            if run is None:
                project = os.environ.get("WANDB_PROJECT", "huggingface")
                run, owns = wandb.init(project=project, name=getattr(args, "run_name", None)), True
            sinks.append(WandbSink(run, owns_run=owns))
        except Exception as exc:
            logger.warning("probe_callback: W&B unavailable (%r); alerts go to the console and alerts.jsonl only", exc)
    return Publisher(sinks)
