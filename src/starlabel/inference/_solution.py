"""Result codes and the solution object returned by the MAP front-end."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float, Int

from ._custom_types import Params

__all__ = ["RESULTS", "MAPSolution"]


class RESULTS(eqx.Enumeration):
    """Outcome codes shared by every routine in :mod:`starlabel.inference`.

    They are data, not exceptions: under ``jit``/``vmap`` each problem (star) carries its
    own code. ``RESULTS[code]`` gives the message for a concrete scalar code.
    """

    successful = ""
    max_steps_reached = (
        "The optimiser stopped at `max_steps` before meeting its tolerance; raise"
        " `max_steps`, loosen rtol/atol, or start closer (e.g. from a whitened restart)."
    )
    nonfinite = "The objective became NaN or infinite; check the data (ivar, masks) and start."
    solver_failed = "The underlying optimistix solver reported a failure (see its message)."
    not_positive_definite = (
        "The precision (Hessian/Fisher) matrix is not positive definite: the objective is"
        " not at a minimum, or some parameter is unconstrained by the data. Covariances"
        " are NaN."
    )


class MAPSolution(eqx.Module):
    """What :func:`fit_map` and :func:`fit_least_squares` return.

    Attributes
    ----------
    value : pytree
        The parameters at the end of the run, in the structure of ``params0``.
    result : RESULTS
        ``RESULTS.successful`` when the solver met its tolerance with a finite loss.
    loss : Float[Array, ""]
        The minimised objective at ``value`` (negative log density, or ½Σr²).
    num_steps : Int[Array, ""]
        Number of solver steps taken.
    loss_history : Float[Array, " max_steps"]
        Objective after each step; NaN beyond ``num_steps``.
    """

    value: Params
    result: RESULTS
    loss: Float[Array, ""]
    num_steps: Int[Array, ""]
    loss_history: Float[Array, " max_steps"]
