"""JUnit XML, as CI servers read it: one testsuite per role, one testcase per conformance test."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conformance.model import Outcome
from conformance.runner import RunResult


def render_junit(run: RunResult) -> str:
    suites = ET.Element("testsuites", name="homecare-conformance")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"homecare-conformance.{run.role.value}",
        tests=str(len(run.results)),
        failures=str(sum(1 for r in run.results if r.outcome is Outcome.FAIL and r.blocking)),
        errors=str(sum(1 for r in run.results if r.outcome is Outcome.ERROR and r.blocking)),
        skipped=str(
            sum(
                1
                for r in run.results
                if r.outcome is Outcome.SKIP or (r.outcome is not Outcome.PASS and not r.blocking)
            )
        ),
        timestamp=run.started.isoformat(),
        time=f"{(run.finished - run.started).total_seconds():.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="target", value=run.target)
    ET.SubElement(properties, "property", name="suite_version", value=run.suite_version)
    for result in run.results:
        definition = result.definition
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{run.role.value}.{definition.area}",
            name=f"{definition.id} {definition.title}",
            time=f"{result.seconds:.3f}",
        )
        if result.outcome is Outcome.PASS:
            pass
        elif not result.blocking and result.outcome is not Outcome.SKIP:
            reason = f"waived: {result.waiver}" if result.waiver else "optional test"
            ET.SubElement(case, "skipped", message=f"{result.outcome.value} ({reason}): {result.message}")
        elif result.outcome is Outcome.SKIP:
            ET.SubElement(case, "skipped", message=result.message)
        else:
            tag = "failure" if result.outcome is Outcome.FAIL else "error"
            element = ET.SubElement(case, tag, message=result.message, type=definition.id)
            element.text = f"{definition.requirement}\n{result.message}"
        ET.SubElement(case, "system-out").text = "\n".join(
            [
                *result.evidence.notes,
                *(f"{e.method} {e.url} -> {e.status}" for e in result.evidence.exchanges),
            ]
        )
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
