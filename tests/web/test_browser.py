"""The clinician pages in a real browser (Debian's Chromium, driven by Playwright) on both backends:
signing in and out, the worklist's order, answering a query, cancelling, tenancy, CSRF refusal,
session expiry, live updates; axe-core checks each main page (serious and critical violations fail)
and screenshots go to test-artifacts/.

Needs /usr/bin/chromium and axe-core (both installed by `make test`'s set-up). Elsewhere these tests
skip with the reason; with CI=true they fail instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.store.db import Database
from tests.support import RunningServer, free_port, in_ci
from tests.test_status_api import order, report, task
from tests.web.conftest import web_settings
from tests.web.support import PASSWORD, add_people

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / ".venv" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AsTenant = Callable[..., httpx.Client]


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (the set-up installs Debian's chromium when run as root)"
    if not AXE.exists():
        return f"{AXE} is missing (the set-up installs axe-core with npm)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    problem = _missing()
    if problem is not None:
        if in_ci():
            pytest.fail(f"browser tests must run in CI: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Callable[..., Any]]:
    """Pages in fresh browser contexts (each its own cookies), tablet-sized."""
    contexts: list[Any] = []

    def open_page(*, bypass_csp: bool = True) -> Any:
        # axe-core goes in as an inline script, which the pages' CSP forbids: tests lift the CSP
        # for it, and one test checks that the pages run with it in force.
        context = chromium.new_context(viewport={"width": 1024, "height": 768}, bypass_csp=bypass_csp)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def provider(as_tenant: AsTenant) -> httpx.Client:
    return as_tenant("provider-vncel")


def sign_in(page: Any, base_url: str, username: str = "alice", password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/web/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def check_accessibility(page: Any, name: str) -> None:
    """axe-core in the page: no serious or critical violation. And a screenshot of it."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    serious = [
        f"{violation['id']} ({violation['impact']}): {violation['help']} at "
        + ", ".join(str(node["target"]) for node in violation["nodes"][:3])
        for violation in result["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"accessibility problems on {name}: {serious}"


def test_sign_in_worklist_order_answer_a_query_and_sign_out(
    web: RunningServer, client: httpx.Client, provider: httpx.Client, new_page: Callable[[], Any]
) -> None:
    queried, (queried_item,) = order(client, items=1, seed=80)
    order(client, items=2, seed=81)
    assert report(provider, task(queried, 0, "accepted", 1)).status_code == 200
    question = task(queried, 0, "query", 2, note=[{"text": "Please confirm the dose."}])
    assert report(provider, question).status_code == 200
    page = new_page()
    page.goto(f"{web.base_url}/web/")
    assert page.url.endswith("/web/sign-in")
    check_accessibility(page, "sign-in")
    sign_in(page, web.base_url)
    page.get_by_text("Alice Example (RBA)").wait_for()
    rows = page.get_by_test_id("worklist-row")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-action") == "yes"
    assert "Provider query awaiting your answer" in rows.nth(0).inner_text()
    assert rows.nth(1).get_attribute("data-action") == "no"
    assert page.title().startswith("Worklist") and "Homecare prescriptions" in page.title()
    check_accessibility(page, "worklist")

    rows.nth(0).get_by_role("link").click()
    page.get_by_text("Please confirm the dose.").first.wait_for()
    assert page.title().startswith("Prescription") and "Homecare prescriptions" in page.title()
    check_accessibility(page, "prescription-with-query")
    page.get_by_label("Answer the provider's query about Item 1").fill("Confirmed: 40 mg every two weeks.")
    page.get_by_role("button", name="Send answer").click()
    page.get_by_test_id("done").wait_for()
    assert page.get_by_test_id("item-status").first.inner_text() == "Accepted by provider"
    assert "Confirmed: 40 mg every two weeks." in page.get_by_test_id("thread").inner_text()
    assert (
        client.get(f"/fhir/Task/{queried_item}").json()["businessStatus"]["coding"][0]["code"] == "accepted"
    )

    page.get_by_role("button", name="Sign out").click()
    page.get_by_test_id("sign-in-notice").wait_for()
    page.goto(f"{web.base_url}/web/")
    assert page.url.endswith("/web/sign-in")


def test_cancelling_with_a_confirmation_step_shows_the_outcome(
    web: RunningServer, client: httpx.Client, new_page: Callable[[], Any]
) -> None:
    _, items = order(client, items=2, seed=82)
    page = new_page()
    sign_in(page, web.base_url)
    page.get_by_test_id("worklist-row").first.get_by_role("link").click()
    page.get_by_text("Cancel this prescription").click()
    page.get_by_label("Why is it cancelled?").select_option(label="Clinical grounds")
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("heading", name="Cancel this prescription?").wait_for()
    assert "cancelled at once and never sent" in page.content()
    check_accessibility(page, "cancel-confirm")
    page.get_by_role("button", name="Yes, cancel the prescription").click()
    page.get_by_role("heading", name="Prescription cancelled").wait_for()
    check_accessibility(page, "cancel-outcome")
    for item in items:
        assert client.get(f"/fhir/Task/{item}").json()["businessStatus"]["coding"][0]["code"] == "cancelled"


def test_another_trusts_person_sees_nothing_and_gets_not_found_on_a_direct_link(
    web: RunningServer, client: httpx.Client, new_page: Callable[[], Any]
) -> None:
    order(client, items=1, seed=83)
    alice, bob = new_page(), new_page()
    sign_in(alice, web.base_url)
    link = alice.get_by_test_id("worklist-row").first.get_by_role("link").get_attribute("href")
    sign_in(bob, web.base_url, "bob")
    bob.get_by_text("Bob Other (RBB)").wait_for()
    assert bob.get_by_test_id("worklist-row").count() == 0
    response = bob.goto(f"{web.base_url}{link}")
    assert response.status == 404
    assert "belongs to another trust" in bob.get_by_test_id("error-message").inner_text()


def test_a_tampered_csrf_token_is_refused(
    web: RunningServer, client: httpx.Client, new_page: Callable[[], Any]
) -> None:
    order(client, items=1, seed=84)
    page = new_page()
    sign_in(page, web.base_url)
    # Forged as the form goes (the live refresh may redraw the page, with fresh tokens, before the click).
    page.evaluate(
        "() => document.addEventListener('submit', e => e.target.querySelectorAll('input[name=csrf_token]')"
        ".forEach(i => i.value = 'forged'), true)"
    )
    page.get_by_label("Find by NHS number or prescription ID").fill("9434765919")
    page.get_by_role("button", name="Find").click()
    page.get_by_role("heading", name="The form was refused").wait_for()
    assert "9434765919" not in page.url


def test_the_page_follows_a_status_change_without_a_reload(
    web: RunningServer, client: httpx.Client, provider: httpx.Client, new_page: Callable[[], Any]
) -> None:
    message, _ = order(client, items=1, seed=85)
    page = new_page()
    sign_in(page, web.base_url)
    # Polls fail until the provider has reported: the change lands before the page has heard any
    # stamp from the gateway, so the page must compare with the stamp it was drawn from.
    polls_fail = [True]
    page.route("**/web/live*", lambda route: route.abort() if polls_fail[0] else route.continue_())
    page.get_by_test_id("worklist-row").first.get_by_role("link").click()
    status = page.get_by_test_id("status")
    assert status.inner_text() == "Waiting to be sent"
    page.evaluate("() => { window.notReloaded = true; }")
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    polls_fail[0] = False
    page.wait_for_function(
        "() => document.querySelector('[data-testid=status]').innerText === 'Accepted by provider'",
        timeout=10_000,
    )
    assert page.evaluate("() => window.notReloaded") is True


def test_an_idle_session_ends_and_the_page_returns_to_sign_in(
    db: Database, tmp_path: Path, new_page: Callable[[], Any], client: httpx.Client
) -> None:
    add_people(db)
    order(client, items=1, seed=86)
    port = free_port()
    settings = web_settings(port, tmp_path, web_session_idle_seconds=3, web_live_poll_seconds=1)
    with RunningServer(create_app(settings, db=db), port=port) as server:
        page = new_page()
        sign_in(page, server.base_url)
        page.get_by_test_id("worklist-row").first.wait_for()
        # Polling is not activity: the open page times out by itself and goes back to sign in.
        page.wait_for_url(f"{server.base_url}/web/sign-in?ended=expired", timeout=15_000)
        assert "Your session has ended" in page.get_by_test_id("sign-in-notice").inner_text()


def test_the_provider_overview_is_accessible(
    web: RunningServer, client: httpx.Client, provider: httpx.Client, new_page: Callable[[], Any]
) -> None:
    rejected, _ = order(client, items=1, seed=87)
    order(client, items=1, seed=88, performer_ods="VNFKT")
    assert (
        report(provider, task(rejected, 0, "rejected", 1, statusReason={"text": "Out of stock"})).status_code
        == 200
    )
    page = new_page()
    sign_in(page, web.base_url)
    page.get_by_role("link", name="Providers").click()
    page.get_by_test_id("providers").wait_for()
    check_accessibility(page, "providers")
    page.get_by_role("link", name="Rejected by provider").click()
    page.wait_for_url("**status=rejected**")
    page.get_by_test_id("worklist-row").first.wait_for()
    assert page.get_by_test_id("worklist-row").count() == 1


def test_the_pages_run_under_their_content_security_policy(
    web: RunningServer, client: httpx.Client, new_page: Callable[..., Any]
) -> None:
    order(client, items=1, seed=89)
    page = new_page(bypass_csp=False)
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if message.type == "error" else None)
    sign_in(page, web.base_url)
    page.get_by_test_id("worklist-row").first.get_by_role("link").click()
    page.get_by_test_id("status").wait_for()
    page.wait_for_function("() => document.body.classList.contains('nhsuk-frontend-supported')")
    assert refused == [], "every script and style comes from the gateway, none inline"
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.reload()
    page.get_by_test_id("status").wait_for()
    assert requests and all(url.startswith(web.base_url) for url in requests), "nothing from another host"
