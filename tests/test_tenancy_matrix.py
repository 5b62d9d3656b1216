"""The tenancy matrix, generated from the route table: every route and verb of the real app, tried
as every foreign role and tenant against trust RBA's prescription (routed to provider VNCEL), over
real HTTP on both backends.

Foreign callers: the other trust (RBB), a provider the order was not routed to (VNFKT), a clinician
app of the other trust, and (for the pages) a clinician of the other trust signed in to the web.
For each route, `EXPECTATIONS` says how another organisation's data is asked for; a route with no
entry fails `test_every_route_has_an_expectation`, so a new route is covered or the suite says so.

What "invisible" means here: the answer about RBA's resource is the answer about a resource that
does not exist (same status and the same issues, or the same empty searchset), so neither the data
nor its existence leaks (a 403 passes only where a missing resource gets the same 403). No answer
ever carries one of the prescription's identifiers, and after every route RBA's data is as it was.
One set of data per backend, on a server of the module's own, shared by every case.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import text

from auth.identity import Role
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.settings import Settings
from gateway.store import dispenses
from gateway.store.db import Database
from gateway.store.providers import add_provider
from tests.support import (
    CLINICIAN_APP_SCOPES,
    PUBLIC_BASE_URL,
    ClientKey,
    RunningServer,
    Tenant,
    free_port,
    http_as,
    postgres_schema,
    register,
    require_postgres,
    with_test_resolver,
)
from tests.test_status_api import order, task
from tests.web.conftest import web_settings
from tests.web.support import Browser, add_people, csrf_of

FHIR = {"Content-Type": "application/fhir+json"}
API_STRANGERS = ("trust-rbb", "provider-vnfkt", "clinician-app-rbb")
WEB_STRANGER = "bob"  # a clinician of trust RBB, signed in to the pages


@dataclass(frozen=True)
class Target:
    """Trust RBA's data that nobody else may see, and how each piece is named."""

    message: dict[str, Any]
    prescription_id: str
    item_id: str
    short_form_id: str
    nhs_number: str
    subscription_id: str
    dispense_id: str
    question: str

    def secrets(self) -> tuple[str, ...]:
        return (
            self.prescription_id,
            self.item_id,
            self.short_form_id,
            self.nhs_number,
            self.subscription_id,
            self.dispense_id,
            self.question,
        )


@dataclass
class World:
    api: RunningServer
    web: RunningServer
    target: Target
    owner: httpx.Client
    callers: dict[str, httpx.Client]
    browser: Browser


# --- one world per backend -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tenants: dict[str, Tenant]
) -> Iterator[World]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'gateway.db'}")
        yield from _world(database, tmp_path_factory, tenants)
        return
    require_postgres()
    with postgres_schema() as url:
        yield from _world(Database(url), tmp_path_factory, tenants)


def _world(
    database: Database, tmp_path_factory: pytest.TempPathFactory, tenants: dict[str, Tenant]
) -> Iterator[World]:
    database.migrate()
    with database.write() as session:
        for ods in ("VNCEL", "VNFKT"):
            add_provider(
                session, ods_code=ods, name=ods, adapter="fhir-rest", settings={}, now=system_clock()
            )
    stranger_app = Tenant(
        "clinician-app-rbb", Role.CLINICIAN_APP, "RBB", CLINICIAN_APP_SCOPES, ClientKey.generate("ES384")
    )
    everyone = {**tenants, stranger_app.client_id: stranger_app}
    for tenant in everyone.values():
        register(database, tenant)
    add_people(database)
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("matrix-data"),
        public_base_url=PUBLIC_BASE_URL,
        audit_seal_seconds=0,
        kpi_fold_seconds=0,
        run_out_check_seconds=0,
        provider_cache_seconds=0,
        run_dispatcher=False,
        allow_loopback_subscribers=True,
        cancel_wait_seconds=0,
    )
    port = free_port()
    pages = web_settings(port, tmp_path_factory.mktemp("matrix-web"))
    with (
        RunningServer(with_test_resolver(create_app(settings, db=database))) as api,
        RunningServer(create_app(pages, db=database), port=port) as web,
        Browser(web.base_url) as browser,
    ):
        callers = {client_id: http_as(api, everyone[client_id]) for client_id in everyone}
        target = _targets(database, callers["trust-rba"], callers["provider-vncel"])
        browser.sign_in(WEB_STRANGER)
        yield World(api, web, target, callers["trust-rba"], callers, browser)
        for http in callers.values():
            http.close()
    database.dispose()


