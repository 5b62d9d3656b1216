"""`homecare-gateway demo`: the gateway on SQLite, demo providers, a demo trust and sample prescriptions."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from rich.console import Console
from rich.table import Table

from adapters.fhir_rest.simulator import SimulatorServer
from adapters.fhir_rest.simulator_config import SimulatorConfig
from adapters.simulation.lifecycle import plan_lifecycle
from auth.assertion import generate_client_key, load_private_key, request_access_token, sign_assertion
from auth.clients import KeySource, add_client, get_client
from auth.identity import Role
from auth.scopes import ROLE_CEILINGS
from fhir_profiles.builder import Message, PrescriptionMessageBuilder
from gateway.app import create_app
from gateway.clock import system_clock
from gateway.demo_adapters import AdapterProviders, demo_mllp_listen
from gateway.domain import people
from gateway.operator_errors import OperatorError, ensure_port_free
from gateway.server import AdminListener, prepare
from gateway.settings import Settings
from gateway.store.db import Database
from gateway.store.providers import add_provider, list_providers, update_provider
from gateway.transport import uvicorn_options

console = Console()

DEMO_TRUST = "RBA"
DEMO_CLIENT = "demo-trust-rba"
DEMO_CLIENT_ALGORITHM = "ES384"
DEMO_CLINICIAN = "demo.clinician"
# A query raised by a demo provider stays open this long for the newcomer to answer on the pages.
DEMO_QUERY_OPEN_SECONDS = 900.0
# After the samples, one more prescription this often (0: none), so the performance page fills.
DEMO_TRICKLE_SECONDS = 15.0
DEMO_TRICKLE_LIMIT = 500
# The sample patient whose weekly supply runs out before a next order: a run-out warning at once.
RUN_OUT_SUPPLY_DAYS = 7
DEMO_PROVIDERS = (
    ("VNCEL", "Demo Homecare Services (FHIR REST)", "fhir-rest"),
    ("VNFKT", "Demo Specialist Pharmacy (FHIR REST)", "fhir-rest"),
)


def _register_demo_providers(database: Database, simulators: dict[str, SimulatorServer]) -> None:
    """The demo providers, pointing at this run's simulators (their ports change between runs)."""
    with database.write() as session:
        known = {provider.ods_code for provider in list_providers(session)}
        for ods, name, adapter in DEMO_PROVIDERS:
            settings = {"base_url": simulators[ods].base_url, "timeout_seconds": 5.0}
            if ods in known:
                update_provider(session, ods, now=system_clock(), settings=settings, enabled=True)
            else:
                add_provider(
                    session, ods_code=ods, name=name, adapter=adapter, settings=settings, now=system_clock()
                )


class _TokenCache:
    """A provider simulator's access tokens: fetched with client credentials, reused for 4 minutes."""

    def __init__(self, token_url: str, key_path: Path, client_id: str) -> None:
        self._token_url, self._key_path, self._client_id = token_url, key_path, client_id
        self._token: str | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() - self._fetched > 240:
                self._token = _demo_token(self._token_url, self._key_path, self._client_id)
                self._fetched = time.monotonic()
            return self._token


def _start_simulators(
    base_url: str, token_url: str, keys: dict[str, Path], pace: float
) -> dict[str, SimulatorServer]:
    """Two homecare providers on loopback that move orders through the lifecycle and report back."""
    behaviour: dict[str, dict[str, Any]] = {
        "VNCEL": {"step_delay_seconds": 3.0 * pace},
        "VNFKT": {
            "step_delay_seconds": 4.0 * pace,
            "delivery_failure_rate": 0.4,
            # One attempt: a failed delivery stays failed (and on the worklist) until someone acts.
            "max_delivery_attempts": 1,
            "query_rate": 0.3,
            "query_answer_seconds": DEMO_QUERY_OPEN_SECONDS,
        },
    }
    simulators = {}
    for ods, _, _ in DEMO_PROVIDERS:
        simulator = SimulatorServer(
            ods,
            seed=2026,
            status_url=f"{base_url}/fhir/Task",
            status_token_source=_TokenCache(token_url, keys[ods], f"demo-provider-{ods.lower()}"),
            **behaviour[ods],
        )
        simulator.start()
        simulators[ods] = simulator
    return simulators


