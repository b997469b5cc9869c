"""starlabel.survey (see docs/architecture.md)."""
