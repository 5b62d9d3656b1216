"""Settings of the `fhir-rest` adapter, one set per provider."""

from __future__ import annotations

from typing import Self

from pydantic import Field, HttpUrl, SecretStr, model_validator

from adapters.base import AdapterSettings


class FhirRestSettings(AdapterSettings):
    """Where the provider's FHIR endpoint is and how to authenticate to it.

    Authentication is one of: none, a static `bearer_token`, or OAuth 2.0 client credentials
    (`token_url`, `client_id`, `client_secret`, optional `scope`), whose tokens are cached until
    shortly before they expire.
    """

    base_url: HttpUrl = Field(
        description="The provider's FHIR base URL: orders go to {base_url}/$process-message"
    )
    bearer_token: SecretStr | None = None
    token_url: HttpUrl | None = None
    client_id: str | None = Field(default=None, min_length=1)
    client_secret: SecretStr | None = None
    scope: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    verify_tls: bool = True

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        client_credentials = (self.token_url, self.client_id, self.client_secret)
        if any(value is not None for value in client_credentials):
            if any(value is None for value in client_credentials):
                raise ValueError("client credentials need token_url, client_id and client_secret together")
            if self.bearer_token is not None:
                raise ValueError("set either bearer_token or client credentials, not both")
        elif self.scope is not None:
            raise ValueError("scope is only used with client credentials (token_url)")
        return self

    @property
    def process_message_url(self) -> str:
        return f"{self.fhir_base}/$process-message"

    @property
    def metadata_url(self) -> str:
        return f"{self.fhir_base}/metadata"

    @property
    def fhir_base(self) -> str:
        return str(self.base_url).rstrip("/")
