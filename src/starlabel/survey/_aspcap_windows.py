"""ASPCAP's per-element wavelength windows: where each element's abundance is measured.

ASPCAP fits each element's abundance only inside that element's windows: pixels
where the element's lines dominate the spectrum's response (Holtzman et al. 2015;
García Pérez et al. 2016). The same windows censor a data-driven model (Casey et al.
2016): an abundance label may change the flux only inside its windows, so it cannot
borrow information from lines of other, correlated elements.

The windows come as one integer per pixel on the DR13–17 gap-removed grid (apStar
pixels [246, 3274) ∪ [3585, 6080) ∪ [6344, 8335), 7,514 pixels), in which bit ``i``
set means "inside the windows of :data:`ASPCAP_WINDOW_ELEMENTS` [i]" (the DR14–17
``l31c`` window set as astroNN distributes it, ``aspcap_l31c_masks.npy``). starlabel
does not ship the file; :func:`aspcap_window_file` finds it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import shared_data_dir
from ._grids import APSTAR_LOG10_START, APSTAR_LOG10_STEP, resolve_grid

__all__ = [
    "ASPCAP_WINDOW_ELEMENTS",
    "ASPCAP_WINDOW_FILE",
    "aspcap_window_file",
    "aspcap_window_masks",
    "aspcap_windows",
    "aspcap_censor",
    "label_element",
]

ASPCAP_WINDOW_ELEMENTS: tuple[str, ...] = (
    "C", "CI", "N", "O", "Na", "Mg", "Al", "Si", "P", "S", "K", "Ca", "Ti", "TiII",
    "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Ge", "Ce", "Rb", "Y", "Nd",
)  # fmt: skip
"""Element of each bit of the window codes: bit ``i`` is element ``i``. ``C`` is carbon
from its molecules (CO, CN), ``CI`` neutral atomic carbon, ``TiII`` ionised titanium."""

ASPCAP_WINDOW_FILE = "aspcap_l31c_masks.npy"
"""Name of the window-code file in astroNN's package data."""
_SHARED_NAME = "astronn_aspcap_l31c_masks.npy"
_GRID = "dr17"

_FIND_HELP = (
    "starlabel does not ship the ASPCAP windows. Pass path= (or --censor FILE.npy), the file"
    f" {ASPCAP_WINDOW_FILE} from astroNN's package data (pip install astroNN: astroNN/data/"
    f"{ASPCAP_WINDOW_FILE}; https://github.com/henrysky/astroNN), or set STARLABEL_SHARED_DATA to a"
    f" folder with apogee/{_SHARED_NAME}."
)


def aspcap_window_file(path: str | Path | None = None) -> Path:
    """Locate the ASPCAP window-code file.

    Looks at ``path`` if given, else the shared data folder
    (``$STARLABEL_SHARED_DATA/apogee/astronn_aspcap_l31c_masks.npy``), else an installed
    astroNN's package data (found without importing astroNN).

    Raises
    ------
    FileNotFoundError
        When no file is found; the message says where to get one.
    """
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise FileNotFoundError(f"ASPCAP window file {str(found)!r} does not exist. {_FIND_HELP}")
        return found
    candidates = []
    shared = shared_data_dir()
    if shared is not None:
        candidates.append(shared / "apogee" / _SHARED_NAME)
    spec = importlib.util.find_spec("astroNN")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / ASPCAP_WINDOW_FILE for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no ASPCAP window file found. {_FIND_HELP}")


def _element_index(element: str) -> int:
    lowered = [e.lower() for e in ASPCAP_WINDOW_ELEMENTS]
    key = {"c1": "ci", "ti2": "tiii"}.get(element.strip().lower(), element.strip().lower())
    if key not in lowered:
        raise ValueError(f"unknown ASPCAP window element {element!r}; known: {list(ASPCAP_WINDOW_ELEMENTS)}.")
    return lowered.index(key)


def _codes(path: str | Path | None) -> np.ndarray:
    file = aspcap_window_file(path)
    codes = np.load(file, allow_pickle=False)
    n = resolve_grid(_GRID).n_pixels
    if codes.shape != (n,) or codes.dtype.kind not in "iu":
        raise ValueError(
            f"{str(file)!r} holds {codes.dtype} of shape {codes.shape}; ASPCAP window codes are one"
            f" integer per pixel of the DR13–17 grid, shape ({n},)."
        )
    return codes.astype(np.int64)


