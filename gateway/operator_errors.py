"""Mistakes an operator makes at the command line, told in one line that says what to do.

`homecare-gateway` prints `advice(exc)` and exits 1 instead of a traceback for the errors people
commonly meet: a bad setting (named by its environment variable), a database that cannot be used,
a port in use, a missing key file or signing key, a gateway that does not answer. Anything else is
a fault of the gateway and keeps its traceback.
"""

from __future__ import annotations

import errno
import socket

from pydantic import ValidationError

from auth.signing import MissingSigningKeyError
from gateway.settings import Settings
from gateway.store.db import database_problem


class OperatorError(Exception):
    """A problem the operator can fix; the text says how."""


def environment_variable(field: str) -> str:
    """The environment variable that sets a Settings field."""
    if field == "database_url":
        return "DATABASE_URL"
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _setting_problems(error: ValidationError) -> str:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        message = str(detail.get("msg", "invalid")).removeprefix("Value error, ")
        location = detail.get("loc", ())
        if location:
            problems.append(f"{environment_variable(str(location[0]))}: {message}")
        else:
            problems.append(message)
    return "Bad setting: " + "; ".join(problems)


def advice(exc: BaseException) -> str | None:
    """The one line to print for `exc`, or None when it is not an operator's mistake."""
    if isinstance(exc, OperatorError):
        return str(exc)
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return _setting_problems(exc)
    if isinstance(exc, MissingSigningKeyError):
        return (
            f"{str(exc).capitalize()}: create one with `homecare-gateway keys rotate` "
            "(HOMECARE_SIGNING_KEYS_DIR names the folder)"
        )
    if isinstance(exc, OSError) and exc.filename:
        return f"Cannot use {exc.filename} ({exc.strerror}): check the path and its permissions"
    return database_problem(exc)


def ensure_port_free(host: str, port: int) -> None:
    """Refuse now, in words, a port another process holds (rather than fail inside the server)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OperatorError(
                    f"Port {port} on {host} is already in use (another gateway or demo?): stop it, "
                    "or choose another port with --port"
                ) from None
            raise OperatorError(
                f"Cannot listen on {host}:{port} ({exc.strerror}): check --host and --port"
            ) from None