def _targets(database: Database, owner: httpx.Client, provider: httpx.Client) -> Target:
    """RBA's prescription (queried by its provider), its subscription and a dispense record."""
    message, (item_id,) = order(owner, items=1, seed=71)
    question = f"Confirm the dose, query {uuid.uuid4().hex[:8]}"
    for minute, status in enumerate(("accepted", "query"), start=1):
        extra = {"note": [{"text": question}]} if status == "query" else {}
        reported = provider.post(
            "/fhir/Task", content=orjson.dumps(task(message, 0, status, minute, **extra)), headers=FHIR
        )
        assert reported.status_code == 200, reported.text
    subscription = owner.post(
        "/fhir/Subscription",
        content=orjson.dumps(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "matrix",
                "criteria": "Task?owner=VNCEL",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": "https://ehr.rba.example.nhs.uk/hook",
                    "payload": "application/fhir+json",
                },
            }
        ),
        headers=FHIR,
    )
    assert subscription.status_code == 201, subscription.text
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    with database.read() as session:
        prescription_id, message_id = session.execute(
            text(
                "SELECT p.id, p.message_id FROM prescription p"
                " JOIN prescription_item i ON i.prescription_id = p.id WHERE i.id = :item"
            ),
            {"item": item_id},
        ).one()
    dispense_id = str(uuid.uuid4())
    with database.transaction() as tx:
        dispenses.add_dispense(
            tx,
            dispenses.Dispense(
                dispense_id=dispense_id,
                prescription_id=prescription_id,
                item_id=item_id,
                message_id=message_id,
                resource=orjson.dumps(
                    {"resourceType": "MedicationDispense", "id": dispense_id, "status": "completed"}
                ),
                created_at=datetime.now(UTC),
            ),
        )
    return Target(
        message=message,
        prescription_id=prescription_id,
        item_id=item_id,
        short_form_id=request["groupIdentifier"]["value"],
        nhs_number=patient["identifier"][0]["value"],
        subscription_id=subscription.json()["id"],
        dispense_id=dispense_id,
        question=question,
    )


# --- how each route asks for another organisation's data ----------------------------------------

Request = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments
Ask = Callable[[Target, str], Request]  # (the target, the caller's ODS) -> the request
"""`ask(target, ods)` asks for RBA's data; the same `ask` with `absent(target)` asks for data that
does not exist, and the two answers must be the same."""


def absent(target: Target) -> Target:
    """A look-alike of the target whose every identifier names nothing."""
    rng = random.Random(uuid.uuid4().int)
    other = PrescriptionMessageBuilder(seed=rng.randrange(10**6)).build(items=1)
    return Target(
        message=other,
        prescription_id=str(uuid.uuid4()),
        item_id=str(uuid.uuid4()),
        short_form_id=next(
            e["resource"] for e in other["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
        )["groupIdentifier"]["value"],
        nhs_number=next(e["resource"] for e in other["entry"] if e["resource"]["resourceType"] == "Patient")[
            "identifier"
        ][0]["value"],
        subscription_id=str(uuid.uuid4()),
        dispense_id=str(uuid.uuid4()),
        question=target.question,
    )


def fhir(body: Any) -> dict[str, Any]:
    return {"content": orjson.dumps(body), "headers": FHIR}


def status_report(target: Target, ods: str) -> dict[str, Any]:
    """A provider's report about the target's item, naming the caller as its owner."""
    report = task(target.message, 0, "in-preparation", 30)
    report["owner"] = {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}}
    return report


def cancel_as(target: Target, ods: str) -> dict[str, Any]:
    cancel = build_cancellation(target.message)
    cancel["entry"][0]["resource"]["sender"]["identifier"]["value"] = ods
    return fhir(cancel)


def answer_about(target: Target, _: str) -> Request:
    communication = {
        "resourceType": "Communication",
        "status": "completed",
        "about": [{"reference": f"Task/{target.item_id}"}],
        "payload": [{"contentString": "Answered by a stranger"}],
    }
    return "POST", "/fhir/Communication", fhir(communication)


def transaction(target: Target, ods: str) -> Request:
    entry = {
        "resource": status_report(target, ods),
        "request": {"method": "PUT", "url": f"Task/{target.item_id}"},
    }
    return "POST", "/fhir", fhir({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})


@dataclass(frozen=True)
class Same:
    """Another organisation's resource answers exactly as a missing one."""

    ask: Ask


