"""The Cannon: spectra as polynomials in stellar labels, trained exactly and fast.

Training solves every pixel's weighted normal equations at once and fits each pixel's
intrinsic scatter by marginal likelihood; the test step runs a batched multi-start
Levenberg–Marquardt on per-spectrum sufficient statistics. Censoring, L1
regularisation, bounds, frozen labels, Fisher covariances, quality flags and k-fold /
leave-one-out cross-validation are included. See ``docs/cannon.md``.
"""

from ._censor import censor_from_windows as censor_from_windows
from ._crossval import CrossValidation as CrossValidation
from ._crossval import cross_validate as cross_validate
from ._flux_model import PolynomialSpectrum as PolynomialSpectrum
from ._l1 import lasso_coordinate_descent as lasso_coordinate_descent
from ._l1 import lasso_fista as lasso_fista
from ._map import prepare_calibration_test_step as prepare_calibration_test_step
from ._model import Cannon as Cannon
from ._model import FittedCannon as FittedCannon
from ._vectorizer import PolynomialVectorizer as PolynomialVectorizer