def _register_demo_client(database: Database, data_dir: Path, client_id: str, role: Role, ods: str) -> Path:
    """A demo client: its key pair in the data folder (owner-only), its public key registered."""
    key_path = data_dir / f"{client_id}.pem"
    if not key_path.exists():
        pair = generate_client_key(DEMO_CLIENT_ALGORITHM)
        data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(pair.private_pem)
        key_path.with_suffix(".jwks.json").write_text(json.dumps(pair.jwks, indent=2), encoding="utf-8")
    jwks = json.loads(key_path.with_suffix(".jwks.json").read_text(encoding="utf-8"))
    with database.write() as session:
        if get_client(session, client_id) is None:
            add_client(
                session,
                client_id=client_id,
                role=role,
                ods_code=ods,
                scopes=" ".join(ROLE_CEILINGS[role]),
                keys=KeySource(jwks=jwks, jwks_url=None),
                now=system_clock(),
            )
    return key_path


def _demo_token(token_url: str, key_path: Path, client_id: str = DEMO_CLIENT) -> str:
    """An access token the way any client gets one: a signed assertion, then the token endpoint."""
    key = load_private_key(key_path)
    assertion = sign_assertion(
        key=key, kid=key.thumbprint(), client_id=client_id, token_url=token_url, now=int(time.time())
    )
    with httpx.Client(timeout=10) as http:
        response = request_access_token(http, token_url=token_url, assertion=assertion)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _path(message: Message, config: SimulatorConfig) -> set[str]:
    """The statuses the provider simulator will report for this order (its plan is seeded)."""
    requests = [
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    ]
    items = tuple(request["identifier"][0]["value"] for request in requests)
    return {step.status for step in plan_lifecycle(config, requests[0]["groupIdentifier"]["value"], items)}


def weekly_course(message: Message) -> Message:
    """The message's one item made a continuing course supplied a week at a time."""
    for entry in message["entry"]:
        request = entry["resource"]
        if request["resourceType"] == "MedicationRequest":
            request["courseOfTherapyType"]["coding"][0].update(
                code="continuous", display="Continuous long term therapy"
            )
            request["dispenseRequest"]["expectedSupplyDuration"] = {
                "value": RUN_OUT_SUPPLY_DAYS,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            }
    return message


def _samples(
    count: int, configs: dict[str, SimulatorConfig], performers: list[str]
) -> list[tuple[str, Message]]:
    """Sample orders, the first three chosen so that the action-needed list has work within a minute
    (one the provider will query, one whose delivery will fail, a weekly supply delivered with no
    next order: a run-out warning), the rest spread over every provider."""
    builder = PrescriptionMessageBuilder(sender_ods=DEMO_TRUST)
    picked: list[tuple[str, Message]] = []
    wanted_paths = (
        ("query", ("delivery-failed",)),
        ("delivery-failed", ("query",)),
        ("delivered", ("query", "delivery-failed", "rejected")),
    )
    for wanted, unwanted in wanted_paths[: max(0, count)]:
        for ods, config in configs.items():
            candidates = (builder.build(items=1, performer_ods=ods) for _ in range(200))
            found = next(
                (
                    m
                    for m in candidates
                    if wanted in (path := _path(m, config)) and not path.intersection(unwanted)
                ),
                None,
            )
            if found is not None:
                picked.append((ods, weekly_course(found) if wanted == "delivered" else found))
                break
    for number in range(max(0, count - len(picked))):
        ods = performers[number % len(performers)]
        picked.append((ods, builder.build(items=1 + number % 3, performer_ods=ods)))
    return picked


def _trickle(
    base_url: str, token: Callable[[], str], performers: list[str], every: float, stop: threading.Event
) -> None:
    """One more prescription every `every` seconds, to each provider in turn, until stopped."""
    builder = PrescriptionMessageBuilder(sender_ods=DEMO_TRUST, seed=7)
    for number in range(DEMO_TRICKLE_LIMIT):
        if stop.wait(every):
            return
        ods = performers[number % len(performers)]
        message = builder.build(items=1 + number % 2, performer_ods=ods)
        try:
            with httpx.Client(base_url=base_url, timeout=10) as client:
                client.post(
                    "/fhir/$process-message",
                    content=orjson.dumps(message),
                    headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token()}"},
                )
        except httpx.HTTPError:
            continue


