"""The gateway role's tests, registered in the order they run."""

from conformance.roles.gateway import (  # noqa: F401
    auth,
    intake,
    status,
    cancellation,
    tenancy,
    subscriptions,
    outcomes,
)
