"""Alembic environment: runs on the connection the gateway hands over (see `Database.migrate`)."""

from alembic import context
from sqlmodel import SQLModel

import auth.models  # noqa: F401  (registers auth's tables on the same metadata)
import gateway.store.models  # noqa: F401  (registers the tables on the metadata)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
context.run_migrations()
