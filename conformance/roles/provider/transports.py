"""How the suite, playing the gateway, carries orders to a provider's system: one transport per
provider protocol, each a class in TRANSPORTS. FHIR REST reports status to the suite's own FHIR API
(`/fhir/Task` at --listen); HL7 v2 MLLP and file drop read status in their own protocol and turn each
report into the same StatusReport (`base.py`); for pull the suite serves what the provider pulls."""

from __future__ import annotations

from typing import ClassVar

import httpx

from conformance.config import ConfigError, ProviderConfig
from conformance.identifiers import wrong_check_character
from conformance.messages import Message
from conformance.model import Evidence
from conformance.roles.provider.base import Acknowledgement, OrderTransport, ReportSink
from conformance.roles.provider.files import CsvDropTransport
from conformance.roles.provider.mllp import MllpTransport
from conformance.roles.provider.pull import PullTransport
from conformance.wire import RecordingClient

__all__ = ["TRANSPORTS", "Acknowledgement", "FhirRestTransport", "OrderTransport"]


class FhirRestTransport:
    """The `fhir-rest` contract: POST {base}/$process-message, the bytes unchanged, the idempotency
    key and request id in headers, a bearer token when the provider wants one."""

    scheme: ClassVar[str] = "fhir-rest"
    status_over_http: ClassVar[bool] = True
    refusals_answered: ClassVar[bool] = True
    same_second_reports: ClassVar[bool] = False
    invalid_order: ClassVar[str] = "a Bundle whose prescription ID has a wrong check character"

    def __init__(self, target: str, config: ProviderConfig, sends: Evidence) -> None:
        if not target.startswith(("http://", "https://")):
            raise ConfigError(f"provider role: --target must be the provider's FHIR base URL; got {target!r}")
        self.base_url = target.rstrip("/")
        self.config = config
        self.http = RecordingClient(target)
        self.http.evidence = sends

    @property
    def status_address(self) -> str:
        return "(the suite's FHIR status API)"

    def open(self, sink: ReportSink, listen: tuple[str, int] | None) -> None:
        return  # status comes to the session's HTTP status API

    def send(
        self, message: Message, *, idempotency_key: str, request_id: str, invalid: bool = False
    ) -> Acknowledgement:
        if invalid:
            message = message.copy()
            for request in message.entries("MedicationRequest"):
                request["groupIdentifier"]["value"] = wrong_check_character(message.short_form_id)
        headers = {
            "Content-Type": "application/fhir+json",
            "Idempotency-Key": idempotency_key,
            "X-Request-ID": request_id,
        }
        if self.config.bearer_token:
            headers["Authorization"] = f"Bearer {self.config.bearer_token}"
        response: httpx.Response = self.http.post(
            f"{self.base_url}/$process-message", content=message.body(), headers=headers
        )
        status = response.status_code
        evidence = self.http.evidence
        return Acknowledgement(
            f"HTTP {status}",
            accepted=200 <= status < 300,
            # DESIGN.md §10: a 4xx other than 401/403/408/429 is a permanent refusal; others are retried.
            permanent_refusal=400 <= status < 500 and status not in (401, 403, 408, 429),
            status=status,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
            exchange=evidence.exchanges[-1] if evidence and evidence.exchanges else None,
        )

    def close(self) -> None:
        self.http.close()


TRANSPORTS: dict[str, type[OrderTransport]] = {
    transport.scheme: transport
    for transport in (FhirRestTransport, MllpTransport, CsvDropTransport, PullTransport)
}
