"""The public performance page: no sign-in, no patient data. One row per provider with the headline
measures and their trend, and a page per provider with a chart per measure over the last twelve
months and the definitions. Read from the KPI aggregate (gateway.kpi.performance).

The figures change only when the fold runs, so each process keeps what it read for
`HOMECARE_KPI_FOLD_SECONDS` (none when the fold is off): most requests read nothing at all."""

from __future__ import annotations

import re
import time
from functools import partial

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.api.deps import Services, ServicesDep
from gateway.kpi.definitions import COMMON_RULES, DEFINITIONS
from gateway.kpi.performance import HEADLINE, HEADLINE_DEFINITIONS, Performance, performance
from gateway.web.charts import bar_chart, month_words, sparkline
from gateway.web.errors import PageError
from gateway.web.rendering import render

router = APIRouter(include_in_schema=False)
_ODS = re.compile(r"^[A-Z0-9]{3,12}$")
PUBLIC = {"public": True}
_CACHE: dict[tuple[int, str | None, int, str], tuple[float, Performance]] = {}


async def _figures(services: Services, provider_ods: str | None) -> Performance:
    """The figures, read again when the ones kept are older than a fold interval."""
    now = services.clock()
    threshold = services.settings.kpi_small_number_threshold
    key = (id(services.db), provider_ods, threshold, now.strftime("%Y-%m"))
    keep = services.settings.kpi_fold_seconds
    kept = _CACHE.get(key)
    if kept is not None and time.monotonic() - kept[0] < keep:
        return kept[1]
    figures = await run_in_threadpool(
        partial(
            performance,
            services.db,
            now=now,
            threshold=threshold,
            provider_ods=provider_ods,
            definitions=HEADLINE_DEFINITIONS if provider_ods is None else DEFINITIONS,
        )
    )
    if keep:
        if len(_CACHE) > 1000:
            _CACHE.clear()
        _CACHE[key] = (time.monotonic(), figures)
    return figures


@router.get("/performance")
async def performance_page(request: Request, services: ServicesDep) -> Response:
    figures = await _figures(services, None)
    context = {
        **PUBLIC,
        "figures": figures,
        "headline": HEADLINE,
        "sparkline": sparkline,
        "month_words": month_words,
    }
    return render(request, "performance.html", context)


@router.get("/performance/{ods_code}")
async def provider_performance_page(request: Request, ods_code: str, services: ServicesDep) -> Response:
    if not _ODS.match(ods_code):
        raise PageError(404, "There is no provider with this code.")
    figures = await _figures(services, ods_code)
    if not figures.providers:
        raise PageError(404, "There are no figures for a provider with this code.")
    context = {
        **PUBLIC,
        "figures": figures,
        "provider": figures.providers[0],
        "bar_chart": bar_chart,
        "month_words": month_words,
        "common_rules": COMMON_RULES,
    }
    return render(request, "performance_provider.html", context)
