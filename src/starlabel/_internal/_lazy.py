"""Package attributes that import their module on first use (PEP 562).

``starlabel --help`` must answer before JAX, astropy or matplotlib load (each costs
0.3–1.5 s), so the package ``__init__`` files that the command line passes through
name some exports lazily. Each such ``__init__`` still lists every public name,
under ``if TYPE_CHECKING:``, so type checkers and readers see the same contract.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, str | None]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for names imported on first use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : mapping of str to (str, str or None)
        Public name -> (relative module such as ``"._plots"``, attribute in it, or None
        for the module itself).

    Returns
    -------
    (__getattr__, __dir__)
        Assign both at module level. A resolved name is stored in the package's
        namespace, so later look-ups cost nothing.
    """

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
