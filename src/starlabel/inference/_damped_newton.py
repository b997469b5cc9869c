r"""The one damped Newton / Levenberg–Marquardt loop, for many small problems under ``vmap``.

Every per-star fit in starlabel (the Cannon test step, the RV/continuum and binary
fits, the Payne and flux-model test steps, the Lux latents, the Laplace mode and the
mixture-model modes) is this loop with its own objective and its own damping
constants. The caller describes the local quadratic model of its objective ``L``,

.. math:: L(x + \delta) \approx L(x) + 2 g^\top \delta + \delta^\top M \delta,

by ``linearise(x) -> (g, M)`` (or, where loss, gradient and curvature share most of
their work, by one ``evaluate(x) -> (L, g, M)`` carried from step to step: see
:func:`damped_newton`) (for a χ² that is ``g = Jᵀ W (m − f)`` and
``M = Jᵀ W J``, i.e. half the gradient and half the Gauss–Newton Hessian; for a
negative log density ``L = −2 log p``, ``g`` is its gradient and ``M`` its Hessian).
Each iteration solves ``(M + λ D) δ = −g`` on the free, unblocked parameters, projects
``x + δ`` into the box ``[lower, upper]``, and keeps it when ``L`` does not increase.
The damping rule (``λ`` and ``D``) and the linear solver are arguments, as optimistix
takes its descents and searches. Convergence is declared when the Newton decrement
``gᵀ M⁻¹ g`` — the decrease of ``L`` a full undamped step would predict — is at most
``tol``, or when an accepted step changed ``L`` by less than ``atol + rtol·|L|``.

Why a hand-written loop and not ``optimistix.LevenbergMarquardt``: (1) the Cannon step
works on each spectrum's sufficient statistics (terms × terms), not on pixel
residuals; on those same statistics, written as residuals ``Lᵀv − L⁻¹g`` and vmapped
over 2,048 spectra, ``optimistix.LevenbergMarquardt`` took 5.6× the wall time and 14×
the CPU time of this loop (``benchmarks/results/solver_optimistix.json``, a busy
2-core machine); (2) bounds are enforced by projection with the active constraints
removed from the step, and frozen parameters are pinned, neither of which optimistix's
least-squares solvers offer;
(3) the small systems are solved by an unrolled Cholesky (:func:`cholesky_solve`),
which XLA's CPU runtime runs as straight-line code inside the batched ``while_loop``.
General-purpose MAP fits over parameter pytrees go through optimistix instead
(:func:`starlabel.inference.fit_map`, :func:`starlabel.inference.fit_least_squares`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "Marquardt",
    "DampedNewtonState",
    "damped_newton",
    "cholesky_solve",
    "eigh_solve",
    "pin_inactive",
]

Vector = Float[Array, " n"]
Matrix = Float[Array, "n n"]


class Marquardt(eqx.Module):
    """Damping rule: ``λ`` and the diagonal ``D`` that scales it.

    After an accepted step ``λ ← max(shrink·λ, smallest)``, after a rejected one
    ``λ ← grow·λ``; the fit is *stalled* once ``λ`` exceeds ``largest`` (no damping
    finds a better point). ``D = max(|diag M| + offset, 1e-12·max|diag M|)``:
    Marquardt's scaling (``offset = 0``) makes the damped step invariant to the units of
    each parameter; ``offset > 0`` adds Levenberg's identity term, which keeps ``D``
    positive where an exact Hessian has a non-positive diagonal. ``initial = 0``,
    ``shrink = grow = 1`` is an undamped Newton method that only refuses uphill steps.
    """

    initial: float = eqx.field(static=True, default=1e-3)
    shrink: float = eqx.field(static=True, default=0.2)
    grow: float = eqx.field(static=True, default=10.0)
    smallest: float = eqx.field(static=True, default=1e-10)
    largest: float = eqx.field(static=True, default=1e16)
    offset: float = eqx.field(static=True, default=0.0)

    def diagonal(self, matrix: Matrix) -> Vector:
        """The damping diagonal ``D`` for the (pinned) curvature ``matrix``."""
        diag = jnp.abs(jnp.diagonal(matrix))
        return jnp.maximum(diag + self.offset, 1e-12 * jnp.max(diag) + 1e-300)

    def update(self, damping: Float[Array, ""], accepted: Bool[Array, ""]) -> Float[Array, ""]:
        """``λ`` after a step that was (or was not) accepted."""
        return jnp.where(accepted, jnp.maximum(damping * self.shrink, self.smallest), damping * self.grow)


class DampedNewtonState(eqx.Module):
    """Where :func:`damped_newton` stopped (batched under ``vmap``).

    Attributes
    ----------
    x : Float[Array, " n"]
        The parameters.
    loss : Float[Array, ""]
        ``L(x)``, carried by adding each accepted change to ``L(x0)``.
    damping : Float[Array, ""]
        The final ``λ``.
    iteration : Int[Array, ""]
        Steps taken (the step that finds convergence is not counted).
    converged : Bool[Array, ""]
        The Newton decrement fell to ``tol``, or an accepted step changed ``L`` by
        less than ``atol + rtol·|L|``.
    stalled : Bool[Array, ""]
        ``λ`` passed the damping rule's ``largest``.
    grad, curvature : arrays, shapes (n,) and (n, n), or None
        With ``evaluate``: ``g`` and ``M`` at ``x`` (unpinned), carried between steps so
        each step evaluates only its trial point. None otherwise.
    """

    x: Vector
    loss: Float[Array, ""]
    damping: Float[Array, ""]
    iteration: Int[Array, ""]
    converged: Bool[Array, ""]
    stalled: Bool[Array, ""]
    grad: Vector | None = None
    curvature: Matrix | None = None


def pin_inactive(
    A: Float[Array, "*batch n n"],
    b: Float[Array, "*batch n"],
    active: Bool[Array, "*batch n"],
) -> tuple[Float[Array, "*batch n n"], Float[Array, "*batch n"]]:
    """Restrict linear systems to their active unknowns (censored terms, frozen labels).

    Inactive rows/columns become the identity with a zero right-hand side, so those
    unknowns solve to exactly 0 and the rest of the system is untouched.
    """
    both = active[..., :, None] & active[..., None, :]
    eye = jnp.broadcast_to(jnp.eye(A.shape[-1], dtype=A.dtype), A.shape)
    A = jnp.where(both, A, 0.0) + jnp.where(active[..., :, None], 0.0, eye)
    return A, jnp.where(active, b, 0.0)


def damped_newton(
    loss: Callable[[Vector], Float[Array, ""]] | None,
    linearise: Callable[[Vector], tuple[Vector, Matrix] | tuple[Vector, Matrix, Any]] | None,
    x0: Vector,
    *,
    damping: Marquardt,
    max_steps: int | Int[Array, ""],
    tol: float,
    solve: Callable[[Matrix, Vector], Vector] | None = None,
    change: Callable[[Vector, Vector, Float[Array, ""], Any], Float[Array, ""]] | None = None,
    free: Bool[Array, " n"] | None = None,
    lower: Vector | None = None,
    upper: Vector | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    evaluate: Callable[[Vector], tuple[Float[Array, ""], Vector, Matrix]] | None = None,
) -> DampedNewtonState:
    """Minimise ``loss`` from ``x0`` by damped Newton steps (see the module docstring).

    Parameters
    ----------
    loss : callable or None
        ``loss(x) -> scalar``, evaluated at the (projected) start and, unless ``change``
        is given, at every trial point. None with ``evaluate``.
    linearise : callable or None
        ``linearise(x) -> (g, M)``, shapes ``(n,)`` and ``(n, n)``: half the gradient of
        ``loss`` and half its (Gauss–Newton) Hessian, so that ``gᵀM⁻¹g`` is the
        predicted decrease of ``loss``. It may return a third item, ``aux`` (any pytree
        computed at ``x``), which is handed to ``change``. None with ``evaluate``.
    x0 : Float[Array, " n"]
        The start; projected into ``[lower, upper]`` first.
    damping : Marquardt
        The damping rule.
    max_steps : int or int array
        Step cap (a traced value is allowed: under ``vmap`` each problem has its own).
    tol : float
        Converged when ``|gᵀM⁻¹g| ≤ tol`` (in units of ``loss``); that step is not taken.
        ``tol = 0`` with ``atol = rtol = 0`` runs ``max_steps`` steps.
    solve : callable, optional
        ``solve(A, b) -> A⁻¹b`` for the small systems; default :func:`cholesky_solve`
        (NaN on a non-positive-definite matrix, which rejects the step).
    change : callable, optional
        ``change(x, trial, loss_x, aux) -> loss(trial) − loss(x)``, for objectives where
        the difference is computed more accurately than by subtracting two evaluations.
        ``aux`` is the third item ``linearise`` returned at ``x`` (None if it returned
        two), so work both need at ``x`` is done once per step: XLA does not merge the
        two evaluations inside the batched loop (the Cannon's label vector ``v(x)``
        computed twice cost 4 more kernels per step and made its test step 20 % slower
        on one core).
    free : Bool[Array, " n"], optional
        Parameters allowed to move (default all).
    lower, upper : Float[Array, " n"], optional
        Box bounds (may be ±inf). A parameter on a bound whose descent direction points
        outwards is removed from that step.
    atol, rtol : float
        Also converged when an accepted step changes ``loss`` by less than
        ``atol + rtol·|loss|`` (0 turns this test off).
    evaluate : callable, optional
        ``evaluate(x) -> (loss, g, M)`` in place of ``loss`` and ``linearise``, for
        objectives whose three parts share their expensive work (a residual χ² whose
        Jacobian gives both the model and ``JᵀWJ``). Each step then evaluates only its
        trial point, and the state carries ``g`` and ``M`` of the accepted point
        (``DampedNewtonState.grad``, ``.curvature``), so one iteration costs one
        evaluation where ``loss`` + ``linearise`` cost two.

    Returns
    -------
    DampedNewtonState
    """
    solve = cholesky_solve if solve is None else solve
    if (
        (loss is None or linearise is None)
        if evaluate is None
        else (loss is not None or linearise is not None)
    ):
        raise ValueError("give either `loss` and `linearise`, or `evaluate` (with both None).")
    if free is None:
        free = jnp.ones(x0.shape, dtype=bool)
    bounded = lower is not None or upper is not None
    lower = jnp.full_like(x0, -jnp.inf) if lower is None else lower
    upper = jnp.full_like(x0, jnp.inf) if upper is None else upper

    def change_of(x: Vector, trial: Vector, loss_x: Float[Array, ""], aux: Any) -> Float[Array, ""]:
        assert loss is not None
        if change is None:
            return loss(trial) - loss_x
        return change(x, trial, loss_x, aux)

    def newton(x: Vector, g: Vector, M: Matrix) -> tuple[Bool[Array, " n"], Matrix, Vector, Array]:
        """The step's free unknowns, the pinned system and the Newton decrement ``gᵀM⁻¹g``."""
        use = free
        if bounded:
            # A parameter pinned at a bound with the descent direction pointing outwards
            # is an active constraint: drop it from this step.
            blocked = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
            use = free & ~blocked
        M, r = pin_inactive(M, g, use)
        decrement = r @ solve(M, r)
        return use, M, r, jnp.isfinite(decrement) & (jnp.abs(decrement) <= tol)

    def step(state: DampedNewtonState) -> DampedNewtonState:
        aux = None
        if evaluate is None:
            assert linearise is not None
            local = linearise(state.x)
            g, M = local[0], local[1]
            if len(local) == 3:
                aux = local[2]
        else:
            assert state.grad is not None and state.curvature is not None
            g, M = state.grad, state.curvature
        use, M, r, at_minimum = newton(state.x, g, M)
        delta = solve(M + state.damping * jnp.diag(damping.diagonal(M)), -r)
        trial = state.x + jnp.where(use, delta, 0.0)
        if bounded:
            trial = jnp.clip(trial, lower, upper)
        if evaluate is None:
            delta_loss = change_of(state.x, trial, state.loss, aux)
            carried = None
        else:
            carried = evaluate(trial)
            delta_loss = carried[0] - state.loss
        accept = (delta_loss <= 0) & jnp.isfinite(delta_loss) & ~at_minimum
        small = accept & (jnp.abs(delta_loss) < atol + rtol * jnp.abs(state.loss))
        converged = at_minimum | small
        if carried is None:
            new_loss, grad, curvature = state.loss + delta_loss, None, None
        else:
            assert state.grad is not None and state.curvature is not None
            # The trial's own loss, not a running sum: evaluate's loss is exact.
            new_loss = carried[0]
            grad = jnp.where(accept, carried[1], state.grad)
            curvature = jnp.where(accept, carried[2], state.curvature)
            # The accepted point's g and M are at hand: test it now rather than in a
            # further step, which would evaluate one more (unused) trial point.
            converged = converged | (accept & newton(trial, carried[1], carried[2])[3])
        return DampedNewtonState(
            x=jnp.where(accept, trial, state.x),
            loss=jnp.where(accept, new_loss, state.loss),
            damping=damping.update(state.damping, accept),
            iteration=state.iteration + jnp.where(at_minimum, 0, 1),
            converged=converged,
            stalled=state.damping > damping.largest,
            grad=grad,
            curvature=curvature,
        )

    def cond(state: DampedNewtonState) -> Array:
        return ~(state.converged | state.stalled) & (state.iteration < max_steps)

    if bounded:
        x0 = jnp.clip(x0, lower, upper)
    if evaluate is None:
        assert loss is not None
        loss0, g0, M0 = loss(x0), None, None
        converged0 = jnp.array(False)
    else:
        loss0, g0, M0 = evaluate(x0)
        converged0 = newton(x0, g0, M0)[3]
    init = DampedNewtonState(
        x=x0,
        loss=loss0,
        damping=jnp.asarray(damping.initial, dtype=x0.dtype),
        iteration=jnp.array(0),
        converged=converged0,
        stalled=jnp.array(False),
        grad=g0,
        curvature=M0,
    )
    # A while loop, not a fixed count: under vmap it stops once every problem is done.
    return jax.lax.while_loop(cond, step, init)


