"""`starlabel demo`: the embedded default end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import _CompilationCache, _use_compilation_cache, _user_errors, app, console


# ----------------------------------------------------------------------------- demo
@app.command()
@_user_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the demo's models, tables, plots and summary.")
    ] = Path("starlabel-demo"),
    quick: Annotated[bool, typer.Option(help="Smaller data and fewer epochs (for tests).")] = False,
    real: Annotated[bool, typer.Option(help="Also run on the shared real APOGEE giants when found.")] = True,
    compilation_cache: _CompilationCache = True,
) -> None:
    """Run the embedded default end to end: simulate, train, infer, evaluate, plot."""
    _use_compilation_cache(compilation_cache)
    from ..demo import run_demo

    summary = run_demo(out, quick=quick, real=real, console=console())
    typer.echo(summary.text)
    typer.echo(f"\nplots, tables and summary written to {out}/ (summary: {summary.path})")