@dataclass(frozen=True)
class NoLeak:
    """The route holds no data of one prescription (public, the caller's own, or aggregates):
    whatever it answers, it never names the target."""

    ask: Ask
    why: str


class _Quoted:
    """The target's identifiers as they go into a URL: a short-form ID's check character may be `+`."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def __getattr__(self, name: str) -> str:
        return quote(str(getattr(self._target, name)), safe="-")


def get(path: str) -> Ask:
    return lambda target, _: ("GET", path.format(t=_Quoted(target)), {})


def post_form(path: str, **fields: str) -> Ask:
    return lambda target, _: (
        "POST",
        path.format(t=target),
        {"data": {k: v.format(t=target) for k, v in fields.items()}},
    )


MEASURES = "aggregates per provider, no prescription of anyone"
EXPECTATIONS: dict[tuple[str, str], Same | NoLeak] = {
    ("GET", "/openapi.json"): NoLeak(get("/openapi.json"), "the API description"),
    ("GET", "/docs"): NoLeak(get("/docs"), "the API description"),
    ("GET", "/docs/oauth2-redirect"): NoLeak(get("/docs/oauth2-redirect"), "the API description"),
    ("GET", "/docs/assets"): NoLeak(get("/docs/assets/swagger-ui.css"), "Swagger UI's script and styles"),
    ("GET", "/health"): NoLeak(get("/health"), "liveness, no data"),
    ("GET", "/ready"): NoLeak(get("/ready"), "readiness, no data"),
    ("POST", "/auth/token"): NoLeak(lambda t, _: ("POST", "/auth/token", {"data": {}}), "issues tokens"),
    ("GET", "/.well-known/smart-configuration"): NoLeak(get("/.well-known/smart-configuration"), "public"),
    ("GET", "/.well-known/jwks.json"): NoLeak(get("/.well-known/jwks.json"), "public keys"),
    ("GET", "/fhir/metadata"): NoLeak(get("/fhir/metadata"), "the CapabilityStatement"),
    ("GET", "/fhir/CodeSystem/homecare-status"): NoLeak(
        get("/fhir/CodeSystem/homecare-status"), "a CodeSystem"
    ),
    ("POST", "/FHIR/R4/$process-message"): Same(
        lambda t, ods: ("POST", "/FHIR/R4/$process-message", cancel_as(t, ods))
    ),
    ("POST", "/fhir/Bundle/$validate"): NoLeak(
        lambda t, ods: ("POST", "/fhir/Bundle/$validate", cancel_as(t, ods)),
        "checks the caller's own message against the profile; reads and stores nothing of anyone's",
    ),
    ("POST", "/fhir/$process-message"): Same(
        lambda t, ods: ("POST", "/fhir/$process-message", cancel_as(t, ods))
    ),
    ("GET", "/fhir/MedicationRequest/{id}"): Same(get("/fhir/MedicationRequest/{t.item_id}")),
    ("GET", "/fhir/Bundle/{id}"): Same(get("/fhir/Bundle/{t.prescription_id}")),
    ("POST", "/fhir/Task"): Same(lambda t, ods: ("POST", "/fhir/Task", fhir(status_report(t, ods)))),
    ("PUT", "/fhir/Task/{id}"): Same(
        lambda t, ods: ("PUT", f"/fhir/Task/{t.item_id}", fhir(status_report(t, ods)))
    ),
    ("POST", "/fhir"): Same(transaction),
    ("GET", "/fhir/Task/{id}"): Same(get("/fhir/Task/{t.item_id}")),
    ("GET", "/fhir/Task/{id}/_history"): Same(get("/fhir/Task/{t.item_id}/_history")),
    ("GET", "/fhir/Task"): Same(get("/fhir/Task?based-on:identifier={t.short_form_id}")),
    ("POST", "/fhir/Task/_search"): Same(
        post_form("/fhir/Task/_search", **{"patient:identifier": "{t.nhs_number}"})
    ),
    ("GET", "/fhir/MedicationDispense/{id}"): Same(get("/fhir/MedicationDispense/{t.dispense_id}")),
    ("GET", "/fhir/MedicationDispense"): Same(
        get("/fhir/MedicationDispense?prescription=MedicationRequest/{t.item_id}")
    ),
    ("POST", "/fhir/Communication"): Same(answer_about),
    ("GET", "/fhir/Communication"): Same(get("/fhir/Communication?about=Task/{t.item_id}")),
    ("POST", "/fhir/Subscription"): NoLeak(
        lambda t, _: ("POST", "/fhir/Subscription", fhir({"resourceType": "Subscription"})),
        "creates the caller's own subscription",
    ),
    ("GET", "/fhir/Subscription"): NoLeak(get("/fhir/Subscription"), "lists the caller's own subscriptions"),
    ("GET", "/fhir/Subscription/{id}"): Same(get("/fhir/Subscription/{t.subscription_id}")),
    ("DELETE", "/fhir/Subscription/{id}"): Same(
        lambda t, _: ("DELETE", f"/fhir/Subscription/{t.subscription_id}", {})
    ),
    ("GET", "/fhir/Measure"): NoLeak(get("/fhir/Measure"), MEASURES),
    ("GET", "/fhir/Measure/{id}"): NoLeak(get("/fhir/Measure/on-time-delivery"), MEASURES),
    ("GET", "/fhir/MeasureReport"): NoLeak(get("/fhir/MeasureReport"), MEASURES),
    ("GET", "/fhir/Measure/{id}/$evaluate-measure"): NoLeak(
        get("/fhir/Measure/on-time-delivery/$evaluate-measure"), MEASURES
    ),
    ("POST", "/fhir/Measure/{id}/$evaluate-measure"): NoLeak(
        lambda t, _: (
            "POST",
            "/fhir/Measure/on-time-delivery/$evaluate-measure",
            fhir({"resourceType": "Parameters"}),
        ),
        MEASURES,
    ),
    ("GET", "/kpi/export.csv"): NoLeak(get("/kpi/export.csv"), MEASURES),
    ("GET", "/performance"): NoLeak(get("/performance"), MEASURES),
    ("GET", "/performance/{ods_code}"): NoLeak(get("/performance/VNCEL"), MEASURES),
    # The clinician pages, as a clinician of the other trust.
    ("GET", "/web/sign-in"): NoLeak(get("/web/sign-in"), "the sign-in form"),
    ("POST", "/web/sign-in"): NoLeak(post_form("/web/sign-in", username="bob", password="wrong"), "signs in"),
    ("POST", "/web/sign-out"): NoLeak(post_form("/web/sign-out"), "signs out (refused: no CSRF token)"),
    ("GET", "/web/oidc/start"): NoLeak(get("/web/oidc/start"), "OIDC sign-in (not configured here)"),
    ("GET", "/web/oidc/callback"): NoLeak(get("/web/oidc/callback"), "OIDC sign-in (not configured here)"),
    ("GET", "/"): NoLeak(get("/"), "a redirect to the pages"),
    ("GET", "/web/"): NoLeak(get("/web/"), "the worklist of the person's own trust"),
    ("GET", "/web"): NoLeak(get("/web"), "the worklist of the person's own trust"),
    ("POST", "/web/search"): NoLeak(
        post_form("/web/search", q="{t.nhs_number}"), "searches the person's own trust"
    ),
    ("GET", "/web/prescriptions/{prescription_id}"): Same(get("/web/prescriptions/{t.prescription_id}")),
    ("POST", "/web/prescriptions/{prescription_id}/answer"): Same(
        post_form("/web/prescriptions/{t.prescription_id}/answer", item_id="{t.item_id}", answer="stranger")
    ),
    ("POST", "/web/prescriptions/{prescription_id}/cancel"): Same(
        post_form("/web/prescriptions/{t.prescription_id}/cancel")
    ),
    ("POST", "/web/prescriptions/{prescription_id}/cancel/confirm"): Same(
        post_form("/web/prescriptions/{t.prescription_id}/cancel/confirm", reason="0001")
    ),
    ("GET", "/web/providers"): NoLeak(get("/web/providers"), "counts per provider of the person's own trust"),
    ("GET", "/web/live"): NoLeak(get("/web/live"), "the person's own worklist, live"),
    ("GET", "/web/static"): NoLeak(get("/web/static/"), "static assets"),
    ("GET", "/web/{rest:path}"): NoLeak(get("/web/{t.prescription_id}"), "not found"),
    ("POST", "/web/{rest:path}"): NoLeak(post_form("/web/{t.prescription_id}"), "not found"),
}


def route_table() -> set[tuple[str, str]]:
    """(verb, path) of every route of the real app (HEAD goes with GET)."""
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), run_dispatcher=False))
    routes = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or {"GET"}:
            if method != "HEAD":
                routes.add((method, str(route.path)))
    return routes


def test_every_route_has_an_expectation() -> None:
    routes = route_table()
    assert routes - set(EXPECTATIONS) == set(), (
        "a route the tenancy matrix does not know: add it to EXPECTATIONS"
    )
    assert set(EXPECTATIONS) - routes == set(), "EXPECTATIONS names a route the app no longer has"


# --- the matrix ----------------------------------------------------------------------------------


def callers_for(world: World, path: str) -> list[tuple[str, httpx.Client, str]]:
    """(who, HTTP client, ODS) of every foreign caller of a route: the pages' person for /web, the
    API's foreign clients for everything else."""
    if path == "/" or path.startswith("/web"):
        return [(WEB_STRANGER, world.browser.http, "RBB")]
    ods = {"trust-rbb": "RBB", "provider-vnfkt": "VNFKT", "clinician-app-rbb": "RBB"}
    return [(who, world.callers[who], ods[who]) for who in API_STRANGERS]


