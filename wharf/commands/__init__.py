"""CLI command groups by area; each module has `register(app)` and is registered by `wharf.cli`."""