def aspcap_window_masks(
    elements: Sequence[str] | None = None, *, path: str | Path | None = None
) -> dict[str, np.ndarray]:
    """Each element's window pixels on the DR13–17 grid (7,514 pixels).

    Parameters
    ----------
    elements : sequence of str, optional
        Element names from :data:`ASPCAP_WINDOW_ELEMENTS` (any case; ``"c1"``,
        ``"ti2"`` accepted); default all of them.
    path : path, optional
        The window-code file (see :func:`aspcap_window_file`).

    Returns
    -------
    dict of str to ndarray of bool, shape (7514,)
        Keyed by the canonical element name; ``True`` inside the element's windows.
        Convert to another APOGEE grid with :func:`convert_pixel_mask`.
    """
    codes = _codes(path)
    names = ASPCAP_WINDOW_ELEMENTS if elements is None else tuple(elements)
    out = {}
    for name in names:
        k = _element_index(name)
        out[ASPCAP_WINDOW_ELEMENTS[k]] = (codes >> k) & 1 == 1
    return out


def aspcap_windows(
    elements: Sequence[str] | None = None, *, path: str | Path | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Each element's windows as wavelength intervals (Å, vacuum), usable on any grid.

    A run of consecutive window pixels becomes one interval from the lower to the upper
    edge of the run (half a pixel beyond the first and last pixel centre in log λ), so
    that :func:`~starlabel.models.cannon.censor_from_windows` on the DR13–17 grid gives
    back exactly the window pixels, and on another grid (DR12, the simulator's) the
    pixels whose centres fall inside.

    Parameters
    ----------
    elements, path
        As in :func:`aspcap_window_masks`.

    Returns
    -------
    dict of str to list of (start, end)
        Intervals in Å per element; an element with no window pixels gets ``[]``.

    Examples
    --------
    >>> windows = aspcap_windows(["Na"])  # doctest: +SKIP
    >>> [round(a) for a, _ in windows["Na"]]  # doctest: +SKIP
    [16376, 16391]
    """
    pixels = resolve_grid(_GRID).apstar_pixels
    out = {}
    for name, mask in aspcap_window_masks(elements, path=path).items():
        index = np.flatnonzero(mask)
        if index.size == 0:
            out[name] = []
            continue
        breaks = np.flatnonzero(np.diff(pixels[index]) > 1)
        first = pixels[index[np.r_[0, breaks + 1]]]
        last = pixels[index[np.r_[breaks, index.size - 1]]]
        low = 10.0 ** (APSTAR_LOG10_START + APSTAR_LOG10_STEP * (first - 0.5))
        high = 10.0 ** (APSTAR_LOG10_START + APSTAR_LOG10_STEP * (last + 0.5))
        out[name] = [(float(a), float(b)) for a, b in zip(low, high, strict=True)]
    return out


_LABEL = re.compile(r"^(?:x_)?([a-z]+?\d?)(?:_(?:fe|h|m))?$")
_UNCENSORED = {"fe", "m", "alpha", "teff", "logg", "vmicro", "vmacro", "vsini", "rv"}


def label_element(label: str) -> str | None:
    """The ASPCAP window element a label measures, or ``None``.

    ``mg_fe``, ``mg_h``, ``mg_m`` and ``mg`` name Mg; ``ti2_fe`` / ``tiii_fe`` TiII,
    ``c1_fe`` / ``ci_fe`` CI. Overall metallicity (``fe_h``, ``m_h``), ``alpha_fe`` and
    stellar parameters (Teff, logg, vmicro, …) return ``None``: every line responds to
    them, so they are not censored.
    """
    match = _LABEL.match(label.strip().lower())
    if match is None or match.group(1) in _UNCENSORED:
        return None
    try:
        return ASPCAP_WINDOW_ELEMENTS[_element_index(match.group(1))]
    except ValueError:
        return None


def aspcap_censor(
    label_names: Sequence[str], *, path: str | Path | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Censoring windows for a Cannon: each element-abundance label → its ASPCAP windows.

    Labels that name no ASPCAP element (see :func:`label_element`) are left out, so they
    act at every pixel. The result is the ``censor`` argument of
    :class:`~starlabel.models.cannon.Cannon` (it needs training spectra with wavelengths)
    and what ``starlabel train cannon --censor aspcap`` uses.

    Parameters
    ----------
    label_names : sequence of str
        The model's labels, e.g. ``("teff", "logg", "fe_h", "mg_fe", "al_fe")``.
    path : path, optional
        The window-code file (see :func:`aspcap_window_file`).

    Returns
    -------
    dict of str to list of (start, end)
        ``{label: windows in Å}`` for the element labels.

    Raises
    ------
    ValueError
        When no label names an ASPCAP element (censoring would do nothing).
    """
    elements = {name: label_element(name) for name in label_names}
    wanted = {name: e for name, e in elements.items() if e is not None}
    if not wanted:
        raise ValueError(
            f"no label of {list(label_names)} names an ASPCAP window element; element labels look"
            " like mg_fe, al_h or ti2_fe (fe_h, m_h, teff, logg, vmicro are never censored)."
        )
    windows = aspcap_windows(sorted(set(wanted.values())), path=path)
    return {name: windows[element] for name, element in wanted.items()}
