"""The `kullm` command: wires settings, Redis, the worker and the adapters together."""
