"""Per-stage CLI command modules; each imports only typer at module level."""
