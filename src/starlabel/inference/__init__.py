"""Generic inference over parameter pytrees: MAP, curvature, natural gradients, whitening, NUTS.

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
    from ._map import fit_least_squares as fit_least_squares
    from ._map import fit_map as fit_map
    from ._natural_gradient import NaturalGradient as NaturalGradient
    from ._natural_gradient import NaturalGradientDescent as NaturalGradientDescent
    from ._natural_gradient import scale_by_fisher as scale_by_fisher
    from ._nuts import PosteriorSamples as PosteriorSamples
    from ._nuts import nuts as nuts
    from ._optax import delay as delay
    from ._optax import group_optimisers as group_optimisers
    from ._priors import AbstractLabelPrior as AbstractLabelPrior
    from ._priors import DistributionPrior as DistributionPrior
    from ._priors import FlatPrior as FlatPrior
    from ._priors import GaussianPrior as GaussianPrior
    from ._priors import KDEPrior as KDEPrior
    from ._priors import resolve_prior as resolve_prior
    from ._reparam import WhitenedLogDensity as WhitenedLogDensity
    from ._reparam import Whitening as Whitening
    from ._reparam import whiten as whiten
    from ._solution import RESULTS as RESULTS
    from ._solution import MAPSolution as MAPSolution

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "fisher_information": ("._curvature", "fisher_information"),
        "gaussian_fisher_information": ("._curvature", "gaussian_fisher_information"),
        "hessian": ("._curvature", "hessian"),
        "Args": ("._custom_types", "Args"),
        "LogDensityFn": ("._custom_types", "LogDensityFn"),
        "Params": ("._custom_types", "Params"),
        "ResidualFn": ("._custom_types", "ResidualFn"),
        "effective_sample_size": ("._diagnostics", "effective_sample_size"),
        "split_rhat": ("._diagnostics", "split_rhat"),
        "GaussianApproximation": ("._gaussian", "GaussianApproximation"),
        "NotPositiveDefiniteWarning": ("._gaussian", "NotPositiveDefiniteWarning"),
        "fisher_approximation": ("._gaussian", "fisher_approximation"),
        "gaussian_from_precision": ("._gaussian", "gaussian_from_precision"),
        "laplace_approximation": ("._gaussian", "laplace_approximation"),
        "GridPosterior": ("._grid", "GridPosterior"),
        "grid_posterior": ("._grid", "grid_posterior"),
        "quadrature_nodes": ("._grid", "quadrature_nodes"),
        "fit_least_squares": ("._map", "fit_least_squares"),
        "fit_map": ("._map", "fit_map"),
        "NaturalGradient": ("._natural_gradient", "NaturalGradient"),
        "NaturalGradientDescent": ("._natural_gradient", "NaturalGradientDescent"),
        "scale_by_fisher": ("._natural_gradient", "scale_by_fisher"),
        "PosteriorSamples": ("._nuts", "PosteriorSamples"),
        "nuts": ("._nuts", "nuts"),
        "delay": ("._optax", "delay"),
        "group_optimisers": ("._optax", "group_optimisers"),
        "AbstractLabelPrior": ("._priors", "AbstractLabelPrior"),
        "DistributionPrior": ("._priors", "DistributionPrior"),
        "FlatPrior": ("._priors", "FlatPrior"),
        "GaussianPrior": ("._priors", "GaussianPrior"),
        "KDEPrior": ("._priors", "KDEPrior"),
        "resolve_prior": ("._priors", "resolve_prior"),
        "WhitenedLogDensity": ("._reparam", "WhitenedLogDensity"),
        "Whitening": ("._reparam", "Whitening"),
        "whiten": ("._reparam", "whiten"),
        "RESULTS": ("._solution", "RESULTS"),
        "MAPSolution": ("._solution", "MAPSolution"),
    },
)
