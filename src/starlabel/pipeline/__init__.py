"""starlabel.pipeline (see docs/architecture.md)."""