def _send_samples(base_url: str, token: str, samples: list[tuple[str, Message]]) -> None:
    table = Table("prescription ID", "provider", "items", "HTTP", "gateway id")
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for ods, message in samples:
            response = client.post(
                "/fhir/$process-message",
                content=orjson.dumps(message),
                headers={"Content-Type": "application/fhir+json"},
            )
            short_form = message["entry"][1]["resource"]["groupIdentifier"]["value"]
            location = response.headers.get("location", "-")
            items = sum(1 for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest")
            table.add_row(short_form, ods, str(items), str(response.status_code), location)
    console.print(table)


def _demo_clinician(database: Database) -> str:
    """The demo trust's clinician, with a new password each run (printed once, never stored)."""
    password = secrets.token_urlsafe(12)
    try:
        people.add_user(
            database,
            username=DEMO_CLINICIAN,
            display_name="Demo Clinician",
            ods_code=DEMO_TRUST,
            password=password,
            clock=system_clock,
        )
    except people.AccountError:
        people.set_enabled(database, username=DEMO_CLINICIAN, enabled=True, clock=system_clock)
        people.reset_password(database, username=DEMO_CLINICIAN, password=password, clock=system_clock)
    return password


def _print_guide(
    base_url: str,
    token_url: str,
    key_path: Path,
    data_dir: Path,
    simulators: dict[str, SimulatorServer],
    clinician_password: str,
    other_providers: str,
    metrics_url: str,
) -> None:
    example = Path("examples/prescription-order.json")
    console.print(
        f"""
[bold]Homecare gateway demo is running[/bold] (data in {data_dir}, Ctrl-C to stop)

[bold]Clinician pages[/bold]     {base_url}/web/
  Sign in as          {DEMO_CLINICIAN}   password {clinician_password}   (trust {DEMO_TRUST})
  Within a minute the worklist shows a provider query to answer, a failed delivery and a patient
  at risk of running out (a weekly supply delivered with no next order).
[bold]Provider performance[/bold] {base_url}/performance   (public; the demo shows every count)

  API documentation   {base_url}/docs
  Capability          curl {base_url}/fhir/metadata
  Demo trust client   {DEMO_CLIENT} (ODS {DEMO_TRUST}), private key {key_path}
  Provider simulators {"; ".join(f"{ods} {sim.base_url}" for ods, sim in simulators.items())}
                      (orders they hold: {", ".join(sim.control_url + "/orders" for sim in simulators.values())})
{other_providers}
  Metrics             curl {metrics_url}   (the admin listener: this machine only)
  Health, readiness   curl {base_url}/health; curl {base_url}/ready

Get an access token (valid 5 minutes) as the demo trust system:
  TOKEN=$(homecare-gateway token --token-only --client-id {DEMO_CLIENT} --key {key_path} \\
          --token-url {token_url})
Send a prescription:
  curl -i -X POST {base_url}/fhir/\\$process-message \\
       -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/fhir+json' \\
       --data-binary @{example}
Read it back: follow the Location header, e.g.
  curl -H "Authorization: Bearer $TOKEN" {base_url}/fhir/Bundle/<id>
Watch the status the providers report (a Task per line item, newest change first):
  curl -H "Authorization: Bearer $TOKEN" "{base_url}/fhir/Task?_count=20"
  curl -H "Authorization: Bearer $TOKEN" "{base_url}/fhir/Task?business-status=delivery-failed"
  curl -H "Authorization: Bearer $TOKEN" {base_url}/fhir/Task/<id>/_history
""",
        soft_wrap=True,
    )


_held_locks: list[int] = []


def _hold_the_demo_lock(data_dir: Path) -> None:
    """One demo per data folder: a second one would point the first one's providers at its own
    simulators. The lock is the process's until it exits."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(data_dir / "demo.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise OperatorError(
            f"Another demo is running on {data_dir}: stop it (Ctrl-C where it runs) before starting one "
            "more, or give this one its own HOMECARE_DATA_DIR and --port"
        ) from None
    _held_locks.append(descriptor)


def run_demo(
    *, port: int, prescriptions: int, trickle_seconds: float = DEMO_TRICKLE_SECONDS, pace: float = 1.0
) -> None:
    if "HOMECARE_DATA_DIR" not in os.environ and "DATABASE_URL" not in os.environ:
        os.environ["HOMECARE_DATA_DIR"] = "var/demo"
    os.environ.setdefault("HOMECARE_LOG_LEVEL", "WARNING")
    # The demo's subscriber is a receiver on this machine (README, "Trying it"); the start says so.
    os.environ.setdefault("HOMECARE_ALLOW_LOOPBACK_SUBSCRIBERS", "true")
    # Made-up patients: every count is shown; figures and run-out warnings follow within seconds.
    os.environ.setdefault("HOMECARE_KPI_SMALL_NUMBER_THRESHOLD", "1")
    os.environ.setdefault("HOMECARE_KPI_FOLD_SECONDS", "5")
    os.environ.setdefault("HOMECARE_RUN_OUT_CHECK_SECONDS", "10")
    base_url = f"http://127.0.0.1:{port}"
    os.environ.setdefault("HOMECARE_PUBLIC_BASE_URL", base_url)
    demo_mllp_listen()
    # The demo's /metrics on a free loopback port: a gateway already serving keeps 9464.
    os.environ.setdefault("HOMECARE_ADMIN_LISTEN", "127.0.0.1:0")
    settings = Settings()
    # Before anything changes: a demo already running keeps its providers and its port.
    _hold_the_demo_lock(settings.data_dir)
    ensure_port_free("127.0.0.1", port)
    prepare(settings)
    database = Database(settings.resolved_database_url, pool_size=settings.db_pool_size)
    key_path = _register_demo_client(database, settings.data_dir, DEMO_CLIENT, Role.TRUST, DEMO_TRUST)
    provider_keys = {
        ods: _register_demo_client(
            database, settings.data_dir, f"demo-provider-{ods.lower()}", Role.PROVIDER, ods
        )
        for ods, _, _ in DEMO_PROVIDERS
    }
    simulators = _start_simulators(base_url, settings.token_url, provider_keys, pace)
    _register_demo_providers(database, simulators)
    clinician_password = _demo_clinician(database)

    other_providers = AdapterProviders(
        database,
        settings,
        lambda client_id, ods: _register_demo_client(
            database, settings.data_dir, client_id, Role.PROVIDER, ods
        ),
        pace=pace,
    )
    other_providers.start()

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, db=database),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            **uvicorn_options(settings),
        )
    )

    stop_trickle = threading.Event()

    def after_start() -> None:
        while not server.started:
            if server.should_exit:
                return
            threading.Event().wait(0.05)
        other_providers.start_pull(base_url, DEMO_CLIENT_ALGORITHM)
        # The adapters' providers first: the two samples kept for the clinician go to FHIR REST ones.
        performers = other_providers.ods_codes + [ods for ods, _, _ in DEMO_PROVIDERS]
        samples = _samples(
            prescriptions, {ods: sim.simulator.config for ods, sim in simulators.items()}, performers
        )
        _send_samples(base_url, _demo_token(settings.token_url, key_path), samples)
        if trickle_seconds > 0:
            tokens = _TokenCache(settings.token_url, key_path, DEMO_CLIENT)
            threading.Thread(
                target=_trickle,
                args=(base_url, tokens, performers, trickle_seconds, stop_trickle),
                name="demo-trickle",
                daemon=True,
            ).start()
        _print_guide(
            base_url,
            settings.token_url,
            key_path,
            settings.data_dir,
            simulators,
            clinician_password,
            other_providers.guide(),
            f"{admin.url}/metrics" if admin.url else "off (HOMECARE_ADMIN_LISTEN)",
        )

    admin = AdminListener(settings)
    threading.Thread(target=after_start, name="demo-samples", daemon=True).start()
    try:
        with admin:
            server.run()
    finally:
        stop_trickle.set()
        for simulator in simulators.values():
            simulator.stop()
        other_providers.stop()
        database.dispose()
