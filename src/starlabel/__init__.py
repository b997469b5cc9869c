"""starlabel: data-driven stellar labels from survey spectra, built on JAX."""

from . import data as data
from . import models as models
from ._errors import StarlabelUserError as StarlabelUserError
from ._version import __version__ as __version__
from .data import InferenceResult as InferenceResult
from .data import SpectralDataset as SpectralDataset
from .data import read_dataset as read_dataset
from .data import write_dataset as write_dataset
from .models import load_model as load_model
