"""TENANCY: another trust's and another provider's data are invisible on every route, and answer
exactly as missing data does (so existence does not leak)."""

from __future__ import annotations

from conformance.checks import expect, expect_refusal, expect_status, json_body
from conformance.messages import NHS_NUMBER_SYSTEM, PRESCRIPTION_ID_SYSTEM
from conformance.model import Evidence, Requirement, Role, conformance_test
from conformance.roles.gateway.context import GatewayRun

ROLE = Role.GATEWAY
TENANCY = "DESIGN.md §6, README Tenancy"
MISSING_ID = "0c0c0c0c-0000-4000-8000-000000000000"


def _owned_paths(run: GatewayRun) -> tuple[list[str], list[str]]:
    """Trust A's resources by path, and the same routes with an id that exists nowhere."""
    order, response = run.accepted_order("tenancy", items=2)
    tasks = run.tasks("trust_a", order)
    expect(len(tasks) == 2, "trust A cannot see its own two Tasks")
    task_id = str(tasks[0]["id"])
    mr_ref = str(tasks[0].get("focus", {}).get("reference", f"MedicationRequest/{task_id}"))
    paths = [
        response.headers.get("location", ""),
        f"/fhir/{mr_ref}",
        f"/fhir/Task/{task_id}",
        f"/fhir/Task/{task_id}/_history",
    ]
    missing = [
        f"/fhir/Bundle/{MISSING_ID}",
        f"/fhir/MedicationRequest/{MISSING_ID}",
        f"/fhir/Task/{MISSING_ID}",
        f"/fhir/Task/{MISSING_ID}/_history",
    ]
    return [p for p in paths if p], missing


@conformance_test(
    "TENANCY-01",
    "Another trust cannot read a trust's Bundle, MedicationRequest, Task or history: 404 as for a missing id",
    Requirement(
        TENANCY, "another tenant's resource answers 404 with the same OperationOutcome as a missing one"
    ),
    role=ROLE,
)
def other_trust_reads(run: GatewayRun, evidence: Evidence) -> None:
    paths, missing = _owned_paths(run)
    for path in paths:
        expect_status(run.http.get(path, headers=run.auth("trust_a")), 200)
    for path, absent in zip(paths, missing, strict=False):
        theirs = run.http.get(path, headers=run.auth("trust_b"))
        expect_refusal(theirs, 404, "not-found")
        nowhere = run.http.get(absent, headers=run.auth("trust_b"))
        expect(
            json_body(theirs).get("issue", [{}])[0].get("code")
            == json_body(nowhere).get("issue", [{}])[0].get("code"),
            f"{path}: another trust's resource answers differently from a missing one",
        )


@conformance_test(
    "TENANCY-02",
    "Another trust's searches never return a trust's Tasks (by prescription ID, by patient)",
    Requirement(TENANCY, "searches use the same tenancy filter as reads"),
    role=ROLE,
)
def other_trust_searches(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("tenancy", items=2)
    expect(run.tasks("trust_b", order) == [], "trust B found trust A's Tasks by prescription ID")
    by_patient = run.http.post(
        "/fhir/Task/_search",
        data={"patient:identifier": f"{NHS_NUMBER_SYSTEM}|{order.nhs_number}"},
        headers=run.auth("trust_b"),
    )
    expect_status(by_patient, 200)
    expect(json_body(by_patient).get("entry", []) == [], "trust B found trust A's Tasks by NHS number")
    everything = run.http.get("/fhir/Task", params={"_count": "200"}, headers=run.auth("trust_b"))
    expect_status(everything, 200)
    leaked = [e for e in json_body(everything).get("entry", []) if order.short_form_id in str(e)]
    expect(leaked == [], "trust B's unfiltered Task search returned trust A's Tasks")


@conformance_test(
    "TENANCY-03",
    "Another trust cannot cancel a trust's prescription: 404",
    Requirement(TENANCY, "a trust reads and cancels only its own prescriptions"),
    role=ROLE,
)
def other_trust_cancels(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("tenancy", items=2)
    cancel = run.builder("trust_a").cancellation(order)
    cancel.header()["sender"]["identifier"]["value"] = run.client("trust_b").ods
    cancel.bundle["entry"][-1]["resource"]["partOf"]["identifier"]["value"] = run.client("trust_b").ods
    expect_refusal(run.send("trust_b", cancel), 404, "not-found")
    statuses = {
        t.get("businessStatus", {}).get("coding", [{}])[0].get("code") for t in run.tasks("trust_a", order)
    }
    expect(
        not statuses & {"cancel-requested", "cancelled"},
        "another trust's cancellation touched the prescription",
    )


@conformance_test(
    "TENANCY-04",
    "Another provider cannot see a provider's Tasks",
    Requirement(TENANCY, "a provider sees only what was routed to it"),
    role=ROLE,
)
def other_provider_reads(run: GatewayRun, evidence: Evidence) -> None:
    order, _ = run.accepted_order("tenancy", items=2)
    task_id = str(run.tasks("trust_a", order)[0]["id"])
    expect_status(run.http.get(f"/fhir/Task/{task_id}", headers=run.auth("provider")), 200)
    expect_refusal(run.http.get(f"/fhir/Task/{task_id}", headers=run.auth("provider_b")), 404, "not-found")
    expect(run.tasks("provider_b", order) == [], "provider B found provider A's Tasks by prescription ID")
    search = run.http.get(
        "/fhir/Task",
        params={"based-on:identifier": f"{PRESCRIPTION_ID_SYSTEM}|{order.short_form_id}"},
        headers=run.auth("provider_b"),
    )
    expect(json_body(search).get("entry", []) == [], "provider B's search returned provider A's Tasks")
