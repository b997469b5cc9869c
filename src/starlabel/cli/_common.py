"""What every command shares: the app, exit codes, error mapping, common options."""

from __future__ import annotations

import datetime
import functools
import gc
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .._errors import StarlabelUserError
from .._version import __version__

if TYPE_CHECKING:
    from rich.console import Console

# Plain (click) help and usage errors: typer's rich formatting imports rich's Markdown,
# Syntax and Traceback renderers, about 40 % of `starlabel --help` (issue 16: ≤ 0.3 s).
app = typer.Typer(
    name="starlabel",
    help="Data-driven stellar labels from survey spectra (The Cannon, Lux, NN) on JAX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
train_app = typer.Typer(
    help="Train a model on a labelled dataset.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(train_app, name="train")


@functools.cache
def console() -> Console:
    """Rich's console on stderr (status spinners), made on first use: not for --help."""
    from rich.console import Console

    return Console(stderr=True)


_F = TypeVar("_F", bound=Callable[..., Any])

EXIT_INCOMPLETE = 1
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_OUT_OF_MEMORY = 4

# What starlabel raises for bad files, keys, labels and option values. TypeError and
# RuntimeError are not here: inside the library they mean a bug, which must not be
# reported as if the user's input were wrong.
_USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    ValueError,
    StarlabelUserError,  # e.g. pipeline.RunMismatchError: a restart with other options
)


def _write_crash_log(command: str, error: BaseException) -> Path | None:
    """Write the traceback of an internal error to a new log file; None if that fails."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    header = f"starlabel {__version__}, command {command!r}, {stamp}\nargv: {sys.argv!r}\n\n"
    text = header + "".join(traceback.format_exception(error))
    from .._internal._compile_cache import default_cache_dir  # (imports jax: only on a crash)

    try:
        folder = default_cache_dir() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"starlabel-{command}-{stamp}-{os.getpid()}.log"
        path.write_text(text)
    except OSError:
        return None
    return path


def _is_out_of_memory(error: BaseException) -> bool:
    """True for Python's MemoryError and XLA's RESOURCE_EXHAUSTED (host or device memory)."""
    if isinstance(error, MemoryError):
        return True
    # Matched by name and message so that this check never imports jax.
    return type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in str(
        error
    )


def _user_errors(fn: _F) -> _F:
    """Map exceptions to the documented exit codes (module docstring).

    User errors become one line and exit code 2; running out of memory is not a bug
    but a size to reduce, so it gets one line and exit code 4; anything else is a
    bug: a short message, the traceback in a log file, exit code 3.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as error:
            message = error.args[0] if error.args else repr(error)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=EXIT_USER_ERROR) from None
        except Exception as error:
            if type(error).__module__.split(".")[0] in ("typer", "click"):
                raise  # a command's own exit code or usage error (typer's Exit is a RuntimeError)
            if _is_out_of_memory(error):
                detail = str(error).splitlines()[0] if str(error) else type(error).__name__
                typer.echo(
                    f"error: out of memory in `{fn.__name__}` ({detail}). Process less at once "
                    "(a smaller `infer --chunk-size`, fewer spectra or pixels per file) "
                    "or use a machine with more memory.",
                    err=True,
                )
                raise typer.Exit(code=EXIT_OUT_OF_MEMORY) from None
            path = _write_crash_log(fn.__name__, error)
            where = f"traceback written to {path}" if path else "".join(traceback.format_exception(error))
            typer.echo(
                f"internal error (a bug in starlabel, not in your input): {type(error).__name__}: {error}\n"
                f"{where}\nPlease report it with that traceback.",
                err=True,
            )
            raise typer.Exit(code=EXIT_INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


_CACHE_HELP = (
    "Keep compiled code on disk and reuse it in later runs"
    " ($STARLABEL_CACHE_DIR/jax or ~/.cache/starlabel/jax); results do not change."
)
_CompilationCache = Annotated[bool, typer.Option(help=_CACHE_HELP)]


def _use_compilation_cache(enabled: bool) -> None:
    """Switch on JAX's persistent compilation cache before the command computes anything."""
    if enabled:
        from .._internal._compile_cache import enable_compilation_cache

        enable_compilation_cache()
    startup_done()


def startup_done() -> None:
    """Collect cyclic garbage again, the start-up's objects frozen out of it (see ``main``)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _split_labels(labels: str | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    names = tuple(n.strip() for n in labels.split(",") if n.strip())
    if not names:
        raise ValueError("--labels is empty; give comma-separated names such as teff,logg,m_h.")
    return names


def _version_callback(value: bool | None) -> None:
    if value:
        typer.echo(f"starlabel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Data-driven stellar labels from survey spectra."""
