"""Publish: the run report (`report.json`), its schema, a plain-text summary and its HTML view (`report.html`).

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> report = {"version": 1, "paused_at_step": None, "behaviours": []}
    >>> write_report(report, out).name, load_report(out)["version"]
    ('report.json', 1)
    >>> write_html(report, out).name
    'report.html'
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

from ..decide.alerts import Kind, Level, source_text
from ..store.files import atomic_write_text
from .report_html import number_text, render_html

REPORT_NAME = "report.json"
HTML_NAME = "report.html"


class RowEntry(TypedDict, total=False):
    """A ranked training row: ``row`` indexes the user's ``train_dataset``; ``step`` is the first step that
    trained on it (None: not trained on yet); ``id`` and ``source`` come from the dataset's columns."""

    row: int
    id: Any
    source: str | None
    score: float
    step: int | None
    prompt: str
    chosen: str
    rejected: str


class StepEntry(TypedDict, total=False):
    """A training step (batch): its rows' mean score, how many of them are in the global top, and the
    hypergeometric p-value of that count."""

    step: int
    score: float
    n_rows: int
    n_top: int
    p_value: float


class SourceEntry(TypedDict, total=False):
    """A data source: ``score`` is the share of its rows in the global top (``share_in_top`` too)."""

    source: str
    score: float
    share_in_top: float
    n_rows: int
    n_top: int
    mean_score: float
    lift: float
    p_value: float


class LinkEntry(TypedDict):
    """A learning pattern linked to an emergent cluster: by shared words, or its rows among the cluster's top rows."""

    pattern: str
    found_by: str
    shared_words: list[str]
    pattern_p_value: float
    direction_agreement: float | None


class _BehaviourCore(TypedDict):
    name: str
    kind: Kind
    flagged_at_step: int | None
    level: Level | None
    p_value: float | None
    threshold: float | None
    score_history: list[list[float]]
    top_rows: list[RowEntry]
    top_steps: list[StepEntry]
    top_sources: list[SourceEntry]
    samples: list[dict[str, str]]


class BehaviourEntry(_BehaviourCore, total=False):
    """One behaviour in the report: the DESIGN contract's keys (always there), then what its kind adds.

    ``score_history``: ``[step, score]`` pairs; ``samples``: ``{"prompt", "before", "after"}`` answers.
    Attribution adds ``ranking_p_value``, ``attribution_p_value`` and ``blame_null_p_value``; a supervised
    behaviour ``probe_accuracy`` and ``metrics_history``; an emergent cluster ``label``, ``members`` (watched
    prompt indices), ``links`` and ``rows_from``; a learning pattern ``words``, ``found_by``, ``pattern``
    and ``confirmation``; both ``lesson``: what the rows' chosen answers say where they leave the rejected
    ones (``{"text", "rows", "of"}``: how many of its best rows say it).
    """

    ranking_p_value: float
    attribution_p_value: float
    blame_null_p_value: float
    probe_accuracy: float
    metrics_history: list[dict[str, Any]]
    label: str
    members: list[int]
    links: list[LinkEntry]
    rows_from: str
    words: list[str]
    found_by: Literal["learning record"]
    pattern: dict[str, Any]
    confirmation: dict[str, Any]
    lesson: dict[str, Any] | None


class ClusterEntry(TypedDict, total=False):
    """An emergent cluster of watched prompts (``prompts``: their indices)."""

    id: int
    size: int
    first_step: int
    significant: bool
    p_value: float
    drift: float
    tokens: list[str]
    prompts: list[int]
    samples: list[dict[str, str]]


class _ReportCore(TypedDict):
    paused_at_step: int | None
    checkpoint: str | None
    behaviours: list[BehaviourEntry]


