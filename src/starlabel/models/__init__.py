"""Spectral model families (Cannon, Lux, NN, Payne) behind one protocol, and model files.

Names load on first use: ``from starlabel.models.cannon import Cannon`` imports
what the Cannon needs and not the posterior, nuisance and binary machinery.
"""

from typing import TYPE_CHECKING

from .._internal._lazy import lazy_exports

if TYPE_CHECKING:
    from ._binary import BinaryCalibration as BinaryCalibration
    from ._binary import fit_binary as fit_binary
    from ._binary import learn_binary_calibration as learn_binary_calibration
    from ._calibration import ErrorCalibration as ErrorCalibration
    from ._calibration import apply_calibration as apply_calibration
    from ._calibration import cross_validated_calibration as cross_validated_calibration
    from ._calibration import fit_error_calibration as fit_error_calibration
    from ._calibration import model_labels as model_labels
    from ._estimators import infer_nuts as infer_nuts
    from ._estimators import infer_posterior_mean as infer_posterior_mean
    from ._estimators import posterior_flux_model as posterior_flux_model
    from ._infer import infer as infer
    from ._infer import infer_labels as infer_labels
    from ._infer import run_test_step as run_test_step
    from ._io import FORMAT_VERSION as FORMAT_VERSION
    from ._io import MODEL_KINDS as MODEL_KINDS
    from ._io import AbstractCalibratedModel as AbstractCalibratedModel
    from ._io import AbstractSavedModel as AbstractSavedModel
    from ._io import load_model as load_model
    from ._io import model_class as model_class
    from ._io import read_model_header as read_model_header
    from ._io import register_model_kind as register_model_kind
    from ._io import save_model as save_model
    from ._nuisance import infer_with_nuisance as infer_with_nuisance
    from ._posterior import POSTERIOR_METHODS as POSTERIOR_METHODS
    from ._posterior import posterior_infer as posterior_infer
    from ._prediction_variance import LinearPredictionVariance as LinearPredictionVariance
    from ._prediction_variance import training_prediction_variance as training_prediction_variance
    from ._strategies import ESTIMATORS as ESTIMATORS
    from ._strategies import MAP as MAP
    from ._strategies import NUTS as NUTS
    from ._strategies import UNCERTAINTIES as UNCERTAINTIES
    from ._strategies import AbstractEstimator as AbstractEstimator
    from ._strategies import AbstractStrategy as AbstractStrategy
    from ._strategies import AbstractUncertainty as AbstractUncertainty
    from ._strategies import Binary as Binary
    from ._strategies import Fisher as Fisher
    from ._strategies import Laplace as Laplace
    from ._strategies import Nuisance as Nuisance
    from ._strategies import PosteriorMean as PosteriorMean
    from ._strategies import TestStep as TestStep
    from ._strategies import calibration_from_options as calibration_from_options
    from ._strategies import calibration_options as calibration_options
    from ._temperature import TemperatureSelection as TemperatureSelection
    from ._temperature import rescale_uncertainty as rescale_uncertainty
    from ._temperature import select_temperature as select_temperature
    from ._temperature import unfitted_configuration as unfitted_configuration
    from .base import AbstractFittedFluxModel as AbstractFittedFluxModel
    from .base import AbstractFittedModel as AbstractFittedModel
    from .base import AbstractFluxModel as AbstractFluxModel
    from .base import AbstractGenerativeModel as AbstractGenerativeModel
    from .base import AbstractLatentModel as AbstractLatentModel
    from .base import AbstractLinearFittedModel as AbstractLinearFittedModel
    from .base import AbstractLinearFluxModel as AbstractLinearFluxModel
    from .base import AbstractMapStepModel as AbstractMapStepModel
    from .base import AbstractPosteriorFluxModel as AbstractPosteriorFluxModel
    from .base import AbstractSpectralModel as AbstractSpectralModel
    from .base import flux_model_of as flux_model_of
    from .cannon._flux_model import polynomial_spectrum as polynomial_spectrum

__getattr__, __dir__ = lazy_exports(__name__, __file__)
