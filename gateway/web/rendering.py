"""Server-rendered HTML: one Jinja2 environment (autoescaped), the filters the templates use, and the
headers every page carries (no caching of patient data, a strict Content-Security-Policy)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
try:
    _LOCAL = ZoneInfo("Europe/London")
except ZoneInfoNotFoundError:  # a machine without tzdata: times are shown in UTC, and say so
    _LOCAL = ZoneInfo("UTC")

# Scripts, styles and images come from the gateway alone: no CDN, no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def when(moment: datetime | None) -> str:
    """`30 Nov 2026, 14:05` in UK time."""
    if moment is None:
        return "-"
    local = moment.astimezone(_LOCAL)
    return f"{local.day} {local:%b %Y, %H:%M}"


def day(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    local = moment.astimezone(_LOCAL)
    return f"{local.day} {local:%b %Y}"


def duration(seconds: float) -> str:
    """How long, in the largest unit that fits: `3 days`, `2 hours`, `5 minutes`, `under a minute`."""
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "under a minute"


def since(moment: datetime | None, now: datetime) -> str:
    return "-" if moment is None else duration(max(0.0, (now - moment).total_seconds()))


def hours(value: float | None) -> str:
    return "-" if value is None else duration(value * 3600)


_environment = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters.update(when=when, day=day, hours=hours)


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The page, or only its live region when the page's script asks for it (X-Live-Fragment)."""
    fragment = request.headers.get("x-live-fragment") == "1"
    page = _environment.get_template(template)
    values = {"request": request, "now": datetime.now(UTC), "since": since, "fragment": fragment, **context}
    html = page.render(values)
    return HTMLResponse(html, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})})