class Report(_ReportCore, total=False):
    """``report.json``: the DESIGN contract's keys (always there), then the rest a run writes.

    ``cost``: the probes' cost (``Cadence.summary``); ``store``: ``{"rows", "dim"}``; ``failures``: stages of
    ours that failed (``{"step", "stage", "error"}``); ``not_recorded``: writes that failed.
    """

    version: int
    last_step: int
    trained_to_step: int
    layers: list[int]
    every_n_steps: int | None
    clusters: list[ClusterEntry]
    drift_map: dict[str, Any] | None
    prompt_drift: list[dict[str, Any]]
    learning: dict[str, Any] | None
    failures: list[dict[str, Any]]
    not_recorded: list[dict[str, Any]]
    store: dict[str, int | None]
    cost: dict[str, Any]


def jsonable(obj: Any) -> Any:
    """`obj` with numpy values, tuples and paths made JSON-safe and non-finite floats as None.

    Example:
        >>> jsonable({"a": (1, float("nan")), 2: Path("x")})
        {'a': [1, None], '2': 'x'}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_report(report: Report | dict[str, Any], output_dir: Path) -> Path:
    """Atomically write `report` as `output_dir/report.json`; returns its path."""
    text = json.dumps(jsonable(report), indent=1, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(Path(output_dir) / REPORT_NAME, text + "\n")


def load_report(path_or_dir: str | Path) -> Report:
    """Read a report from `report.json` or from the folder that holds it (JSON only).

    Example:
        >>> load_report("/nonexistent")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no report at /nonexistent/report.json: pass the output_dir or its report.json
    """
    path = Path(path_or_dir)
    if path.is_dir() or not path.suffix:
        path = path / REPORT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no report at {path}: pass the output_dir or its report.json")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a probe_callback report") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise ValueError(f"{path} is not a JSON report: {e}") from None
    return check_report(report, str(path))


def check_report(report: Any, where: str = "the report") -> Report:
    """`report` when it is an object whose `behaviours` are objects (the report's shape), else a `ValueError`.

    Example:
        >>> check_report({"behaviours": [1]})
        Traceback (most recent call last):
        ...
        ValueError: the report is not a probe_callback report (expected an object with a list of 'behaviours' objects)
    """
    behaviours = report.get("behaviours", []) if isinstance(report, dict) else None
    if not isinstance(behaviours, list) or not all(isinstance(b, dict) for b in behaviours):
        raise ValueError(
            f"{where} is not a probe_callback report (expected an object with a list of 'behaviours' objects)"
        )
    return cast(Report, report)


def write_html(report: Report | dict[str, Any], output_dir: Path) -> Path:
    """Atomically write `render_html(report)` as `output_dir/report.html`; returns its path."""
    return atomic_write_text(Path(output_dir) / HTML_NAME, render_html(report))


def summary_text(report: Report | dict[str, Any]) -> str:
    """A few plain-text lines: where training paused and each behaviour's verdict.

    Example:
        >>> spam = {"name": "spam", "kind": "emergent", "flagged_at_step": 40, "level": "ERROR",
        ...         "p_value": 0.002, "top_sources": [{"source": "web"}]}
        >>> print(summary_text({"paused_at_step": 40, "behaviours": [spam]}))
        paused at step 40 (checkpoint: none)
        - spam (emergent): ERROR at step 40, p=0.002, top source web
    """
    paused = report.get("paused_at_step")
    last = report.get("trained_to_step", report.get("last_step"))
    head = f"paused at step {paused}" if paused is not None else f"not paused (last step {last})"
    lines = [f"{head} (checkpoint: {report.get('checkpoint') or 'none'})"]
    lines += [probes_text(report)] if report.get("cost") else []
    lines += [
        f"not recorded: {f['what']} from step {f['from_step']} ({f['error']})" for f in report.get("not_recorded") or []
    ]
    for b in report.get("behaviours") or []:
        verdict = b.get("level") or "ok"
        if b.get("flagged_at_step") is not None:
            verdict += f" at step {b['flagged_at_step']}"
        if b.get("p_value") is not None:
            verdict += f", p={number_text(b['p_value'])}"
        if b.get("top_sources"):
            verdict += f", top source {source_text(b['top_sources'][0])}"
        said = b.get("lesson") or {}
        if said.get("text"):
            verdict += f'; its rows choose "{said["text"]}" ({said.get("rows")} of {said.get("of")})'
        lines.append(f"- {b.get('name')} ({b.get('kind')}): {verdict}")
    failures = report.get("failures") or []
    if failures:
        stages = sorted({f.get("stage", "?") for f in failures})
        lines.append(f"- {len(failures)} failed stage(s) of ours (training went on): {', '.join(stages)}")
    return "\n".join(lines)


SOURCE_P = 0.01  # a flagged behaviour's top source below this p is offered to drop-source


def next_steps_text(output_dir: Path, report: Report | dict[str, Any]) -> str:
    """What to do after a pause: the report to read, the cleaning commands for what it flags, the resume call.

    The filter command removes as many rows as the flagged behaviours blame; drop-source is offered for
    each flagged behaviour's top source when its p-value is below ``SOURCE_P``.

    Example:
        >>> spam = {"flagged_at_step": 40, "top_rows": [{"row": 3, "score": 0.9}, {"row": 7, "score": 0.8}],
        ...         "top_sources": [{"source": "web", "p_value": 1e-9}]}
        >>> text = next_steps_text(Path("out"), {"paused_at_step": 40, "checkpoint": "c-40", "behaviours": [spam]})
        >>> print(text.splitlines()[2].split("--dataset TRAIN.jsonl ")[1])
        --action filter --top-k 2 -o cleaned.jsonl    (the 2 rows it blames)
        >>> print(text.splitlines()[3].split("--dataset TRAIN.jsonl ")[1])
        --action drop-source --source web -o cleaned.jsonl    (every row of the blamed source)
    """
    flagged = [b for b in report.get("behaviours") or [] if b.get("flagged_at_step") is not None]
    rows = {r.get("row") for b in flagged for r in b.get("top_rows") or [] if isinstance(r.get("score"), int | float)}
    sources = sorted(
        {
            str(top["source"])
            for b in flagged
            for top in (b.get("top_sources") or [])[:1]
            if isinstance(top.get("p_value"), int | float) and top["p_value"] < SOURCE_P
        }
    )
    command = f"probe-callback mitigate --report {output_dir / REPORT_NAME} --dataset TRAIN.jsonl"
    filter_rows = f"--action filter --top-k {len(rows)} -o cleaned.jsonl    (the {len(rows)} rows it blames)"
    commands = [f"{command} {filter_rows}"] if rows else []
    if sources:
        named = " ".join(f"--source {s}" for s in sources)
        what = "every row of the blamed source" + ("s" if len(sources) > 1 else "")
        commands.append(f"{command} --action drop-source {named} -o cleaned.jsonl    ({what})")
    checkpoint = report.get("checkpoint")
    return "\n".join(
        [
            f"Training paused at step {report.get('paused_at_step')}; checkpoint {checkpoint}.",
            f"  See {output_dir / HTML_NAME}",
            *[f"  {'Clean the data: ' if i == 0 else ' ' * 16} {c}" for i, c in enumerate(commands)],
            f"  Resume:          trainer.train(resume_from_checkpoint={checkpoint!r})",
        ]
    )


def probes_text(report: Report | dict[str, Any]) -> str:
    """How many probes ran, and why none did when none did.

    Example:
        >>> cost = {"probe_passes": 0, "every_n_steps": 10, "budget": 0.1, "skipped_for_budget": 2}
        >>> print(probes_text({"cost": cost, "trained_to_step": 25}))
        probes: 0 (every 10 steps); none ran: 2 due held back by the 10% budget (set every_n_steps to force)
    """
    cost, last = report.get("cost") or {}, report.get("trained_to_step")
    every, passes, held = cost.get("every_n_steps"), cost.get("probe_passes") or 0, cost.get("skipped_for_budget") or 0
    text = f"probes: {passes} (every {every} steps)"
    if held and passes:
        text += f", {held} held back by the budget"
    elif held:
        budget = cost.get("budget") or 0
        text += f"; none ran: {held} due held back by the {budget:.0%} budget (set every_n_steps to force)"
    elif not passes and every and last is not None and last < every:
        text += f"; none ran: training stopped at step {last}, before the first probe step {every}"
    return text
