"""Trust role tests (registered on import)."""
