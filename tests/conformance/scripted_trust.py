"""A scripted trust system for the trust role's tests: it performs the suite's scenarios with the
project's own message builder and assertion signer (used here only, never by the suite), and can be
told to make the mistakes a careless EPR makes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import orjson

from auth.assertion import generate_client_key, private_key, request_access_token, sign_assertion
from fhir_profiles.builder import PrescriptionMessageBuilder, build_cancellation

FHIR = {"Content-Type": "application/fhir+json"}


@dataclass(frozen=True)
class Mistakes:
    reuse_jti: bool = False
    bad_check_character: bool = False
    change_bytes_on_retry: bool = False
    cancel_another_prescription: bool = False


class ScriptedTrust:
    def __init__(self, client_id: str, ods: str, mistakes: Mistakes = Mistakes()) -> None:
        self.client_id, self.ods, self.mistakes = client_id, ods, mistakes
        pair = generate_client_key("ES384")
        self.jwks = pair.jwks
        self.key, self.kid = private_key(pair.private_pem), pair.kid
        self.builder = PrescriptionMessageBuilder(seed=11, sender_ods=ods, performer_ods="VCF01")
        self.thread: threading.Thread | None = None
        self.problem: BaseException | None = None

    def _token(self, http: httpx.Client, token_url: str, jti: str | None) -> str:
        assertion = sign_assertion(
            key=self.key,
            kid=self.kid,
            client_id=self.client_id,
            token_url=token_url,
            now=int(time.time()),
            jti=jti,
        )
        response = request_access_token(http, token_url=token_url, assertion=assertion)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _send(
        self, http: httpx.Client, token: str, body: bytes, retry_body: bytes | None = None
    ) -> httpx.Response:
        headers = {**FHIR, "Authorization": f"Bearer {token}"}
        response = http.post("/fhir/$process-message", content=body, headers=headers)
        if response.status_code == 503:
            time.sleep(0.2)
            response = http.post("/fhir/$process-message", content=retry_body or body, headers=headers)
        return response

    def perform(self, base_url: str) -> None:
        token_url = f"{base_url}/auth/token"
        with httpx.Client(base_url=base_url, timeout=10) as http:
            _wait_until_served(http)
            jti = "fixed-jti" if self.mistakes.reuse_jti else None
            token = self._token(http, token_url, jti)
            first = self.builder.build(items=1)
            if self.mistakes.bad_check_character:
                for entry in first["entry"]:
                    if entry["resource"]["resourceType"] == "MedicationRequest":
                        value = entry["resource"]["groupIdentifier"]["value"]
                        entry["resource"]["groupIdentifier"]["value"] = value[:-1] + (
                            "A" if value[-1] != "A" else "B"
                        )
            self._send(http, token, orjson.dumps(first))
            second = self.builder.build(items=3)
            retry = (
                orjson.dumps({**second, "meta": {"tag": [{"code": "retry"}]}})
                if self.mistakes.change_bytes_on_retry
                else None
            )
            token = self._token(http, token_url, jti)
            self._send(http, token, orjson.dumps(second), retry)
            cancel = build_cancellation(second if self.mistakes.cancel_another_prescription else first)
            self._send(http, token, orjson.dumps(cancel))

    def start(self, base_url: str) -> None:
        def run() -> None:
            try:
                self.perform(base_url)
            except BaseException as exc:  # handed to the test, which fails with it
                self.problem = exc

        self.thread = threading.Thread(target=run, name="scripted-trust", daemon=True)
        self.thread.start()


def _wait_until_served(http: httpx.Client) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            http.get("/.well-known/smart-configuration")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