def cholesky_solve(matrix: Matrix, vector: Vector) -> Vector:
    """Solve a small symmetric positive-definite system by an unrolled Cholesky.

    The per-star systems are a few to a few tens of unknowns. Written out element by
    element they compile to straight-line code, which (unlike LAPACK calls batched
    under ``vmap`` inside a ``while_loop``) XLA's CPU runtime runs without scheduling
    tasks; we met a reproducible runtime hang with the batched library calls at ≳ 10⁴
    problems. A non-positive pivot gives NaN, which callers treat as failure.
    """
    n = matrix.shape[0]
    lower: dict[tuple[int, int], Array] = {}  # (i, j) -> L_ij for j ≤ i
    for i in range(n):
        for j in range(i + 1):
            total = matrix[i, j]
            for k in range(j):
                total = total - lower[i, k] * lower[j, k]
            if i == j:
                lower[i, j] = jnp.sqrt(total)
            else:
                lower[i, j] = total / lower[j, j]
    forward: list[Array] = []
    for i in range(n):
        total = vector[i]
        for k in range(i):
            total = total - lower[i, k] * forward[k]
        forward.append(total / lower[i, i])
    back: dict[int, Array] = {}
    for i in reversed(range(n)):
        total = forward[i]
        for k in range(i + 1, n):
            total = total - lower[k, i] * back[k]
        back[i] = total / lower[i, i]
    return jnp.stack([back[i] for i in range(n)])


def eigh_solve(matrix: Matrix, vector: Vector) -> Vector:
    """``|M|⁻¹ b`` through the eigendecomposition: a Newton step that stays a descent step.

    Eigenvalues are replaced by their absolute values, floored at 1e-10 of the largest,
    so an indefinite Hessian (far from the mode) still gives a downhill direction.
    """
    values, vectors = jnp.linalg.eigh(matrix)
    values = jnp.maximum(jnp.abs(values), 1e-10 * jnp.max(jnp.abs(values)))
    return vectors @ ((vectors.T @ vector) / values)
