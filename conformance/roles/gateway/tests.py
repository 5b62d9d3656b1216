"""The gateway role's tests, registered in the order they run (the import order is the run order)."""
# isort: skip_file

from conformance.roles.gateway import auth  # noqa: F401
from conformance.roles.gateway import intake  # noqa: F401
from conformance.roles.gateway import status  # noqa: F401
from conformance.roles.gateway import cancellation  # noqa: F401
from conformance.roles.gateway import tenancy  # noqa: F401
from conformance.roles.gateway import subscriptions  # noqa: F401
from conformance.roles.gateway import outcomes  # noqa: F401
