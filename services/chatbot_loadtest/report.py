"""The load-test report: one self-contained HTML file (plotly.js inlined, no network).

Every chart has colours of its own, so a screenshot can tell that each one was drawn.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

from chatbot_loadtest import analysis

STATUS_COLOURS = {200: "#1b9e77", 429: "#d95f02", 0: "#666666"}
CLIENT_ERROR_COLOUR, SERVER_ERROR_COLOUR = "#7570b3", "#e7298a"
RESPONSE_HIST, PROCESS_HIST, SIZE_HIST = "#1f77b4", "#17becf", "#8c564b"
OUTCOME_COLOURS = {analysis.DIRECT: "#2ca02c", analysis.AFTER_RETRY: "#ffbf00",
                   analysis.FAILED: "#d62728", analysis.CUT_OFF: "#a6a6a6"}
PERSONA_COLOURS = {"office": "#9467bd", "character": "#bcbd22"}
# The scaling chart (--prometheus): replicas, queue depth, p95; one dash per persona.
SCALING_COLOURS = {"replicas": "#0b5394", "queue": "#e69138", "p95": "#38761d"}
PERSONA_DASH = {"office": "solid", "character": "dot"}
FAILED_TABLE_LIMIT = 1000
_CONFIG = {"displaylogo": False, "responsive": True}


def status_colour(status: int) -> str:
    if status in STATUS_COLOURS:
        return STATUS_COLOURS[status]
    return SERVER_ERROR_COLOUR if status >= 500 else CLIENT_ERROR_COLOUR


def write_report(path: Path, rows: list[dict], meta: dict,
                 reconciliation: dict | None = None, scaling: dict | None = None) -> Path:
    path.write_text(build_report(rows, meta, reconciliation, scaling), encoding="utf-8")
    return path


def build_report(rows: list[dict], meta: dict, reconciliation: dict | None = None,
                 scaling: dict | None = None) -> str:
    """`rows`: typed attempts (records.read_rows); `meta`: run facts shown at the top (host,
    users, run time); `reconciliation`: per persona, `analysis.reconcile_replicas`' answer;
    `scaling`: `scaling.fetch`'s series plus "p95" (`--prometheus`)."""
    from plotly.offline import get_plotlyjs

    scaling_section = _scaling_section(scaling) if scaling else ""
    charts = [
        ("Response time over time, by status", _timeline(rows)),
        ("Response and processing time", _time_histograms(rows)),
        ("Response size", _size_histogram(rows)),
        ("Outcome per simulated user (each user counted once)", _outcome_pie(rows)),
        ("Throughput: answers per second", _throughput(rows)),
    ]
    body = [f"<h1>Load test report</h1>{_meta(meta)}",
            "<h2>Summary</h2>" + _summary(analysis.summarize(rows)),
            _reconciliation(reconciliation or {}), scaling_section, "<div class='grid'>"]
    for title, fig in charts:
        body.append(f"<section class='chart'><h2>{html.escape(title)}</h2>"
                    f"{fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG)}"
                    "</section>")
    body.append("</div>")
    body.append("<h2>Percentiles (seconds)</h2>" + _percentiles(rows))
    body.append("<h2>Failed and retried requests</h2>" + _failed_table(rows))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>ChatBot AI load test</title>"
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def _figure(**layout):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(template="plotly_white", height=380, margin=dict(l=60, r=20, t=20, b=50),
                      legend=dict(orientation="h", y=-0.2), **layout)
    return fig


def _timeline(rows: list[dict]):
    import plotly.graph_objects as go

    fig = _figure(xaxis_title="sent at (UTC)", yaxis_title="response time (s)")
    for status in sorted({r["status_code"] for r in rows}):
        mine = [r for r in rows if r["status_code"] == status]
        fig.add_trace(go.Scatter(
            x=[r["sent_at"] for r in mine], y=[r["response_time"] for r in mine],
            mode="markers", name=f"{status or 'no answer'} ({len(mine)})",
            marker=dict(color=status_colour(status), size=9),
            text=[f"{r['user_id']} try {r['retry_count'] + 1}" for r in mine]))
    return fig


def _time_histograms(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    answered = [r for r in rows if r["status_code"] == 200]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)
    fig.add_trace(go.Histogram(x=[r["response_time"] for r in answered], name="response time",
                               marker_color=RESPONSE_HIST), row=1, col=1)
    fig.add_trace(go.Histogram(
        x=[r["process_time"] for r in answered if r["process_time"] is not None],
        name="server processing time", marker_color=PROCESS_HIST), row=1, col=2)
    fig.update_xaxes(title_text="response time of 200s (s)", row=1, col=1)
    fig.update_xaxes(title_text="server processing time (s)", row=1, col=2)
    fig.update_yaxes(title_text="answers", row=1, col=1)
    fig.update_layout(template="plotly_white", height=380, showlegend=False,
                      margin=dict(l=60, r=20, t=20, b=50))
    return fig


def _size_histogram(rows: list[dict]):
    import plotly.graph_objects as go

    fig = _figure(xaxis_title="response size (bytes)", yaxis_title="attempts", showlegend=False)
    fig.add_trace(go.Histogram(x=[r["response_size"] for r in rows], marker_color=SIZE_HIST))
    return fig