def send(http: httpx.Client, request: Request, *, csrf: str | None) -> httpx.Response:
    method, path, options = request
    if csrf is not None and "data" in options:
        options = {**options, "data": {"csrf_token": csrf, **options["data"]}}
    return http.request(method, path, **options)


def answer_shape(response: httpx.Response, target: Target) -> tuple[int, Any]:
    """What an answer says, without what differs between any two answers (ids, times, links) and
    with the identifiers the request named (echoed in a diagnostic) blanked."""
    if "json" not in response.headers.get("content-type", ""):
        return response.status_code, None
    text = response.text
    for named in (*target.secrets(), *item_identifiers(target)):
        text = text.replace(named, "<named>")
    body = orjson.loads(text)
    if body.get("resourceType") == "OperationOutcome":
        return response.status_code, [
            (i.get("code"), i.get("diagnostics"), i.get("expression")) for i in body["issue"]
        ]
    if body.get("resourceType") == "Bundle":
        return response.status_code, body.get("entry", [])
    return response.status_code, body


def item_identifiers(target: Target) -> list[str]:
    return [
        e["resource"]["identifier"][0]["value"]
        for e in target.message["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]


def owner_view(world: World) -> tuple[Any, ...]:
    """What RBA sees of its data: it must not change whatever a stranger does."""
    target, owner = world.target, world.owner
    task_now = owner.get(f"/fhir/Task/{target.item_id}").json()
    thread = owner.get("/fhir/Communication", params={"about": f"Task/{target.item_id}"}).json()
    return (
        task_now["meta"]["versionId"],
        task_now["businessStatus"]["coding"][0]["code"],
        len(thread["entry"]),
        owner.get(f"/fhir/Subscription/{target.subscription_id}").status_code,
        owner.get(f"/fhir/MedicationDispense/{target.dispense_id}").status_code,
        owner.get(f"/fhir/Bundle/{target.prescription_id}").status_code,
    )


@pytest.mark.parametrize(("verb", "path"), sorted(EXPECTATIONS), ids=lambda value: str(value))
def test_another_organisations_data_is_invisible_on_every_route(world: World, verb: str, path: str) -> None:
    expectation = EXPECTATIONS[(verb, path)]
    before = owner_view(world)
    for who, http, ods in callers_for(world, path):
        csrf = csrf_of(world.browser.get("/web/").text) if who == WEB_STRANGER else None
        asked = expectation.ask(world.target, ods)
        foreign = send(http, asked, csrf=csrf)
        assert foreign.status_code < 500, (who, foreign.text[:300])
        # An identifier the caller sent may come back (a search's self link); none other may.
        sent = repr(asked)
        leaked = [s for s in world.target.secrets() if s in foreign.text and s not in sent]
        assert not leaked, f"{verb} {path} as {who} named {leaked}"
        if isinstance(expectation, Same):
            assert not 200 <= foreign.status_code < 300 or answer_shape(foreign, world.target)[1] in (
                [],
                None,
            ), f"{verb} {path} as {who}: {foreign.status_code} {foreign.text[:300]}"
            nothing = absent(world.target)
            missing = send(http, expectation.ask(nothing, ods), csrf=csrf)
            assert answer_shape(foreign, world.target) == answer_shape(missing, nothing), (
                f"{verb} {path} as {who}: another organisation's resource answers unlike a missing one"
            )
    assert owner_view(world) == before, f"{verb} {path}: a stranger changed RBA's data"
