"""OpenID Connect sign-in against a small identity provider on loopback (tests/web/oidc_provider.py):
code flow with PKCE, state and nonce, the id_token checked against the provider's JWKS; the person's
trust from a claim; every broken piece refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from gateway.app import create_app
from gateway.store.db import Database
from tests.support import RunningServer, free_port
from tests.test_status_api import order
from tests.web import oidc_provider
from tests.web.conftest import web_settings
from tests.web.support import Browser, add_people, prescription_links


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[oidc_provider.OidcProvider, RunningServer]]:
    provider = oidc_provider.OidcProvider()
    with RunningServer(provider.app) as running:  # type: ignore[arg-type]
        provider.issuer = running.base_url
        yield provider, running


@contextmanager
def gateway_for(
    db: Database, provider: oidc_provider.OidcProvider, data_dir: object, **overrides: object
) -> Iterator[RunningServer]:
    port = free_port()
    settings = web_settings(
        port,
        data_dir,
        oidc_issuer=provider.issuer,
        oidc_client_id=oidc_provider.CLIENT_ID,
        oidc_client_secret=oidc_provider.CLIENT_SECRET,
        **overrides,
    )
    with RunningServer(create_app(settings, db=db), port=port) as server:
        yield server


@pytest.fixture
def gateway(
    db: Database, idp: tuple[oidc_provider.OidcProvider, RunningServer], tmp_path: object
) -> Iterator[tuple[oidc_provider.OidcProvider, RunningServer]]:
    provider, _ = idp
    add_people(db)
    provider.knobs = oidc_provider.Knobs()
    provider.person = oidc_provider.Person("5550001", "Dana Doctor", {"ods_code": "RBA"})
    with gateway_for(db, provider, tmp_path) as server:
        yield provider, server


def test_a_person_signs_in_through_the_identity_provider_and_sees_their_trust(
    gateway: tuple[oidc_provider.OidcProvider, RunningServer], client: httpx.Client
) -> None:
    _, server = gateway
    order(client, items=1, seed=70)
    with Browser(server.base_url) as browser:
        page = browser.get("/web/sign-in")
        assert 'href="/web/oidc/start"' in page.text
        started = browser.http.get("/web/oidc/start", follow_redirects=False)
        authorize = httpx.URL(started.headers["location"])
        assert authorize.params["code_challenge_method"] == "S256" and authorize.params["nonce"]
        answered = browser.http.get(authorize, follow_redirects=False)
        callback = answered.headers["location"]
        signed_in = browser.get(callback)
        assert signed_in.url.path == "/web/" and "Dana Doctor (RBA)" in signed_in.text
        assert len(prescription_links(signed_in.text)) == 1
        browser.submit("/web/sign-out", {})
        # The callback's state was good for one sign-in only.
        replayed = browser.get(callback)
        assert replayed.status_code == 401 and browser.get("/web/").url.path == "/web/sign-in"


def test_the_trust_claim_can_come_from_userinfo_and_point_into_a_list(
    gateway: tuple[oidc_provider.OidcProvider, RunningServer], db: Database, tmp_path: object
) -> None:
    provider, default_server = gateway
    provider.knobs.claims_in_userinfo_only = True
    provider.person = oidc_provider.Person(
        "5550003", "Flo Pharmacist", {"nhsid_nrbac_roles": [{"org_code": "RBB"}, {"org_code": "RBA"}]}
    )
    with Browser(default_server.base_url) as browser:
        # Where the claim the settings name (ods_code) is missing, the person is refused.
        refused = browser.get("/web/oidc/start")
        assert refused.status_code == 403 and "does not name the trust" in refused.text
    with (
        gateway_for(db, provider, tmp_path, oidc_ods_claim="nhsid_nrbac_roles.org_code") as server,
        Browser(server.base_url) as browser,
    ):
        signed_in = browser.get("/web/oidc/start")
        assert signed_in.url.path == "/web/" and "Flo Pharmacist (RBB)" in signed_in.text


@pytest.mark.parametrize("knob", ["wrong_nonce", "wrong_audience", "foreign_key", "expired"])
def test_a_tampered_or_stale_id_token_is_refused(
    gateway: tuple[oidc_provider.OidcProvider, RunningServer], knob: str
) -> None:
    provider, server = gateway
    setattr(provider.knobs, knob, True)
    with Browser(server.base_url) as browser:
        refused = browser.get("/web/oidc/start")
        assert refused.status_code == 401 and "did not complete" in refused.text
        assert browser.get("/web/").url.path == "/web/sign-in"


def test_a_callback_whose_state_is_not_this_browsers_is_refused(
    gateway: tuple[oidc_provider.OidcProvider, RunningServer],
) -> None:
    provider, server = gateway
    with Browser(server.base_url) as victim, Browser(server.base_url) as attacker:
        # The attacker starts a sign-in and stops at the provider's answer...
        started = attacker.http.get("/web/oidc/start", follow_redirects=False)
        answered = attacker.http.get(started.headers["location"], follow_redirects=False)
        callback = answered.headers["location"]
        # ...and gets the victim's browser to finish it: the victim's session holds no such state.
        victim.get("/web/sign-in")
        before = provider.token_requests
        refused = victim.get(callback.replace(provider.issuer, server.base_url))
        assert refused.status_code == 401 and provider.token_requests == before
        assert victim.get("/web/").url.path == "/web/sign-in"
