"""Storage: SQLModel tables, the database handle and Alembic migrations."""
