"""Package attributes that import their module on first use (PEP 562).

``starlabel --help`` must answer before JAX, astropy or matplotlib load (each costs
0.3–1.5 s), so the package ``__init__`` files that the command line passes through
name some exports lazily. Such an ``__init__`` lists those exports as ordinary
re-exports under ``if TYPE_CHECKING:``, which type checkers and readers see as the
package's contract, and ends with::

    __getattr__, __dir__ = lazy_exports(__name__, __file__)

:func:`lazy_exports` reads that block (one source of truth, no second list of names)
and imports a name's module the first time the name is looked up.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports"]


def _source(package: str, init_file: str) -> str:
    """The package ``__init__``'s source, through its loader (works from a zip too)."""
    loader = getattr(sys.modules.get(package), "__loader__", None)
    get_source = getattr(loader, "get_source", None)
    source = get_source(package) if get_source is not None else None
    return source if source is not None else Path(init_file).read_text(encoding="utf-8")


def _type_checking_exports(package: str, init_file: str) -> dict[str, tuple[str, str | None]]:
    """Name -> (relative module, attribute or None for a submodule) from ``if TYPE_CHECKING:``."""
    tree = ast.parse(_source(package, init_file))
    exports: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if not (
            isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        ):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom) or statement.level == 0:
                continue
            prefix = "." * statement.level
            for alias in statement.names:
                public = alias.asname or alias.name
                if statement.module is None:  # from . import data as data: a submodule
                    exports[public] = (prefix + alias.name, None)
                else:
                    exports[public] = (prefix + statement.module, alias.name)
    return exports


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for the names under ``if TYPE_CHECKING:``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    init_file : str
        The package's ``__file__``; its ``if TYPE_CHECKING:`` block of relative
        ``from .module import name as name`` lines lists the lazy exports.

    Returns
    -------
    (__getattr__, __dir__)
        Assign both at module level. A resolved name is stored in the package's
        namespace, so later look-ups cost nothing.
    """
    exports = _type_checking_exports(package, init_file)

    def __getattr__(name: str) -> Any:
        try:
            module_name, attribute = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module = importlib.import_module(module_name, package)
        value = module if attribute is None else getattr(module, attribute)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
