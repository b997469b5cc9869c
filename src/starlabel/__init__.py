"""starlabel: data-driven stellar labels from survey spectra, built on JAX.

The names below load on first use (PEP 562; see ``_internal/_lazy.py``), so that
``import starlabel`` and ``starlabel --help`` do not import JAX and the scientific
stack. ``starlabel.read_dataset``, ``starlabel.data`` … behave as ordinary attributes.
"""

from typing import TYPE_CHECKING

from ._errors import StarlabelUserError as StarlabelUserError
from ._internal._lazy import lazy_exports
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from . import data as data
    from . import models as models
    from .data import InferenceResult as InferenceResult
    from .data import SpectralDataset as SpectralDataset
    from .data import read_dataset as read_dataset
    from .data import write_dataset as write_dataset
    from .models import load_model as load_model

__getattr__, __dir__ = lazy_exports(__name__, __file__)
