"""starlabel.inference (see docs/architecture.md)."""
