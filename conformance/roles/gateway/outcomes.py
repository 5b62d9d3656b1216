"""META, OO and PHI: the CapabilityStatement, the shape of every error the run provoked, and no
patient data in a Location or any URL the gateway hands out."""

from __future__ import annotations

import json
from urllib.parse import quote

from conformance.checks import expect, expect_refusal, expect_status, json_body, outcome_shape_problems
from conformance.messages import NHS_NUMBER_SYSTEM
from conformance.model import Evidence, Requirement, Role, conformance_test
from conformance.roles.gateway.context import FHIR_JSON, PROCESS_MESSAGE, GatewayRun

ROLE = Role.GATEWAY


@conformance_test(
    "META-01",
    "GET /fhir/metadata is public and names FHIR 4.0.1, Task and $process-message",
    Requirement("FHIR R4 capabilities / DESIGN.md §6", "the CapabilityStatement is public"),
    role=ROLE,
)
def capability(run: GatewayRun, evidence: Evidence) -> None:
    response = run.http.get("/fhir/metadata")
    expect_status(response, 200)
    document = json_body(response)
    expect(document.get("resourceType") == "CapabilityStatement", "not a CapabilityStatement")
    expect(
        document.get("fhirVersion") == "4.0.1", f"fhirVersion is {document.get('fhirVersion')!r}, not 4.0.1"
    )
    text = json.dumps(document)
    expect('"Task"' in text, "the CapabilityStatement does not list Task")
    expect("process-message" in text, "the CapabilityStatement does not list $process-message")


def _provoke_errors(run: GatewayRun) -> None:
    """A few refusals of each kind, so the OperationOutcome checks have something to look at."""
    run.http.get("/fhir/Task/0c0c0c0c-0000-4000-8000-00000000dead", headers=run.auth("trust_a"))
    run.http.get("/fhir/Task")
    run.http.post(PROCESS_MESSAGE, content=b"{", headers={**FHIR_JSON, **run.auth("trust_a")})
    run.http.get("/fhir/Task", params={"unknown-parameter": "1"}, headers=run.auth("trust_a"))


@conformance_test(
    "OO-01",
    "Every FHIR error the run provoked is an OperationOutcome: severity, a FHIR IssueType code, no stack trace",
    Requirement(
        "FHIR R4 OperationOutcome / DESIGN.md §3", "severity, code, details, diagnostics, expression"
    ),
    role=ROLE,
)
def error_shape(run: GatewayRun, evidence: Evidence) -> None:
    _provoke_errors(run)
    refusals = [
        r for r in run.http.seen if r.status_code >= 400 and r.request.url.path.startswith(("/fhir", "/FHIR"))
    ]
    evidence.note(f"{len(refusals)} FHIR refusals examined")
    for response in refusals:
        where = f"{response.request.method} {response.request.url.path} → {response.status_code}"
        expect(response.status_code < 500, f"{where}: a server error")
        expect("json" in response.headers.get("content-type", ""), f"{where}: not JSON")
        try:
            document = json.loads(response.content)
        except ValueError:
            document = None
        problems = outcome_shape_problems(document)
        expect(problems == [], f"{where}: " + "; ".join(problems))


@conformance_test(
    "OO-02",
    "An unknown parameter in a Task search is refused (400) naming the parameter",
    Requirement("README Reading and searching", "anything else is refused with the parameter named"),
    role=ROLE,
)
def unknown_parameter(run: GatewayRun, evidence: Evidence) -> None:
    response = run.http.get("/fhir/Task", params={"colour": "blue"}, headers=run.auth("trust_a"))
    issue = expect_refusal(response, 400, {"not-supported", "invalid", "value", "processing"})
    expect("colour" in json.dumps(issue), "the refusal does not name the parameter")


@conformance_test(
    "PHI-01",
    "No patient data in a Location header or any URL the gateway returns",
    Requirement("DESIGN.md §6", "never PHI in a URL or a log line"),
    role=ROLE,
)
def no_phi_in_urls(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("one-item")
    patient = order.entries("Patient")[0]
    secrets = {order.nhs_number, patient["name"][0]["family"], patient["birthDate"]}
    urls: list[str] = []
    for response in run.http.seen:
        urls += [response.headers.get(h, "") for h in ("location", "content-location")]
        if "json" in response.headers.get("content-type", ""):
            try:
                document = json.loads(response.content)
            except ValueError:
                continue
            if isinstance(document, dict):
                urls += [
                    str(link.get("url", "")) for link in document.get("link", []) if isinstance(link, dict)
                ]
    evidence.note(f"{len([u for u in urls if u])} URLs examined")
    for url in filter(None, urls):
        found = [s for s in secrets if s and s in url]
        expect(
            found == [],
            f"a URL the gateway returned carries patient data: {url.replace(found[0], '[…]') if found else ''}",
        )


@conformance_test(
    "PHI-02",
    "A Task search by NHS number in the URL is refused; the same search in a POST body works",
    Requirement(
        "DESIGN.md §4", "patient searches by NHS number only through POST /fhir/Task/_search, never in a URL"
    ),
    role=ROLE,
)
def patient_search_in_body_only(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("one-item")
    value = f"{NHS_NUMBER_SYSTEM}|{order.nhs_number}"
    in_url = run.http.get(f"/fhir/Task?patient:identifier={quote(value)}", headers=run.auth("trust_a"))
    expect(
        in_url.status_code == 400,
        f"a GET search with an NHS number answered HTTP {in_url.status_code}, not 400",
    )
    in_body = run.http.post(
        "/fhir/Task/_search", data={"patient:identifier": value}, headers=run.auth("trust_a")
    )
    expect_status(in_body, 200)
    expect(len(json_body(in_body).get("entry", [])) >= 1, "the POST search by NHS number found nothing")
    for link in json_body(in_body).get("link", []):
        expect(order.nhs_number not in str(link.get("url", "")), "a search link carries the NHS number")
