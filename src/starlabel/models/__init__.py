"""Spectral model families (Cannon, Lux, NN) behind one protocol, and model files."""

from ._io import FORMAT_VERSION as FORMAT_VERSION
from ._io import load_model as load_model
from ._io import read_model_header as read_model_header
from ._io import register_model_kind as register_model_kind
from ._io import save_model as save_model
from ._posterior import LinearPredictionVariance as LinearPredictionVariance
from ._posterior import posterior_infer as posterior_infer
from ._posterior import training_prediction_variance as training_prediction_variance
from .base import AbstractFittedModel as AbstractFittedModel
from .base import AbstractGenerativeModel as AbstractGenerativeModel
from .base import AbstractSpectralModel as AbstractSpectralModel
