"""The store's exceptions: what a database error means to the rest of the gateway."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class AlreadyStored(StoreError):  # noqa: N818  (named for what it says, like KeyError)
    """A row with the same unique key exists (the same message, prescription ID, outbox key...).

    `constraint` names the unique constraint when the database said which; callers look up what
    collided rather than relying on it.
    """

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"already stored ({constraint or 'unique key'})")
        self.constraint = constraint


class StoreUnavailable(StoreError):  # noqa: N818
    """The database could not be used (unreachable, locked too long, a failed statement)."""
