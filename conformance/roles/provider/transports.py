"""How the suite, playing the gateway, carries orders to a provider's system: one transport per
provider protocol. FHIR REST is here; HL7 v2 over MLLP, file drop and pull add a class each and an
entry in TRANSPORTS. Status always comes back to the suite's own FHIR API (`/fhir/Task`), or is
turned into the same StatusReport by the transport that reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import httpx

from conformance.config import ProviderConfig
from conformance.wire import RecordingClient


@dataclass(frozen=True)
class Acknowledgement:
    """What the provider's system answered one send."""

    status: int
    body: bytes
    content_type: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def permanent_refusal(self) -> bool:
        """DESIGN.md §10: a 4xx other than 401/403/408/429 is a permanent refusal; others are retried."""
        return 400 <= self.status < 500 and self.status not in (401, 403, 408, 429)


class OrderTransport(Protocol):
    scheme: ClassVar[str]

    def send(self, message: bytes, *, idempotency_key: str, request_id: str) -> Acknowledgement: ...

    def close(self) -> None: ...


class FhirRestTransport:
    """The `fhir-rest` contract: POST {base}/$process-message, the bytes unchanged, the idempotency
    key and request id in headers, a bearer token when the provider wants one."""

    scheme: ClassVar[str] = "fhir-rest"

    def __init__(self, base_url: str, config: ProviderConfig, http: RecordingClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.http = http

    def send(self, message: bytes, *, idempotency_key: str, request_id: str) -> Acknowledgement:
        headers = {
            "Content-Type": "application/fhir+json",
            "Idempotency-Key": idempotency_key,
            "X-Request-ID": request_id,
        }
        if self.config.bearer_token:
            headers["Authorization"] = f"Bearer {self.config.bearer_token}"
        response: httpx.Response = self.http.post(
            f"{self.base_url}/$process-message", content=message, headers=headers
        )
        return Acknowledgement(
            response.status_code, response.content, response.headers.get("content-type", "")
        )

    def close(self) -> None:
        return


TRANSPORTS: dict[str, type[FhirRestTransport]] = {FhirRestTransport.scheme: FhirRestTransport}
