"""A small OpenID Connect provider for tests (a stand-in for NHS CIS2): discovery, JWKS, authorize
(signs in whoever the test says, at once), token (code + PKCE S256, client secret) and userinfo.

Knobs break one thing at a time, so tests can watch the gateway refuse: a wrong nonce or audience,
an id_token signed with a key the JWKS does not hold, an expired id_token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.jwk import RSAKey

CLIENT_ID = "homecare-gateway"
CLIENT_SECRET = "test-client-secret"


@dataclass
class Person:
    subject: str
    name: str
    claims: dict[str, Any] = field(default_factory=dict)  # e.g. the trust's ODS code


@dataclass
class Grant:
    person: Person
    redirect_uri: str
    nonce: str | None
    challenge: str


@dataclass
class Knobs:
    wrong_nonce: bool = False
    wrong_audience: bool = False
    foreign_key: bool = False
    expired: bool = False
    claims_in_userinfo_only: bool = False


class OidcProvider:
    def __init__(self) -> None:
        self.issuer = "http://127.0.0.1"  # set once the server's port is known
        self.person = Person("5550001", "Dana Doctor", {"ods_code": "RBA"})
        self.knobs = Knobs()
        self.key = RSAKey.generate_key(2048, parameters={"kid": "idp-key-1", "use": "sig", "alg": "RS256"})
        self._foreign = RSAKey.generate_key(2048, parameters={"kid": "idp-key-1"})
        self._grants: dict[str, Grant] = {}
        self._tokens: dict[str, Person] = {}
        self.token_requests = 0
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()
        app.get("/.well-known/openid-configuration")(self.discovery)
        app.get("/jwks")(self.jwks)
        app.get("/authorize")(self.authorize)
        app.post("/token")(self.token)
        app.get("/userinfo")(self.userinfo)
        return app

    async def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    async def authorize(self, request: Request) -> Response:
        params = request.query_params
        if (
            params.get("client_id") != CLIENT_ID
            or params.get("response_type") != "code"
            or params.get("code_challenge_method") != "S256"
            or not params.get("code_challenge")
        ):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        code = secrets.token_urlsafe(16)
        self._grants[code] = Grant(
            self.person, params["redirect_uri"], params.get("nonce"), params["code_challenge"]
        )
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            client, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        else:
            client, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client == CLIENT_ID and secret == CLIENT_SECRET

    async def token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        grant = self._grants.pop(form.get("code", ""), None)
        if not self._client_ok(request, form):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant is None or grant.redirect_uri != form.get("redirect_uri") or challenge != grant.challenge:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        access_token = secrets.token_urlsafe(24)
        self._tokens[access_token] = grant.person
        return JSONResponse(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self._id_token(grant),
            }
        )

    def _id_token(self, grant: Grant) -> str:
        now = int(time.time())
        knobs = self.knobs
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.person.subject,
            "aud": "someone-else" if knobs.wrong_audience else CLIENT_ID,
            "iat": now - (7200 if knobs.expired else 0),
            "exp": now + (-3600 if knobs.expired else 300),
            "nonce": "not-the-nonce" if knobs.wrong_nonce else grant.nonce,
        }
        if not knobs.claims_in_userinfo_only:
            claims.update({"name": grant.person.name, **grant.person.claims})
        key = self._foreign if knobs.foreign_key else self.key
        return jwt.encode({"alg": "RS256", "kid": "idp-key-1"}, claims, key)

    async def userinfo(self, request: Request) -> Response:
        person = self._tokens.get(request.headers.get("authorization", "").removeprefix("Bearer "))
        if person is None:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"sub": person.subject, "name": person.name, **person.claims})