def _outcome_pie(rows: list[dict]):
    import plotly.graph_objects as go

    counts = analysis.user_outcomes(rows)
    fig = _figure()
    fig.add_trace(go.Pie(
        labels=list(analysis.OUTCOMES), values=[counts[o] for o in analysis.OUTCOMES],
        marker=dict(colors=[OUTCOME_COLOURS[o] for o in analysis.OUTCOMES]),
        sort=False, textinfo="value+percent", hole=0.0))
    return fig


def _throughput(rows: list[dict]):
    import plotly.graph_objects as go

    data = analysis.throughput(rows)
    fig = _figure(barmode="stack", xaxis_title=f"seconds since start ({data['bin_s']:g} s bins)",
                  yaxis_title="answers / s")
    for persona, values in data["series"].items():
        fig.add_trace(go.Bar(x=[i * data["bin_s"] for i in range(len(values))], y=values,
                             name=persona, marker_color=PERSONA_COLOURS.get(persona)))
    return fig


def _scaling_section(scaling: dict) -> str:
    title = "<h2>Scaling: replicas, queue depth and p95 latency over time</h2>"
    if scaling.get("error"):
        return (f"<section class='chart'>{title}<p>Prometheus gave no series: "
                f"{html.escape(scaling['error'])}</p></section>")
    fig = _scaling(scaling)
    return (f"<section class='chart scaling'>{title}"
            f"{fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG)}</section>")


def _scaling(scaling: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = (("replicas", "replicas", "hv"), ("queue", "queue depth", "hv"),
              ("p95", "p95 latency (s)", "linear"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for row, (key, label, shape) in enumerate(panels, start=1):
        for persona, points in sorted((scaling.get(key) or {}).items()):
            fig.add_trace(go.Scatter(
                x=[datetime.fromtimestamp(t, UTC) for t, _ in points],
                y=[v for _, v in points], mode="lines+markers", name=f"{label}: {persona}",
                line=dict(color=SCALING_COLOURS[key], width=3, shape=shape,
                          dash=PERSONA_DASH.get(persona, "dash")),
                marker=dict(size=5)), row=row, col=1)
        fig.update_yaxes(title_text=label, rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="time (UTC)", row=3, col=1)
    fig.update_layout(template="plotly_white", height=620, margin=dict(l=60, r=20, t=20, b=50),
                      legend=dict(orientation="h", y=-0.12))
    return fig


def _percentiles(rows: list[dict]) -> str:
    head = ["persona", "measure", "count", *(f"p{p}" for p in analysis.PERCENTILES)]
    body = [[r[k] if not isinstance(r[k], float) else f"{r[k]:.3f}" for k in head]
            for r in analysis.percentile_table(rows)]
    return _table(head, [["-" if v is None else v for v in row] for row in body])


def _failed_table(rows: list[dict]) -> str:
    picked = [r for r in rows if not r["is_final_success"]]
    head = ["user_id", "test_type", "status_code", "retry_count", "retry_after_seconds",
            "response_time", "timestamp", "failure_reason", "error", "request_id"]
    note = ""
    if len(picked) > FAILED_TABLE_LIMIT:
        note = f"<p>First {FAILED_TABLE_LIMIT} of {len(picked)} rows; all are in the CSVs.</p>"
        picked = picked[:FAILED_TABLE_LIMIT]
    if not picked:
        return "<p>None: every request was answered on its first try.</p>"
    return note + _table(head, [["" if r[k] is None else r[k] for k in head] for r in picked])


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                    for row in rows)
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{cells}</tbody></table>")


def _meta(meta: dict) -> str:
    items = []
    for key, value in meta.items():
        if isinstance(value, datetime):
            value = value.isoformat(timespec="seconds")
        elif isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, default=str)
        items.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(str(value))}</dd>")
    return f"<dl>{''.join(items)}</dl>"


def _summary(summary: dict) -> str:
    head = ["persona", "attempts", "questions", "answers", "retried_429", "retried_503",
            "final_failures", "cut_off", "duration_s", "answers_per_s", "p50_s", "p95_s",
            "status_codes", "users"]
    rows = [[persona, *(_compact(facts[k]) for k in head[1:])]
            for persona, facts in summary.items()]
    return _table(head, rows)


def _reconciliation(reconciliation: dict) -> str:
    if not reconciliation:
        return ""
    head = ["persona", "replica", "checked", "client rows that reached it", "server counted",
            "match"]
    rows = []
    for persona, r in reconciliation.items():
        rows.append([persona, "all", r.get("checked"),
                     _compact(r.get("client", r.get("reason", ""))),
                     _compact(r.get("server", "")), r.get("match", "-")])
        replicas = r.get("replicas") or {}
        if len(replicas) > 1 or any(not p["checked"] for p in replicas.values()):
            for name, p in replicas.items():
                rows.append([persona, name, p["checked"], _compact(p["client"]),
                             _compact(p.get("server", p.get("reason", ""))),
                             p.get("match", "-")])
    return ("<h2>Client rows against each replica's /performance counters</h2>"
            + _table(head, rows))


def _compact(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return "-" if value is None else str(value)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
.chart { border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
h2 { font-size: 16px; margin: 4px 0 8px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 13px; }
dt { font-weight: 600; } dd { margin: 0; } pre { margin: 0; font-size: 12px; }
table { border-collapse: collapse; font-size: 12px; margin-bottom: 16px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
th { background: #f3f3f3; }
"""
