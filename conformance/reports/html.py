"""One self-contained HTML file: inline CSS, no scripts, no external assets, so it opens anywhere,
offline. Summarised by role and requirement area, with the evidence of each test folded away."""

from __future__ import annotations

from collections import defaultdict
from html import escape

from conformance.model import Outcome, TestResult
from conformance.reports.json_report import verdict
from conformance.runner import RunResult

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#212b32;background:#f0f4f5}
header{background:#005eb8;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.9}main{padding:20px 32px;max-width:1200px}
.verdict{display:inline-block;padding:6px 14px;border-radius:4px;font-weight:700;font-size:17px;margin-right:10px}
.v-pass{background:#007f3b;color:#fff}.v-fail{background:#d5281b;color:#fff}.v-incomplete{background:#ffb81c;color:#212b32}
table{border-collapse:collapse;width:100%;background:#fff;margin:12px 0 22px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d8dde0;vertical-align:top}
th{background:#e8edee;font-weight:600}
.o{font-weight:700;text-transform:uppercase;font-size:12px;padding:2px 6px;border-radius:3px;white-space:nowrap}
.o-pass{background:#007f3b;color:#fff}.o-fail{background:#d5281b;color:#fff}.o-error{background:#7c2855;color:#fff}
.o-skip{background:#aeb7bd;color:#212b32}.o-waived{background:#ffb81c;color:#212b32}
details{background:#fff;margin:6px 0;border-left:4px solid #aeb7bd;padding:6px 12px}
details.fail,details.error{border-color:#d5281b}details.pass{border-color:#007f3b}
summary{cursor:pointer}code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{white-space:pre-wrap;word-break:break-all;background:#f7f9fa;padding:8px;margin:4px 0;
max-height:340px;overflow:auto}
.req{color:#4c6272;font-size:13px}.msg{color:#d5281b;margin:4px 0}
"""


def _badge(result: TestResult) -> str:
    if result.waiver and result.outcome in (Outcome.FAIL, Outcome.ERROR):
        return '<span class="o o-waived">waived</span>'
    return f'<span class="o o-{result.outcome.value}">{result.outcome.value}</span>'


def _summary_table(run: RunResult) -> str:
    areas: dict[str, list[TestResult]] = defaultdict(list)
    for result in run.results:
        areas[result.definition.area].append(result)
    rows = []
    for area, results in areas.items():
        counts = {o: sum(1 for r in results if r.outcome is o) for o in Outcome}
        rows.append(
            f"<tr><td><b>{escape(area)}</b></td><td>{escape(results[0].definition.requirement.source)}</td>"
            + "".join(f"<td>{counts[o]}</td>" for o in Outcome)
            + "</tr>"
        )
    head = "".join(f"<th>{o.value}</th>" for o in Outcome)
    return f"<table><tr><th>area</th><th>requirement source</th>{head}</tr>{''.join(rows)}</table>"


def _test_detail(result: TestResult) -> str:
    definition = result.definition
    parts = [
        f'<details class="{result.outcome.value}"><summary>{_badge(result)} <b>{escape(definition.id)}</b> '
        f"{escape(definition.title)}{' <i>(optional)</i>' if definition.optional else ''}</summary>",
        f'<p class="req">Requirement: {escape(str(definition.requirement))}</p>',
    ]
    if result.message:
        parts.append(f'<p class="msg">{escape(result.message)}</p>')
    if result.waiver:
        parts.append(f"<p>Waived: {escape(result.waiver)}</p>")
    parts += [f"<pre>{escape(note)}</pre>" for note in result.evidence.notes]
    for exchange in result.evidence.exchanges:
        response = (
            f"HTTP {exchange.status}"
            if exchange.status is not None
            else "answered"
            if exchange.response_body
            else "no answer"
        )
        headers = "\n".join(f"{k}: {v}" for k, v in exchange.response_headers.items())
        parts.append(
            f"<p><code>{escape(exchange.direction)}: {escape(exchange.method)} {escape(exchange.url)} → "
            f"{escape(response)}</code></p>"
            f"<pre>{escape(exchange.request_body) or '(no body)'}</pre>"
            f"<pre>{escape(headers)}\n\n{escape(exchange.response_body) or '(no body)'}"
            f"{escape(exchange.error or '')}</pre>"
        )
    parts.append("</details>")
    return "".join(parts)


def render_html(run: RunResult) -> str:
    outcome = verdict(run)
    counts = ", ".join(f"{run.count(o)} {o.value}" for o in Outcome)
    waived = sum(1 for r in run.results if r.waiver)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>Conformance report: {escape(run.role.value)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>Homecare gateway conformance: {escape(run.role.value)} role</h1>"
        f"<p>Target {escape(run.target)} · suite {escape(run.suite_version)} · "
        f"{escape(run.started.strftime('%Y-%m-%d %H:%M:%S UTC'))}</p></header><main>"
        f'<p><span class="verdict v-{outcome}">{outcome.upper()}</span>{len(run.results)} tests: {counts}'
        f"{f', {waived} waived' if waived else ''}</p>"
        f"<h2>By requirement area</h2>{_summary_table(run)}"
        f"<h2>Tests</h2>{''.join(_test_detail(r) for r in run.results)}"
        "</main></body></html>\n"
    )
