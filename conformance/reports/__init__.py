"""The three reports of a run: JUnit XML (for CI), JSON (versioned schema), one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

from conformance.reports.html import render_html
from conformance.reports.json_report import report_document, write_json
from conformance.reports.junit import render_junit
from conformance.runner import RunResult

__all__ = ["render_html", "render_junit", "report_document", "write_json", "write_reports"]


def write_reports(run: RunResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"conformance-{run.role.value}"
    json_path, junit_path, html_path = (folder / f"{stem}.{ext}" for ext in ("json", "junit.xml", "html"))
    write_json(run, json_path)
    junit_path.write_text(render_junit(run), encoding="utf-8")
    html_path.write_text(render_html(run), encoding="utf-8")
    return [json_path, junit_path, html_path]
