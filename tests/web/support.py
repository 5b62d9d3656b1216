"""Helpers of the clinician page tests: a browser-like HTTP client, people, prescriptions."""

from __future__ import annotations

import re
from typing import Any

import httpx
from sqlalchemy import text

from gateway.clock import system_clock
from gateway.domain import people
from gateway.store.db import Database

PASSWORD = "correct horse battery staple"
PEOPLE = (("alice", "Alice Example", "RBA"), ("bob", "Bob Other", "RBB"))
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_PRESCRIPTION_LINK = re.compile(r"/web/prescriptions/([0-9a-f-]{36})")


def add_people(db: Database) -> None:
    with db.write() as session:
        session.execute(text("DELETE FROM web_session"))
        session.execute(text("DELETE FROM clinician_user"))
    for username, name, ods in PEOPLE:
        people.add_user(
            db, username=username, display_name=name, ods_code=ods, password=PASSWORD, clock=system_clock
        )


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def prescription_links(html: str) -> list[str]:
    return list(dict.fromkeys(_PRESCRIPTION_LINK.findall(html)))


class Browser:
    """An HTTP client that behaves like a browser: keeps cookies, follows redirects, sends forms."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, follow_redirects=True, timeout=30)
        self.page = ""

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: Any) -> None:
        self.http.close()

    def get(self, path: str) -> httpx.Response:
        response = self.http.get(path)
        self.page = response.text
        return response

    def submit(self, path: str, fields: dict[str, str], *, csrf: str | None = None) -> httpx.Response:
        """POST a form as the page would, with the CSRF token of the page last seen."""
        token = csrf if csrf is not None else csrf_of(self.page)
        response = self.http.post(path, data={"csrf_token": token, **fields})
        self.page = response.text
        return response

    def sign_in(self, username: str, password: str = PASSWORD) -> httpx.Response:
        self.get("/web/sign-in")
        return self.submit("/web/sign-in", {"username": username, "password": password})
