"""OpenID Connect sign-in (e.g. NHS CIS2) through Authlib: authorization code with PKCE (S256),
`state` bound to the browser's session, a `nonce`, and the id_token checked against the issuer's
JWKS (signature, `iss`, `aud`, `exp`, `nonce`, `at_hash`). The person's trust comes from a claim
named in the settings, read from the id_token or, failing that, from the userinfo endpoint."""

from __future__ import annotations

import hmac
import warnings
from typing import Any

import authlib.deprecate
import httpx
from joserfc.errors import JoseError

with warnings.catch_warnings():
    # Authlib prefers the httpx2 fork and warns when it finds httpx, the gateway's one HTTP client.
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.starlette_client import OAuth

from gateway.domain.people import OidcIdentity
from gateway.settings import Settings

CALLBACK_PATH = "/web/oidc/callback"


class OidcError(Exception):
    """The sign-in did not complete; the message is fit to log (no tokens, no claims)."""


def claim_at(claims: Any, path: str) -> Any:
    """A claim by dotted path; a list on the way contributes its first element unless the path
    gives an index (`nhsid_nrbac_roles.org_code`, `roles.1.org_code`)."""
    value = claims
    for part in path.split("."):
        if isinstance(value, list):
            if part.isdigit():
                value = value[int(part)] if int(part) < len(value) else None
                continue
            value = value[0] if value else None
        value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return None
    if isinstance(value, list):
        value = value[0] if value else None
    return value


class OidcSignIn:
    def __init__(self, settings: Settings) -> None:
        if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret):
            raise ValueError("OpenID Connect is not configured")
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.redirect_uri = f"{settings.base_url}{CALLBACK_PATH}"
        oauth = OAuth()
        self._idp = oauth.register(
            "idp",
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            server_metadata_url=f"{self.issuer}/.well-known/openid-configuration",
            client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256", "timeout": 10},
        )

    async def start(self) -> tuple[str, dict[str, str]]:
        """The identity provider's authorization URL, and what the session must keep until callback."""
        try:
            found = await self._idp.create_authorization_url(self.redirect_uri)
        except (OAuthError, httpx.HTTPError, RuntimeError, ValueError) as exc:
            raise OidcError(f"the identity provider could not be reached ({type(exc).__name__})") from exc
        pending = {key: str(found[key]) for key in ("state", "nonce", "code_verifier")}
        return str(found["url"]), pending

    async def finish(self, pending: dict[str, Any] | None, parameters: dict[str, str]) -> OidcIdentity:
        """Check the callback against the session, redeem the code, validate the id_token."""
        if parameters.get("error"):
            raise OidcError(f"the identity provider answered {parameters['error'][:64]!r}")
        state = parameters.get("state", "")
        if not pending or not state or not hmac.compare_digest(state, str(pending.get("state", ""))):
            raise OidcError("the sign-in's state does not match this browser's session")
        try:
            token = await self._idp.fetch_access_token(
                redirect_uri=self.redirect_uri,
                code=parameters.get("code", ""),
                code_verifier=pending["code_verifier"],
            )
            claims = await self._idp.parse_id_token(
                token,
                nonce=pending["nonce"],
                claims_options={"iss": {"essential": True, "value": self.issuer}},
            )
            if claims is None:
                raise OidcError("the identity provider sent no id_token")
            ods = claim_at(claims, self.settings.oidc_ods_claim)
            name = claim_at(claims, self.settings.oidc_name_claim)
            if ods is None or name is None:
                userinfo = await self._idp.userinfo(token=token)
                ods = ods if ods is not None else claim_at(userinfo, self.settings.oidc_ods_claim)
                name = name if name is not None else claim_at(userinfo, self.settings.oidc_name_claim)
        except (OAuthError, JoseError, httpx.HTTPError, KeyError, ValueError) as exc:
            raise OidcError(f"the sign-in could not be verified ({type(exc).__name__})") from exc
        return OidcIdentity(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            display_name=str(name or ""),
            ods_code=str(ods) if isinstance(ods, str) else None,
        )
