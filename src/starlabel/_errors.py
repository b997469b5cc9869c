"""Errors caused by the user's input or options, as opposed to bugs in starlabel.

The command line reports these (and ``FileNotFoundError``, ``FileExistsError``,
``KeyError`` and ``ValueError``, which starlabel raises for bad files, keys, labels
and option values) as one line with exit code 2. Anything else is treated as a
bug: the CLI writes the traceback to a log file and exits with code 3.
"""

from __future__ import annotations

__all__ = ["LaplaceUnavailableError", "MissingExtraError", "StarlabelUserError", "UnsupportedOptionError"]


class StarlabelUserError(Exception):
    """Base class of starlabel's errors that the user's input or options caused.

    The message names the culprit (file, key, label or option) and the fix. Specific
    subclasses also derive from the builtin type that callers may already catch, so
    ``except NotImplementedError`` keeps working.
    """


class UnsupportedOptionError(StarlabelUserError, NotImplementedError):
    """A combination of options that a method does not support (the message says what does)."""


class LaplaceUnavailableError(StarlabelUserError, RuntimeError):
    """The Laplace approximation does not exist for this data (Hessian not positive definite)."""


class MissingExtraError(StarlabelUserError, ImportError):
    """An optional dependency is not installed (the message names the pip extra)."""
