"""The clinician pages over real HTTP on both backends: signing in and out, sessions and CSRF,
tenancy, the worklist's order and search, answering a query and cancelling through the API's flows,
with the audit log naming the person."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

from gateway.app import create_app
from gateway.store.db import Database
from tests.support import RunningServer, free_port
from tests.test_status_api import business_status, order, report, task
from tests.web.conftest import web_settings
from tests.web.support import PASSWORD, Browser, csrf_of, prescription_links

AsTenant = Callable[..., httpx.Client]


@pytest.fixture
def provider(as_tenant: AsTenant) -> httpx.Client:
    return as_tenant("provider-vncel")


def audit_rows(db: Database, user_id: str) -> list[tuple[str, str | None, str | None, str]]:
    with db.read() as session:
        rows = session.execute(
            text(
                "SELECT action, resource_type, reason, outcome FROM audit_event WHERE user_id = :user "
                "ORDER BY id"
            ),
            {"user": user_id},
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_signing_in_opens_the_worklist_and_signing_out_ends_the_session(
    web: RunningServer, db: Database
) -> None:
    with Browser(web.base_url) as browser:
        first = browser.get("/web/")
        assert first.url.path == "/web/sign-in"
        signed_in = browser.sign_in("alice")
        assert signed_in.url.path == "/web/" and "Alice Example (RBA)" in signed_in.text
        out = browser.submit("/web/sign-out", {})
        assert out.url.path == "/web/sign-in" and "You have signed out" in out.text
        assert browser.get("/web/").url.path == "/web/sign-in"
    assert [row[0] for row in audit_rows(db, "alice") if row[0] in ("sign-in", "sign-out")] == [
        "sign-in",
        "sign-out",
    ]


def test_the_session_cookie_is_httponly_and_samesite_and_only_its_hash_is_stored(
    web: RunningServer, db: Database
) -> None:
    with Browser(web.base_url) as browser:
        browser.get("/web/sign-in")
        response = browser.http.post(
            "/web/sign-in",
            data={"csrf_token": csrf_of(browser.page), "username": "alice", "password": PASSWORD},
            follow_redirects=False,
        )
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # published over http here; see the https test below
        token = response.cookies["hc_session"]
    with db.read() as session:
        stored = [row[0] for row in session.execute(text("SELECT token_hash FROM web_session")).all()]
    assert token not in stored and len(stored[0]) == 64


def test_over_https_the_cookie_is_secure_and_host_only(db: Database, tmp_path: object) -> None:
    port = free_port()
    settings = web_settings(port, tmp_path, public_base_url="https://gateway.example.nhs.uk")
    with RunningServer(create_app(settings, db=db), port=port) as server:
        response = httpx.get(f"{server.base_url}/web/sign-in")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-hc_session=") and "Secure" in cookie and "HttpOnly" in cookie


def test_wrong_passwords_are_refused_and_repeated_failures_lock_the_account(
    web: RunningServer, db: Database
) -> None:
    with Browser(web.base_url) as browser:
        for _ in range(5):
            refused = browser.sign_in("alice", "not the password at all")
            assert refused.status_code == 401 and "username or password is wrong" in refused.text
        locked = browser.sign_in("alice")
        assert locked.status_code == 401, "the right password must not open a locked account"
        unknown = browser.sign_in("nobody")
        assert unknown.status_code == 401 and unknown.text.count("username or password is wrong") == 1
    reasons = [row[2] for row in audit_rows(db, "alice") if row[0] == "sign-in"]
    assert reasons == ["wrong-password"] * 4 + ["locked-now", "locked"]


def test_a_form_without_this_sessions_csrf_token_is_refused(web: RunningServer, client: httpx.Client) -> None:
    order(client, items=1, seed=40)
    with Browser(web.base_url) as alice, Browser(web.base_url) as other:
        alice.sign_in("alice")
        other.sign_in("alice")
        (prescription,) = prescription_links(alice.page)
        for token in ("", "forged", csrf_of(other.page)):
            refused = alice.submit("/web/search", {"q": "9434765919"}, csrf=token)
            assert refused.status_code == 403 and "The form was refused" in refused.text
            cancel = alice.submit(
                f"/web/prescriptions/{prescription}/cancel/confirm", {"reason": "0001"}, csrf=token
            )
            assert cancel.status_code == 403
        assert alice.submit("/web/sign-out", {}, csrf="forged").status_code == 403
        assert alice.get("/web/").url.path == "/web/", "a refused sign-out leaves the session alone"
    with Browser(web.base_url) as stranger:
        stranger.get("/web/sign-in")
        assert (
            stranger.submit("/web/sign-in", {"username": "alice", "password": PASSWORD}, csrf="x").status_code
            == 403
        )


def test_the_worklist_puts_action_needed_first_then_newest_activity(
    web: RunningServer, client: httpx.Client, provider: httpx.Client
) -> None:
    queried, _ = order(client, items=1, seed=41)
    order(client, items=1, seed=42)
    newest, _ = order(client, items=2, seed=43)
    assert report(provider, task(queried, 0, "accepted", 1)).status_code == 200
    question = task(queried, 0, "query", 2, note=[{"text": "Is the dose weekly or fortnightly?"}])
    assert report(provider, question).status_code == 200
    # The newest prescription gets activity last, so it leads the rest.
    assert report(provider, task(newest, 0, "accepted", 3)).status_code == 200
    with Browser(web.base_url) as browser:
        page = browser.sign_in("alice").text
    rows = re.findall(r'data-testid="worklist-row" data-prescription="([^"]+)" data-action="(yes|no)"', page)
    assert [flag for _, flag in rows] == ["yes", "no", "no"]
    assert "Provider query awaiting your answer" in page
    assert "Adalimumab" in page or "Etanercept" in page or "Ustekinumab" in page or "Ivacaftor" in page
    assert "3 prescriptions" in page and "1 needs action" in page


def test_search_by_nhs_number_goes_in_the_body_and_finds_that_patient_only(
    web: RunningServer, client: httpx.Client
) -> None:
    order(client, items=1, seed=44, nhs_number="9434765919")
    order(client, items=1, seed=45)
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        found = browser.submit("/web/search", {"q": "943 476 5919"})
        assert found.url.path == "/web/search" and "9434765919" not in str(found.url)
        assert "1 prescription found" in found.text and "*** *** 5919" in found.text
        bad = browser.submit("/web/search", {"q": "not an id"})
        assert "Enter a 10-digit NHS number" in bad.text


def test_another_trusts_person_sees_nothing_and_a_direct_link_is_not_found(
    web: RunningServer, client: httpx.Client
) -> None:
    order(client, items=1, seed=46)
    with Browser(web.base_url) as alice, Browser(web.base_url) as bob:
        alice.sign_in("alice")
        (prescription,) = prescription_links(alice.page)
        page = bob.sign_in("bob")
        assert "0 prescriptions" in page.text and prescription_links(page.text) == []
        direct = bob.get(f"/web/prescriptions/{prescription}")
        assert direct.status_code == 404 and "belongs to another trust" in direct.text
        assert bob.get("/web/prescriptions/not-an-id").status_code == 404
        unknown = bob.get("/web/no-such-page")
        assert unknown.status_code == 404 and "text/html" in unknown.headers["content-type"]
        assert bob.get("/web/static/web.css").status_code == 200
        refused = bob.submit(
            f"/web/prescriptions/{prescription}/cancel/confirm", {"reason": "0001"}, csrf=csrf_of(page.text)
        )
        assert refused.status_code == 404
        assert "Test Homecare" not in bob.get("/web/providers").text


def test_answering_a_query_on_the_page_resumes_the_item_and_the_audit_names_the_person(
    web: RunningServer, db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    message, (item,) = order(client, items=1, seed=47)
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    question = task(message, 0, "query", 2, note=[{"text": "Is the dose weekly or fortnightly?"}])
    assert report(provider, question).status_code == 200
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        (prescription,) = prescription_links(browser.page)
        page = browser.get(f"/web/prescriptions/{prescription}")
        assert "Is the dose weekly or fortnightly?" in page.text and "Awaiting your answer" in page.text
        answered = browser.submit(
            f"/web/prescriptions/{prescription}/answer",
            {"item_id": item, "answer": "Fortnightly, as written."},
        )
        assert answered.status_code == 200 and "Your answer was sent to the provider" in answered.text
        assert "Fortnightly, as written." in answered.text and "Awaiting your answer" not in answered.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "accepted"
    thread = client.get(f"/fhir/Communication?about=Task/{item}").json()
    assert [entry["resource"]["payload"][0]["contentString"] for entry in thread["entry"]][-1] == (
        "Fortnightly, as written."
    )
    assert ("create", "Communication", None, "success") in audit_rows(db, "alice")


def test_cancelling_on_the_page_sends_the_trusts_cancellation_through_intake(
    web: RunningServer, db: Database, client: httpx.Client
) -> None:
    _, (item,) = order(client, items=1, seed=48)
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        (prescription,) = prescription_links(browser.page)
        browser.get(f"/web/prescriptions/{prescription}")
        confirm = browser.submit(f"/web/prescriptions/{prescription}/cancel", {"reason": "0005"})
        assert "Cancel this prescription?" in confirm.text and "At the Patient&#39;s request" in confirm.text
        assert "cancelled at once and never sent" in confirm.text
        outcome = browser.submit(f"/web/prescriptions/{prescription}/cancel/confirm", {"reason": "0005"})
        assert outcome.status_code == 200 and "Prescription cancelled" in outcome.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "cancelled"
    with db.read() as session:
        (event, tenant) = session.execute(
            text("SELECT event, tenant_ods FROM inbound_message WHERE event = 'prescription-order-update'")
        ).one()
    assert (event, tenant) == ("prescription-order-update", "RBA")
    assert ("update", "Bundle", "cancel", "success") in audit_rows(db, "alice")


def test_cancelling_an_order_the_provider_holds_asks_the_provider(
    web: RunningServer, db: Database, client: httpx.Client, provider: httpx.Client
) -> None:
    message, (item,) = order(client, items=1, seed=49)
    assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        (prescription,) = prescription_links(browser.page)
        browser.get(f"/web/prescriptions/{prescription}")
        outcome = browser.submit(f"/web/prescriptions/{prescription}/cancel/confirm", {"reason": "0001"})
        assert "Cancellation requested" in outcome.text and "has not answered yet" in outcome.text
    assert business_status(client.get(f"/fhir/Task/{item}").json()) == "cancel-requested"
    with db.read() as session:
        kinds = session.execute(text("SELECT kind FROM outbox ORDER BY id")).scalars().all()
    assert kinds == ["new", "cancel"]


def test_a_dispensed_prescription_offers_no_cancel_and_a_forced_one_is_refused(
    web: RunningServer, client: httpx.Client, provider: httpx.Client
) -> None:
    message, _ = order(client, items=1, seed=50)
    for minute, status in enumerate(("accepted", "in-preparation", "dispensed"), start=1):
        assert report(provider, task(message, 0, status, minute)).status_code == 200
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        (prescription,) = prescription_links(browser.page)
        page = browser.get(f"/web/prescriptions/{prescription}")
        assert "Cancel this prescription" not in page.text
        refused = browser.submit(f"/web/prescriptions/{prescription}/cancel/confirm", {"reason": "0001"})
        assert refused.status_code == 409 and "has been dispensed" in refused.text


def test_tasks_carry_the_medicines_name(client: httpx.Client, db: Database) -> None:
    message, (item,) = order(client, items=1, seed=51)
    request = next(
        e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "MedicationRequest"
    )
    name = request["medicationCodeableConcept"]["coding"][0]["display"]
    (given,) = client.get(f"/fhir/Task/{item}").json()["input"]
    assert given["type"]["coding"][0]["code"] == "medication"
    assert given["valueCodeableConcept"] == {"text": name}


def test_pages_put_no_patient_data_in_titles_or_links(web: RunningServer, client: httpx.Client) -> None:
    message, _ = order(client, items=1, seed=52, nhs_number="9434765919")
    patient = next(e["resource"] for e in message["entry"] if e["resource"]["resourceType"] == "Patient")
    family = patient["name"][0]["family"]
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        (prescription,) = prescription_links(browser.page)
        for path in ("/web/", f"/web/prescriptions/{prescription}", "/web/providers"):
            page = browser.get(path).text
            title = re.search(r"<title>(.*?)</title>", page, re.S)
            assert title and "9434765919" not in title.group(1) and family not in title.group(1)
            links = re.findall(r'href="([^"]+)"', page)
            assert not [link for link in links if "9434765919" in link or family in link]
        record = browser.get(f"/web/prescriptions/{prescription}").text
        assert "943 476 5919" in record, "the prescription page itself shows the NHS number in full"


def test_the_provider_overview_counts_by_status_and_links_to_the_filtered_worklist(
    web: RunningServer, client: httpx.Client, provider: httpx.Client
) -> None:
    rejected, _ = order(client, items=1, seed=53)
    order(client, items=1, seed=54)
    assert (
        report(provider, task(rejected, 0, "rejected", 1, statusReason={"text": "Out of stock"})).status_code
        == 200
    )
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        page = browser.get("/web/providers").text
        assert "Test Homecare One" in page and "Rejected by provider" in page
        assert 'href="/web/?provider=VNCEL&amp;status=rejected"' in page
        filtered = browser.get("/web/?provider=VNCEL&status=rejected").text
        assert "1 prescription," in filtered and "Rejected by the provider" in filtered


def test_the_live_stamp_changes_with_a_status_change(
    web: RunningServer, client: httpx.Client, provider: httpx.Client
) -> None:
    message, _ = order(client, items=1, seed=55)
    with Browser(web.base_url) as browser:
        browser.sign_in("alice")
        before = browser.http.get("/web/live", headers={"Accept": "application/json"}).json()["stamp"]
        assert report(provider, task(message, 0, "accepted", 1)).status_code == 200
        after = browser.http.get("/web/live", headers={"Accept": "application/json"}).json()["stamp"]
        assert before != after
        browser.submit("/web/sign-out", {})
        gone = browser.http.get("/web/live", headers={"Accept": "application/json"})
        assert gone.status_code == 401
