"""L1-regularised per-pixel least squares: two independent convex solvers.

At fixed scatter, training one pixel with an L1 penalty is the lasso problem

    minimise  ½ θᵀ A θ − bᵀ θ + Σ_t λ_t |θ_t|

with ``A = Σ_n ω_n v_n v_nᵀ`` and ``b = Σ_n ω_n f_n v_n`` (ω = inverse total variance),
i.e. the negative log-likelihood plus the penalty. ``λ_t`` is 0 for the constant term.
Both solvers run on all pixels at once (leading axis).

* :func:`lasso_coordinate_descent` — cyclic coordinate descent: each coordinate has a
  closed-form soft-threshold update, so it is exact per step and fast for the ≤ 100
  terms of a Cannon model. The default.
* :func:`lasso_fista` — accelerated proximal gradient with adaptive restart (Beck &
  Teboulle 2009; O'Donoghue & Candès 2015). Slower; used as an independent
  convergence cross-check, like the Cannon tutorial's L-BFGS vs Powell comparison.

References
----------
Friedman, Hastie & Tibshirani (2010), J. Stat. Softw. 33, 1 (coordinate descent).
Beck & Teboulle (2009), SIAM J. Imaging Sci. 2, 183 (FISTA).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

__all__ = ["lasso_coordinate_descent", "lasso_fista", "lasso_objective", "lasso_kkt_violation"]


def _soft(value: Array, threshold: Array) -> Array:
    return jnp.sign(value) * jnp.maximum(jnp.abs(value) - threshold, 0.0)


def lasso_objective(
    A: Float[Array, "pixels terms terms"],
    b: Float[Array, "pixels terms"],
    penalty: Float[Array, "pixels terms"],
    theta: Float[Array, "pixels terms"],
) -> Float[Array, " pixels"]:
    """``½ θᵀAθ − bᵀθ + Σ λ|θ|`` per pixel."""
    quad = 0.5 * jnp.einsum("pt,ptu,pu->p", theta, A, theta)
    return quad - jnp.sum(b * theta, axis=1) + jnp.sum(penalty * jnp.abs(theta), axis=1)


def lasso_kkt_violation(
    A: Float[Array, "pixels terms terms"],
    b: Float[Array, "pixels terms"],
    penalty: Float[Array, "pixels terms"],
    theta: Float[Array, "pixels terms"],
) -> Float[Array, " pixels"]:
    """Largest violation of the lasso optimality conditions per pixel (0 at the optimum).

    With ``g = Aθ − b``: where ``θ_t ≠ 0`` optimality needs ``g_t + λ_t sign θ_t = 0``;
    where ``θ_t = 0`` it needs ``|g_t| ≤ λ_t``.
    """
    grad = jnp.einsum("ptu,pu->pt", A, theta) - b
    nonzero = theta != 0
    violation = jnp.where(
        nonzero, jnp.abs(grad + penalty * jnp.sign(theta)), jnp.maximum(jnp.abs(grad) - penalty, 0.0)
    )
    return jnp.max(violation, axis=1)


class _CDState(eqx.Module):
    theta: Float[Array, "pixels terms"]
    sweep: Int[Array, ""]
    change: Float[Array, ""]


def lasso_coordinate_descent(
    A: Float[Array, "pixels terms terms"],
    b: Float[Array, "pixels terms"],
    penalty: Float[Array, "pixels terms"],
    theta0: Float[Array, "pixels terms"],
    *,
    max_sweeps: int = 5000,
    tol: float = 1e-12,
) -> tuple[Float[Array, "pixels terms"], Int[Array, ""]]:
    """Solve the batched lasso by cyclic coordinate descent, warm-started at ``theta0``.

    Parameters
    ----------
    A : array, shape (pixels, terms, terms)
        Symmetric positive-definite curvature per pixel.
    b : array, shape (pixels, terms)
    penalty : array, shape (pixels, terms)
        Non-negative λ per coefficient (0 leaves a coefficient unpenalised).
    theta0 : array, shape (pixels, terms)
        Starting point (e.g. the unregularised solution).
    max_sweeps : int
        Cap on full passes over the coordinates.
    tol : float
        Stop when no coefficient moved by more than ``tol × (1 + max|θ|)`` in a sweep.

    Returns
    -------
    theta : array, shape (pixels, terms)
    sweeps : int array, shape ()
        Sweeps used (equal to ``max_sweeps`` if it did not converge).
    """
    n_terms = A.shape[-1]
    diag = jnp.diagonal(A, axis1=1, axis2=2)

    def update(t: Int[Array, ""], theta: Array) -> Array:
        row = A[:, t, :]
        rho = b[:, t] - jnp.sum(row * theta, axis=1) + diag[:, t] * theta[:, t]
        return theta.at[:, t].set(_soft(rho, penalty[:, t]) / diag[:, t])

    def body(state: _CDState) -> _CDState:
        new = jax.lax.fori_loop(0, n_terms, update, state.theta)
        change = jnp.max(jnp.abs(new - state.theta) / (1.0 + jnp.max(jnp.abs(new), axis=1, keepdims=True)))
        return _CDState(new, state.sweep + 1, change)

    def cond(state: _CDState) -> Array:
        return (state.sweep < max_sweeps) & (state.change > tol)

    init = _CDState(theta0, jnp.array(0), jnp.array(jnp.inf, dtype=theta0.dtype))
    final = jax.lax.while_loop(cond, body, init)
    return final.theta, final.sweep


class _FistaState(eqx.Module):
    theta: Float[Array, "pixels terms"]
    momentum: Float[Array, "pixels terms"]
    t: Float[Array, " pixels"]
    step: Int[Array, ""]
    change: Float[Array, ""]


def lasso_fista(
    A: Float[Array, "pixels terms terms"],
    b: Float[Array, "pixels terms"],
    penalty: Float[Array, "pixels terms"],
    theta0: Float[Array, "pixels terms"],
    *,
    max_iter: int = 200_000,
    tol: float = 1e-13,
) -> tuple[Float[Array, "pixels terms"], Int[Array, ""]]:
    """Solve the batched lasso by FISTA with gradient-based adaptive restart.

    Same problem and arguments as :func:`lasso_coordinate_descent`; the step is
    ``1/L`` with ``L`` the largest eigenvalue of each pixel's ``A``. Convergence is
    slower (rate set by √cond(A)), which is why it serves as the cross-check.

    Returns
    -------
    theta : array, shape (pixels, terms)
    iterations : int array, shape ()
    """
    lipschitz = jnp.linalg.eigvalsh(A)[:, -1]
    inv_l = (1.0 / lipschitz)[:, None]

    def body(state: _FistaState) -> _FistaState:
        y = state.momentum
        grad = jnp.einsum("ptu,pu->pt", A, y) - b
        new = _soft(y - inv_l * grad, penalty * inv_l)
        # Restart the momentum wherever it points uphill (O'Donoghue & Candès 2015).
        restart = jnp.sum((y - new) * (new - state.theta), axis=1) > 0
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * state.t**2))
        beta = jnp.where(restart, 0.0, (state.t - 1.0) / t_next)
        t_next = jnp.where(restart, 1.0, t_next)
        momentum = new + beta[:, None] * (new - state.theta)
        change = jnp.max(jnp.abs(new - state.theta) / (1.0 + jnp.max(jnp.abs(new), axis=1, keepdims=True)))
        return _FistaState(new, momentum, t_next, state.step + 1, change)

    def cond(state: _FistaState) -> Array:
        return (state.step < max_iter) & (state.change > tol)

    ones = jnp.ones(A.shape[0], dtype=A.dtype)
    init = _FistaState(theta0, theta0, ones, jnp.array(0), jnp.array(jnp.inf, dtype=A.dtype))
    final = jax.lax.while_loop(cond, body, init)
    return final.theta, final.step
