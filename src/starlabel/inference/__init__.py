"""Generic inference over parameter pytrees: MAP, damped Newton, curvature, natural gradients, whitening, NUTS.

Everything here consumes a log density ``log_density(params, args) -> scalar`` (or
whitened residuals for least squares / Fisher) and never imports a model, in the way
NumPyro's samplers consume a ``potential_fn``. Models adapt themselves to it; see
``starlabel.models`` and ``docs/uncertainties.md``. Names load on first use, so a
model that needs only curvature does not import blackjax (NUTS).
"""

from typing import TYPE_CHECKING

from .._internal._lazy import lazy_exports

if TYPE_CHECKING:
    from ._curvature import fisher_information as fisher_information
    from ._curvature import gaussian_fisher_information as gaussian_fisher_information
    from ._curvature import hessian as hessian
    from ._custom_types import Args as Args
    from ._custom_types import LogDensityFn as LogDensityFn
    from ._custom_types import Params as Params
    from ._custom_types import ResidualFn as ResidualFn
    from ._damped_newton import DampedNewtonState as DampedNewtonState
    from ._damped_newton import Marquardt as Marquardt
    from ._damped_newton import cholesky_solve as cholesky_solve
    from ._damped_newton import damped_newton as damped_newton
    from ._damped_newton import eigh_solve as eigh_solve
    from ._damped_newton import pin_inactive as pin_inactive
    from ._diagnostics import effective_sample_size as effective_sample_size
    from ._diagnostics import split_rhat as split_rhat
    from ._gaussian import GaussianApproximation as GaussianApproximation
    from ._gaussian import NotPositiveDefiniteWarning as NotPositiveDefiniteWarning
    from ._gaussian import fisher_approximation as fisher_approximation
    from ._gaussian import gaussian_from_precision as gaussian_from_precision
    from ._gaussian import laplace_approximation as laplace_approximation
    from ._grid import GridPosterior as GridPosterior
    from ._grid import grid_posterior as grid_posterior
    from ._grid import quadrature_nodes as quadrature_nodes
    from ._importance import ImportancePosterior as ImportancePosterior
    from ._importance import importance_posterior as importance_posterior
    from ._map import fit_least_squares as fit_least_squares
    from ._map import fit_map as fit_map
    from ._natural_gradient import NaturalGradient as NaturalGradient
    from ._natural_gradient import NaturalGradientDescent as NaturalGradientDescent
    from ._natural_gradient import scale_by_fisher as scale_by_fisher
    from ._nuts import PosteriorSamples as PosteriorSamples
    from ._nuts import nuts as nuts
    from ._optax import delay as delay
    from ._optax import group_optimisers as group_optimisers
    from ._prior_choice import resolve_prior as resolve_prior
    from ._priors import AbstractLabelPrior as AbstractLabelPrior
    from ._priors import DistributionPrior as DistributionPrior
    from ._priors import FlatPrior as FlatPrior
    from ._priors import GaussianPrior as GaussianPrior
    from ._priors import KDEPrior as KDEPrior
    from ._reparam import WhitenedLogDensity as WhitenedLogDensity
    from ._reparam import Whitening as Whitening
    from ._reparam import whiten as whiten
    from ._solution import RESULTS as RESULTS
    from ._solution import MAPSolution as MAPSolution

__getattr__, __dir__ = lazy_exports(__name__, __file__)
