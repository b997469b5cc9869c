"""starlabel.evaluate (see docs/architecture.md)."""
