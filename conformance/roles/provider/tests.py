"""Provider role tests (registered on import)."""
