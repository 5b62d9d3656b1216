"""Domain rules of the gateway: intake, status, routing decisions. No web framework, no SQL strings."""
