"""The report as one self-contained HTML page: inline CSS and SVG charts, no script, no network.

Every piece of dataset text is passed through ``html.escape``.

Example:
    >>> page = render_html({"paused_at_step": None, "behaviours": [{"name": "<b>", "kind": "emergent"}]})
    >>> page.startswith("<!doctype html>"), "&lt;b&gt;" in page, "<script" in page
    (True, True, False)
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..capture.text import to_text

if TYPE_CHECKING:
    from .report import BehaviourEntry, Report

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]
NOISE_COLOUR = "#b8b8b8"
# A ranked row's fields as tables show them (here and in W&B), each with how the page shows it:
# "n" a number, "s" short text, "t" long text.
ROW_COLUMNS = [
    ("row", "n"),
    ("id", "s"),
    ("source", "s"),
    ("step", "n"),
    ("score", "n"),
    ("prompt", "t"),
    ("chosen", "t"),
    ("rejected", "t"),
]
LEVEL_COLOUR = {"ERROR": "#c0392b", "WARN": "#d68910", "INFO": "#2e86c1"}


_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;
color:#1f2328}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:0 0 12px}
h3{font-size:14px;margin:16px 0 6px;color:#444}
.card{background:#fff;border:1px solid #d8dde3;border-radius:8px;padding:16px 20px;margin:16px 0}
.meta{color:#57606a}.meta b{color:#1f2328}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e6e9ed;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}th.n{text-align:right}td.s{white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.txt{max-height:7.5em;overflow:auto;white-space:pre-wrap;word-break:break-word;max-width:340px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.ok{background:#6e7781}.kind{color:#57606a;font-size:12px}
.row2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.bar{background:#e15759;height:8px;border-radius:4px;display:inline-block;vertical-align:middle}
svg{max-width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#57606a}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:middle}
.empty{color:#8c959f;font-style:italic}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def number_text(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–" if value is None else _e(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else "–"


def _badge(level: str | None) -> str:
    if not level:
        return '<span class="badge ok">ok</span>'
    return f'<span class="badge" style="background:{LEVEL_COLOUR.get(level, "#6e7781")}">{_e(level)}</span>'


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], empty: str) -> str:
    """Columns are (key, kind) with kind "n" (number), "t" (long text) or "s" (short text)."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f'<th class="{kind}">{_e(key)}</th>' for key, kind in columns)
    body = []
    for row in rows:
        cells = []
        for key, kind in columns:
            value = row.get(key)
            if kind == "n":
                cells.append(f'<td class="n">{number_text(value)}</td>')
            elif kind == "t":
                cells.append(f'<td><div class="txt">{_e(to_text(value))}</div></td>')
            else:
                cells.append(f'<td class="s">{_e(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def svg_line_chart(
    points: Sequence[Sequence[float]],
    threshold: float | None = None,
    flagged_step: int | None = None,
    width: int = 520,
    height: int = 220,
) -> str:
    """An inline SVG line chart of `[[step, score], ...]` with a dashed threshold and the flagged step.

    Example:
        >>> svg_line_chart([[0, 0.0], [10, 0.4]], threshold=0.2, flagged_step=10).startswith("<svg")
        True
    """
    pts = [(float(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    if not pts:
        return '<p class="empty">no score history</p>'
    left, right, top, bottom = 48, width - 12, 12, height - 28
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + ([threshold] if threshold is not None and math.isfinite(threshold) else [])
    ylo, yhi = min(ys + [0.0]), max(ys)
    pad = (yhi - ylo) * 0.08 or 0.1
    ylo, yhi = ylo - pad, yhi + pad
    fx, fy = _scale(min(xs), max(xs), left, right), _scale(ylo, yhi, bottom, top)
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fbfcfd"/>')
    for i in range(5):
        yv = ylo + (yhi - ylo) * i / 4
        y = fy(yv)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eceff2"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{yv:.2g}</text>')
    for xv in sorted({min(xs), max(xs), xs[len(xs) // 2]}):
        out.append(f'<text x="{fx(xv):.1f}" y="{bottom + 16}" text-anchor="middle">{xv:g}</text>')
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 1}" text-anchor="middle">step</text>')
    if threshold is not None and math.isfinite(threshold):
        y = fy(threshold)
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" '
            'stroke-dasharray="5 4"/>'
            f'<text x="{right - 4}" y="{y - 4:.1f}" text-anchor="end" style="fill:#c0392b">threshold</text>'
        )
    if flagged_step is not None:
        x = fx(float(flagged_step))
        side = (x - 4, "end") if x > (left + right) / 2 else (x + 4, "start")
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#c0392b" stroke-width="1.5"/>'
            f'<text x="{side[0]:.1f}" y="{top + 12}" text-anchor="{side[1]}" style="fill:#c0392b">'
            f"flagged at {flagged_step}</text>"
        )
    path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
    out.append(f'<polyline points="{path}" fill="none" stroke="#4e79a7" stroke-width="2"/>')
    for x, y in pts:
        out.append(
            f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="#4e79a7">'
            f"<title>step {x:g}: {y:.4g}</title></circle>"
        )
    out.append("</svg>")
    return "".join(out)


def cluster_colour(label: int) -> str:
    """The colour of cluster `label` (-1, HDBSCAN's noise, is grey)."""
    return NOISE_COLOUR if label < 0 else PALETTE[label % len(PALETTE)]


def svg_scatter(
    points: Sequence[Sequence[float]],
    labels: Sequence[int],
    prompts: Sequence[str] = (),
    width: int = 560,
    height: int = 380,
) -> str:
    """An inline SVG scatter of 2-D points coloured by cluster label, prompts as hover titles.

    Example:
        >>> "<circle" in svg_scatter([[0, 0], [1, 1]], [0, -1], ["a", "<b>"])
        True
    """
    if len(points) == 0:
        return '<p class="empty">no drift points</p>'
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    m = 16
    fx, fy = _scale(min(xs), max(xs), m, width - m), _scale(min(ys), max(ys), height - m, m)
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    out.append(f'<rect width="{width}" height="{height}" fill="#fbfcfd" stroke="#e6e9ed"/>')
    order = sorted(range(len(xs)), key=lambda i: int(labels[i]) >= 0)  # noise underneath clusters
    for i in order:
        label = int(labels[i])
        tip = f"cluster {label}" if label >= 0 else "noise"
        if i < len(prompts):
            tip += f": {prompts[i]}"
        out.append(
            f'<circle cx="{fx(xs[i]):.1f}" cy="{fy(ys[i]):.1f}" r="5" fill="{cluster_colour(label)}" '
            f'fill-opacity="0.85" stroke="#fff"><title>{_e(tip)}</title></circle>'
        )
    out.append("</svg>")
    legend = "".join(
        f'<span><i class="sw" style="background:{cluster_colour(lab)}"></i>'
        f"{'noise' if lab < 0 else f'cluster {lab}'}</span>"
        for lab in sorted({int(v) for v in labels})
    )
    return "".join(out) + f'<div class="legend">{legend}</div>'


def _samples(samples: Sequence[dict[str, Any]]) -> str:
    return _table([("prompt", "t"), ("before", "t"), ("after", "t")], list(samples), "no before/after samples")


def _behaviour(b: BehaviourEntry | dict[str, Any]) -> str:
    name = b.get("name", "?")
    meta = [
        f"flagged at step <b>{number_text(b.get('flagged_at_step'))}</b>",
        f"p-value <b>{number_text(b.get('p_value'))}</b>",
        f"threshold <b>{number_text(b.get('threshold'))}</b>",
    ]
    if b.get("label"):
        meta.insert(0, f"label <b>{_e(b['label'])}</b>")
    if b.get("probe_accuracy") is not None:
        meta.append(f"probe accuracy <b>{number_text(b.get('probe_accuracy'))}</b>")
    if b.get("words"):
        meta.append(f"learned words <b>{_e(', '.join(map(str, b['words'][:8])))}</b>")
    said = b.get("lesson") or {}
    if said.get("text"):
        rows = f"{number_text(said.get('rows'))} of {number_text(said.get('of'))} of its best rows"
        meta.append(f"{rows} choose <b>&ldquo;{_e(said['text'])}&rdquo;</b>")
    confirmation = b.get("confirmation") or {}
    if confirmation:
        count, changed, step, p = (number_text(confirmation.get(k)) for k in ("count", "changed", "step", "p_value"))
        meta.append(f"gained on <b>{count}</b> of {changed} changed answers outside it at step {step} (p {p})")
    for link in b.get("links") or []:
        meta.append(f"linked to <b>{_e(link.get('pattern'))}</b> by {_e(_link_text(link))}")
    sources = [dict(s, share=_share_bar(s.get("share_in_top"))) for s in b.get("top_sources") or []]
    steps = _table([("step", "n"), ("score", "n")], b.get("top_steps") or [], "no steps ranked")
    rows = _table(ROW_COLUMNS, b.get("top_rows") or [], "no rows ranked")
    return f"""<section class="card" id="b-{_e(name)}">
<h2>{_e(name)} <span class="kind">{_e(b.get("kind"))}</span> {_badge(b.get("level"))}</h2>
<p class="meta">{" · ".join(meta)}</p>
<div class="row2"><div><h3>Score history</h3>
{svg_line_chart(b.get("score_history") or [], b.get("threshold"), b.get("flagged_at_step"))}</div>
<div><h3>Top sources</h3>{_raw_table(sources)}
<h3>Top steps</h3>{steps}</div></div>
<h3>Top rows</h3>
{rows}
<h3>Before / after</h3>{_samples(b.get("samples") or [])}
</section>"""


def _share_bar(share: Any) -> str:
    if not isinstance(share, (int, float)) or not math.isfinite(share):
        return "–"
    width = max(0.0, min(1.0, float(share))) * 80
    return f'<span class="bar" style="width:{width:.0f}px"></span> {share:.0%}'


def _raw_table(sources: Sequence[dict[str, Any]]) -> str:
    """Top sources: escaped text cells plus the pre-built (trusted) share bar."""
    if not sources:
        return '<p class="empty">no sources ranked</p>'
    rows = "".join(
        f"<tr><td>{_e(s.get('source'))}</td><td class='n'>{number_text(s.get('score'))}</td>"
        f"<td>{s['share']}</td><td class='n'>{number_text(s.get('n_rows'))}</td></tr>"
        for s in sources
    )
    head = '<th>source</th><th class="n">score</th><th>share of top rows</th><th class="n">rows</th>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _overview(report: Report | dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td><a href="#b-{_e(b.get("name"))}">{_e(b.get("name"))}</a></td><td>{_e(b.get("kind"))}</td>'
        f"<td>{_badge(b.get('level'))}</td><td class='n'>{number_text(b.get('flagged_at_step'))}</td>"
        f"<td class='n'>{number_text(b.get('p_value'))}</td><td>{_e(_top_source(b))}</td></tr>"
        for b in report.get("behaviours") or []
    )
    if not rows:
        return '<p class="empty">no behaviours watched</p>'
    return (
        "<table><thead><tr><th>behaviour</th><th>kind</th><th>level</th><th class='n'>flagged at step</th>"
        f"<th class='n'>p-value</th><th>top source</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _top_source(b: BehaviourEntry | dict[str, Any]) -> str | None:
    sources = b.get("top_sources") or []
    return sources[0].get("source") if sources else None


def _link_text(link: Mapping[str, Any]) -> str:
    """How a pattern is linked to a cluster: the words they share, or its rows among the cluster's top rows."""
    if link.get("shared_words"):
        return ", ".join(map(str, link["shared_words"]))
    return f"its rows: {number_text(link.get('direction_agreement'))} of the cluster's top rows"


def _learning(report: Report | dict[str, Any]) -> str:
    learning = report.get("learning") or {}
    patterns = [
        {
            **g,
            "words": ", ".join(map(str, g.get("words") or [])),
            "sources": ", ".join(f"{k} ({v})" for k, v in (g.get("sources") or {}).items()),
        }
        for g in learning.get("patterns") or []
    ]
    if not patterns:
        return ""
    columns = [("name", "t"), ("found_by", "t"), ("words", "t"), ("lesson", "t"), ("n_rows", "n"), ("excess_rise", "n")]
    columns += [("p_value", "n"), ("sources", "t")]
    return (
        f'<section class="card"><h2>What is being learned</h2><p class="meta">patterns of the learning record at '
        f"step <b>{number_text(learning.get('step'))}</b>: rows whose learning peaks on the same words, or whose "
        f"datapoint vectors cluster, against random rows of the same steps</p>"
        f"{_table(columns, patterns, 'no patterns')}</section>"
    )


def _drift(report: Report | dict[str, Any]) -> str:
    drift = report.get("drift_map")
    clusters = report.get("clusters") or []
    if not drift and not clusters:
        return ""
    parts = ['<section class="card"><h2>Drift map and emergent clusters</h2>']
    if drift:
        parts.append(f'<p class="meta">behaviour-change vectors at step <b>{number_text(drift.get("step"))}</b></p>')
        parts.append(svg_scatter(drift.get("points") or [], drift.get("labels") or [], drift.get("prompts") or []))
    for c in clusters:
        label = int(c.get("id", -1))
        prompts = "".join(f"<li>{_e(p)}</li>" for p in c.get("prompts") or [])
        parts.append(
            f'<h3><i class="sw" style="background:{cluster_colour(label)}"></i>cluster {_e(c.get("id"))} · '
            f"{number_text(c.get('size'))} prompts · first seen at step {number_text(c.get('first_step'))}</h3>"
            f"<ul>{prompts}</ul>{_samples(c.get('samples') or [])}"
        )
    parts.append("</section>")
    return "".join(parts)


def render_html(report: Report | dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, all text escaped)."""
    paused = report.get("paused_at_step")
    status = (
        f"{_badge('ERROR')} training paused at step <b>{number_text(paused)}</b>"
        if paused is not None
        else f"{_badge(None)} training not paused (last step <b>{number_text(report.get('last_step'))}</b>)"
    )
    store = report.get("store") or {}
    meta = (
        f"checkpoint <b>{_e(report.get('checkpoint') or 'none')}</b> · layers <b>"
        f"{_e(', '.join(str(x) for x in report.get('layers') or []) or '–')}</b> · stored rows "
        f"<b>{number_text(store.get('rows'))}</b> (dim {number_text(store.get('dim'))})"
    )
    body = "".join(_behaviour(b) for b in report.get("behaviours") or [])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>probe_callback report</title><style>{_CSS}</style></head>
<body><main>
<section class="card"><h1>probe_callback report</h1><p>{status}</p><p class="meta">{meta}</p>
{_overview(report)}</section>
{body}{_learning(report)}{_drift(report)}
</main></body></html>
"""
