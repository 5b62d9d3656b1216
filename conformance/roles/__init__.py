"""The three roles. `open_role` sets up what a role's tests share, and closes it afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from conformance.config import SuiteConfig
from conformance.model import Role

Say = Callable[[str], None]


@contextmanager
def open_role(
    role: Role, target: str, config: SuiteConfig, *, listen: tuple[str, int] | None, say: Say
) -> Iterator[Any]:
    if role is Role.GATEWAY:
        from conformance.roles.gateway.context import GatewayRun

        gateway = GatewayRun(target, config.gateway)
        try:
            gateway.check_reachable()
            yield gateway
        finally:
            gateway.close()
    elif role is Role.TRUST:
        from conformance.roles.trust.session import TrustSession

        with TrustSession(target, config.trust, say=say) as trust:
            trust.collect()
            yield trust
    else:
        from conformance.roles.provider.session import ProviderSession

        with ProviderSession(target, config.provider, listen=listen, say=say) as provider:
            provider.exercise()
            yield provider
