"""The load-test report is one self-contained HTML file whose charts really draw: rendered
by headless Chromium with the network cut off, each chart's own colours are on screen."""

from __future__ import annotations

import re

from chatbot_loadtest import report
from tests.load.chromium import colour_counts, missing_colours, screenshot

# What the load run must have drawn: its answers (200) and 429s, both histograms, the
# sizes, users answered directly and after a retry, throughput of both personas.
CHART_COLOURS = {
    "timeline 200": report.STATUS_COLOURS[200], "timeline 429": report.STATUS_COLOURS[429],
    "response-time histogram": report.RESPONSE_HIST,
    "processing-time histogram": report.PROCESS_HIST, "size histogram": report.SIZE_HIST,
    "pie: direct": report.OUTCOME_COLOURS["direct success"],
    "pie: after retry": report.OUTCOME_COLOURS["success after retry"],
    "throughput office": report.PERSONA_COLOURS["office"],
    "throughput character": report.PERSONA_COLOURS["character"],
}
MIN_PIXELS = 40  # a few scatter markers; bars and pie slices cover thousands


def test_the_report_is_one_file_that_needs_no_network(load_run):
    html = (load_run.out / "report.html").read_text()
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=", html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is inlined
    for section in ("Response time over time", "Outcome per simulated user", "Percentiles",
                    "Throughput", "Failed and retried requests"):
        assert section in html


def test_every_chart_is_drawn_in_headless_chromium(load_run, tmp_path):
    png = screenshot(load_run.out / "report.html", tmp_path / "report.png")
    counts = colour_counts(png)
    assert missing_colours(counts, CHART_COLOURS, MIN_PIXELS) == {}
    assert len([c for c, n in counts.items() if n >= 20]) >= 30  # axes, labels, text, charts


def test_the_check_fails_when_the_charts_are_not_drawn(load_run, tmp_path):
    """Control: the same page without plotly.js keeps its tables but draws no chart."""
    html = (load_run.out / "report.html").read_text()
    head, body = html.split("</head>", 1)
    stripped = tmp_path / "no-plotly.html"
    stripped.write_text(re.sub(r"<script>.*?</script>", "", head, flags=re.S) + "</head>"
                        + body)
    counts = colour_counts(screenshot(stripped, tmp_path / "no-plotly.png"))
    assert set(missing_colours(counts, CHART_COLOURS, MIN_PIXELS)) == set(CHART_COLOURS)
