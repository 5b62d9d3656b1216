"""Provider adapters: one package per protocol, each with the simulator that speaks it."""
