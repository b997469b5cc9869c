"""starlabel.mixtures (see docs/architecture.md)."""
