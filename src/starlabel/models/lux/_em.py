"""Closed-form training for affine Lux models: EM (marginal) or block-coordinate (joint MAP).

With affine transforms every output block stacks into one linear-Gaussian model with
D = Σ_o P_o columns, ``y_n = W z_n + b + ε_n``, ``ε_nd ~ N(0, σ²_nd + t_g(d))``, where
``t_g = s_g²`` is the extra variance of scatter group g (one per pixel, one per output,
or none). Each iteration is three exact steps, all batched linear algebra:

1. **latents** — the posterior of every z_n given (W, b, t) is Gaussian with
   precision Λ_n = I + Wᵀ diag(w_n) W and mean Λ_n⁻¹ Wᵀ w_n∘(y_n − b) (w = 1/V; 0 for
   missing entries). Its mean is also the conditional MAP of z_n.
2. **transform** — per column, a weighted least-squares (ridge from the weight prior)
   solve in (L+1) unknowns, using E[z̃ z̃ᵀ] = Σ_n + μ̃ μ̃ᵀ (EM) or μ̃ μ̃ᵀ (joint MAP).
3. **scatter** — per group, a 1-D maximisation over t ≥ 0 of
   Σ −½[log(σ² + t) + r²/(σ² + t)] − t/(2τ²) (half-normal prior), with
   r² = E[(y − W z − b)²]; solved by a few Fisher-scoring steps.

With ``integrate=True`` (EM) the iteration is an ECM algorithm for the marginal
posterior (latents integrated out), monotone in :func:`marginal_objective`; with
``integrate=False`` it is exact block-coordinate descent on the joint MAP objective.
Stopping looks at the change of the model's predictions and scatter, not the loss:
the loss keeps creeping along nearly flat directions long after predictions settle.

References
----------
Dempster, Laird & Rubin (1977), JRSS B 39, 1 (EM); Meng & Rubin (1993), Biometrika 80,
267 (ECM); Rubin & Thayer (1982), Psychometrika 47, 69 (EM for factor analysis).
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._error_models import AbstractScatter, NoScatter
from ._objective import LOG_2PI, DataBlock, LuxOutput, affine_transform
from ._transforms import AbstractAffineTransform

__all__ = ["EMResult", "supports_closed_form", "fit_closed_form"]

_VAR_FLOOR = 1e-10
"""Smallest extra variance t (scaled units²); keeps w finite when σ² = 0 (exact labels)."""
_SCORING_STEPS = 4


def supports_closed_form(outputs: tuple[LuxOutput, ...]) -> str | None:
    """``None`` if the closed-form solver applies, else the reason why not."""
    for output in outputs:
        if not isinstance(output.transform, AbstractAffineTransform):
            return f"output {output.name!r} has a {type(output.transform).__name__} (not affine)"
        if not isinstance(output.error_model, (AbstractScatter, NoScatter)):
            return f"output {output.name!r} has a {type(output.error_model).__name__}"
    return None


@dataclass(frozen=True)
class _Columns:
    """Static description of the stacked columns (numpy; becomes jit constants)."""

    sizes: tuple[int, ...]
    has_bias: np.ndarray  # (D,) float 0/1
    ridge: np.ndarray  # (D,) 1/τ² of the weight prior, 0 = flat
    weight_log_norm: float  # Σ over weights of (log τ + ½ log 2π)
    group: np.ndarray  # (D,) int, n_groups = no scatter
    n_groups: int
    group_prior_precision: np.ndarray  # (n_groups + 1,)
    scatter_log_norm: float  # Σ over scatter params of (log τ − ½ log(2/π))


def _describe(outputs: tuple[LuxOutput, ...], latent_size: int) -> _Columns:
    has_bias, ridge, group, precisions = [], [], [], []
    weight_log_norm = scatter_log_norm = 0.0
    n_groups = 0
    sizes = []
    for output in outputs:
        transform = affine_transform(output)
        size = transform.initialised_weight().shape[0]
        sizes.append(size)
        has_bias.append(np.full(size, float(transform.has_bias)))
        tau = transform.prior_scale
        ridge.append(np.full(size, 0.0 if tau is None else 1.0 / tau**2))
        if tau is not None:
            weight_log_norm += size * latent_size * (np.log(tau) + 0.5 * LOG_2PI)
        model = output.error_model
        if isinstance(model, AbstractScatter):
            n_params = size if model.per_column else 1
            ids = n_groups + (np.arange(size) if model.per_column else np.zeros(size, dtype=int))
            group.append(ids)
            precisions.append(np.full(n_params, 1.0 / model.prior_scale**2))
            scatter_log_norm += n_params * (np.log(model.prior_scale) - 0.5 * np.log(2.0 / np.pi))
            n_groups += n_params
        else:
            group.append(np.full(size, -1))
    group_all = np.concatenate(group)
    group_all[group_all < 0] = n_groups
    return _Columns(
        sizes=tuple(sizes),
        has_bias=np.concatenate(has_bias),
        ridge=np.concatenate(ridge),
        weight_log_norm=float(weight_log_norm),
        group=group_all,
        n_groups=n_groups,
        group_prior_precision=np.concatenate([*precisions, np.zeros(1)]),
        scatter_log_norm=float(scatter_log_norm),
    )


class _Stacked(eqx.Module):
    values: Float[Array, "stars columns"]
    reported_var: Float[Array, "stars columns"]
    observed: Bool[Array, "stars columns"]
    coefficient: Float[Array, " columns"]
    has_bias: Float[Array, " columns"]
    ridge: Float[Array, " columns"]
    group: Int[Array, " columns"]
    group_prior_precision: Float[Array, " groups"]


class _Params(eqx.Module):
    weight: Float[Array, "columns latents"]
    bias: Float[Array, " columns"]
    extra_var: Float[Array, " groups"]


class _State(eqx.Module):
    params: _Params  # θ, the iterate
    first: _Params  # F(θ)
    second: _Params  # F(F(θ))
    loss: Float[Array, ""]  # objective at θ
    prediction: Float[Array, "stars columns"]  # predictions at θ
    phase: Int[Array, ""]  # which of the three EM maps of a SQUAREM step is next
    step: Int[Array, ""]
    change: Float[Array, ""]
    history: Float[Array, " steps"]


class EMResult(eqx.Module):
    """Outcome of :func:`fit_closed_form` (internal)."""

    outputs: tuple[LuxOutput, ...]
    latents: Float[Array, "stars latents"]
    latent_cov: Float[Array, "stars latents latents"]
    history: Float[Array, " steps"]
    n_steps: Int[Array, ""]
    converged: Bool[Array, ""]
    change: Float[Array, ""]


def _e_step(state: _Params, data: _Stacked, integrate: bool):
    extra = state.extra_var[data.group] * data.coefficient
    var = data.reported_var + extra[None, :]
    w = jnp.where(data.observed, 1.0 / var, 0.0)
    resid = jnp.where(data.observed, data.values - state.bias[None, :], 0.0)
    latent_size = state.weight.shape[1]
    precision = jnp.eye(latent_size)[None, :, :] + jnp.einsum("nd,di,dj->nij", w, state.weight, state.weight)
    info = jnp.einsum("nd,di->ni", w * resid, state.weight)
    chol = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((chol, True), info[..., None])[..., 0]
    eye = jnp.broadcast_to(jnp.eye(latent_size), precision.shape)
    cov = jax.scipy.linalg.cho_solve((chol, True), eye)
    log_var = jnp.where(data.observed, jnp.log(var) + LOG_2PI, 0.0)
    if integrate:
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)))
        nll = 0.5 * (jnp.sum(log_var) + jnp.sum(w * resid**2) - jnp.sum(info * mean) + log_det)
    else:
        fit_resid = resid - mean @ state.weight.T
        nll = 0.5 * (jnp.sum(log_var) + jnp.sum(w * fit_resid**2) + jnp.sum(mean**2) + mean.size * LOG_2PI)
    return w, mean, cov, nll


def _m_step_transform(state: _Params, data: _Stacked, w, mean, cov, integrate: bool):
    second = mean[:, :, None] * mean[:, None, :]
    if integrate:
        second = second + cov
    latent_size = mean.shape[1]
    gram_zz = jnp.einsum("nd,nij->dij", w, second) + data.ridge[:, None, None] * jnp.eye(latent_size)[None]
    gram_z1 = jnp.einsum("nd,ni->di", w, mean) * data.has_bias[:, None]
    # Columns without an intercept get the equation b = 0; the tiny jitter keeps columns
    # that no training star observes solvable (their weights shrink to 0).
    gram_11 = jnp.sum(w, axis=0) * data.has_bias + (1.0 - data.has_bias) + 1e-12
    top = jnp.concatenate([gram_zz, gram_z1[:, :, None]], axis=2)
    bottom = jnp.concatenate([gram_z1, gram_11[:, None]], axis=1)[:, None, :]
    gram = jnp.concatenate([top, bottom], axis=1)
    wy = w * data.values
    rhs = jnp.concatenate(
        [jnp.einsum("nd,ni->di", wy, mean), (jnp.sum(wy, axis=0) * data.has_bias)[:, None]], axis=1
    )
    solution = jnp.linalg.solve(gram, rhs[..., None])[..., 0]
    return solution[:, :latent_size], solution[:, latent_size]


def _m_step_scatter(extra_var, weight, bias, data: _Stacked, mean, cov, integrate: bool, n_groups: int):
    resid = jnp.where(data.observed, data.values - mean @ weight.T - bias[None, :], 0.0)
    resid2 = resid**2
    if integrate:
        resid2 = resid2 + jnp.einsum("di,nij,dj->nd", weight, cov, weight)
    segments = n_groups + 1

    coef = data.coefficient

    def scoring(t, _):
        var = data.reported_var + (t[data.group] * coef)[None, :]
        w = jnp.where(data.observed, 1.0 / var, 0.0)
        grad = jax.ops.segment_sum(coef * jnp.sum(resid2 * w**2 - w, axis=0), data.group, segments)
        grad = grad - data.group_prior_precision
        info = jax.ops.segment_sum(coef**2 * jnp.sum(w**2, axis=0), data.group, segments)
        t_new = jnp.maximum(t + grad / jnp.maximum(info, 1e-300), _VAR_FLOOR)
        return t_new.at[n_groups].set(0.0), None

    extra_var, _ = jax.lax.scan(scoring, extra_var, None, length=_SCORING_STEPS)
    return extra_var


def _sqrtm(matrix, inverse: bool = False):
    values, vectors = jnp.linalg.eigh(matrix)
    values = jnp.maximum(values, 1e-300)
    power = -0.5 if inverse else 0.5
    return (vectors * values[None, :] ** power) @ vectors.T


def _balance(weight, mean, ridge):
    """Rescale (W, Z) → (W R⁻¹, Z Rᵀ) to minimise the Gaussian prior terms; predictions stay.

    R minimises ½Σ|z_n|² + ½Σ_d ridge_d |W_d|² while W z is unchanged.

    Writing M = RᵀR the prior terms are ½ tr(M S_z) + ½ tr(M⁻¹ S_w), with S_z = ZᵀZ and
    S_w = Σ_d ridge_d W_dᵀ W_d, minimised by the matrix geometric mean
    M = S_z^{-½} (S_z^{½} S_w S_z^{½})^{½} S_z^{-½}. Without this step, joint-MAP
    block-coordinate descent crawls along the scale trade-off between latents and weights
    (each block is optimal given the other, so neither moves the pair far).
    """
    size = mean.shape[1]
    jitter = 1e-12 * jnp.eye(size)
    s_z = mean.T @ mean + jitter
    s_w = (weight * ridge[:, None]).T @ weight + jitter
    half = _sqrtm(s_z)
    inv_half = _sqrtm(s_z, inverse=True)
    metric = inv_half @ _sqrtm(half @ s_w @ half) @ inv_half
    metric = 0.5 * (metric + metric.T)
    return weight @ _sqrtm(metric, inverse=True), mean @ _sqrtm(metric)


def _log_prior(weight, extra_var, data: _Stacked, log_norm):
    weight_term = -0.5 * jnp.sum(data.ridge[:, None] * weight**2)
    scatter_term = -0.5 * jnp.sum(data.group_prior_precision * extra_var)
    return weight_term + scatter_term - log_norm


@eqx.filter_jit
def _iterate(
    state0: _State,
    data: _Stacked,
    n_groups: int,
    log_norm: Float[Array, ""],
    integrate: bool,
    balance: bool,
    max_steps: int,
    tol: Float[Array, ""],
):
    observed_count = jnp.maximum(jnp.sum(data.observed), 1)

    def em_map(params: _Params):
        """One full iteration θ → F(θ); also the objective and predictions at θ."""
        w, mean, cov, nll = _e_step(params, data, integrate)
        loss = nll - _log_prior(params.weight, params.extra_var, data, log_norm)
        prediction = mean @ params.weight.T + params.bias[None, :]
        weight, bias = _m_step_transform(params, data, w, mean, cov, integrate)
        if not integrate and balance:
            weight, mean = _balance(weight, mean, data.ridge)
        extra_var = _m_step_scatter(params.extra_var, weight, bias, data, mean, cov, integrate, n_groups)
        return _Params(weight, bias, extra_var), loss, prediction

    def combine(a, b, c, x, y, z):
        return jax.tree.map(lambda p, q, r: x * p + y * q + z * r, a, b, c)

    def sq_norm(tree):
        return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(tree))

    def jump_from(theta, theta1, theta2):
        step_r = combine(theta1, theta, theta, 1.0, -1.0, 0.0)
        step_v = combine(theta2, theta1, theta, 1.0, -2.0, 1.0)
        alpha = -jnp.sqrt(sq_norm(step_r) / jnp.maximum(sq_norm(step_v), 1e-300))
        alpha = jnp.minimum(alpha, -1.0)
        jump = combine(theta, step_r, step_v, 1.0, -2.0 * alpha, alpha**2)
        floor = jnp.full_like(jump.extra_var, _VAR_FLOOR).at[n_groups].set(0.0)
        return _Params(jump.weight, jump.bias, jnp.maximum(jump.extra_var, floor))

    def pick(flag, a, b):
        return jax.tree.map(lambda p, q: jnp.where(flag, p, q), a, b)

    def cond(state: _State):
        # Only test convergence between complete SQUAREM steps.
        return (state.phase != 0) | ((state.step < max_steps) & (state.change > tol))

    def body(state: _State):
        # SQUAREM (Varadhan & Roland 2008): two EM maps give a secant estimate of the
        # slow direction; extrapolate along it, take one stabilising EM map from there,
        # and keep the plain second map whenever the extrapolation did not lower the loss.
        # The three maps run in successive loop turns (``phase``) so that the EM map is
        # compiled once rather than three times.
        jump = jump_from(state.params, state.first, state.second)
        source = pick(state.phase == 0, state.params, pick(state.phase == 1, state.first, jump))
        out, loss, prediction = em_map(source)
        phase0, phase1, phase2 = state.phase == 0, state.phase == 1, state.phase == 2

        # After the second map: one plain EM map's change of predictions and scatters.
        delta = jnp.where(data.observed, prediction - state.prediction, 0.0)
        change = jnp.sqrt(jnp.sum(delta**2) / observed_count)
        scatter_change = jnp.max(jnp.abs(jnp.sqrt(state.first.extra_var) - jnp.sqrt(state.params.extra_var)))
        accept = jnp.isfinite(loss) & (loss <= state.loss)
        finished = pick(accept, out, state.second)
        return _State(
            params=pick(phase2, finished, state.params),
            first=pick(phase0, out, state.first),
            second=pick(phase1, out, state.second),
            loss=jnp.where(phase0, loss, state.loss),
            prediction=jnp.where(phase0, prediction, state.prediction),
            phase=(state.phase + 1) % 3,
            step=state.step + phase2.astype(state.step.dtype),
            change=jnp.where(phase1, jnp.maximum(change, scatter_change), state.change),
            history=jnp.where(phase0, state.history.at[state.step].set(loss), state.history),
        )

    final = jax.lax.while_loop(cond, body, state0)
    _, mean, cov, _ = _e_step(final.params, data, integrate)
    return final, mean, cov


def _stack(outputs: tuple[LuxOutput, ...], blocks: tuple[DataBlock, ...], columns: _Columns) -> _Stacked:
    return _Stacked(
        values=jnp.concatenate([b.values for b in blocks], axis=1),
        reported_var=jnp.concatenate([b.reported_var for b in blocks], axis=1),
        observed=jnp.concatenate([b.observed for b in blocks], axis=1),
        coefficient=jnp.concatenate(
            [
                o.error_model.variance_coefficients()
                if isinstance(o.error_model, AbstractScatter)
                else jnp.ones(b.values.shape[1])
                for o, b in zip(outputs, blocks, strict=True)
            ]
        ),
        has_bias=jnp.asarray(columns.has_bias),
        ridge=jnp.asarray(columns.ridge),
        group=jnp.asarray(columns.group),
        group_prior_precision=jnp.asarray(columns.group_prior_precision),
    )


def _initial_extra_var(outputs: tuple[LuxOutput, ...], columns: _Columns) -> Array:
    values = []
    for output in outputs:
        model = output.error_model
        if isinstance(model, AbstractScatter):
            values.append(jnp.ravel(model.initialised_scatter()) ** 2)
    return jnp.concatenate([*values, jnp.zeros(1)])


def fit_closed_form(
    outputs: tuple[LuxOutput, ...],
    blocks: tuple[DataBlock, ...],
    *,
    integrate: bool,
    max_steps: int,
    tol: float,
) -> EMResult:
    """Run EM (``integrate=True``) or block-coordinate MAP from the outputs' current values.

    ``tol`` bounds the RMS change of the predictions (scaled units) and the largest
    change of any scatter between iterations.
    """
    transforms = [affine_transform(o) for o in outputs]
    latent_size = transforms[0].initialised_weight().shape[1]
    columns = _describe(outputs, latent_size)
    data = _stack(outputs, blocks, columns)
    weight = jnp.concatenate([t.initialised_weight() for t in transforms], axis=0)
    bias = jnp.concatenate([t.offset() for t in transforms])
    params0 = _Params(weight, bias, _initial_extra_var(outputs, columns))
    state0 = _State(
        params=params0,
        first=params0,
        second=params0,
        loss=jnp.asarray(jnp.inf),
        prediction=jnp.zeros_like(data.values),
        phase=jnp.asarray(0),
        step=jnp.asarray(0),
        change=jnp.asarray(jnp.inf),
        history=jnp.full(max_steps, jnp.nan),
    )
    log_norm = columns.weight_log_norm + columns.scatter_log_norm
    # Rescaling only helps when every weight has a Gaussian prior; with a flat one the
    # joint MAP objective has no minimum along the latent/weight scale anyway.
    balance = bool(np.all(columns.ridge > 0))
    final, mean, cov = _iterate(
        # Tolerance and prior constants are traced, so new values reuse the compilation.
        state0,
        data,
        columns.n_groups,
        jnp.asarray(log_norm),
        integrate,
        balance,
        max_steps,
        jnp.asarray(tol),
    )

    fitted = []
    start = 0
    for output, size in zip(outputs, columns.sizes, strict=True):
        stop = start + size
        transform = affine_transform(output).with_coefficients(
            final.params.weight[start:stop], final.params.bias[start:stop]
        )
        model = output.error_model
        if isinstance(model, AbstractScatter):
            groups = np.asarray(columns.group[start:stop])
            ids = groups if model.per_column else groups[:1]
            model = model.with_scatter(jnp.sqrt(final.params.extra_var[ids]))
        fitted.append(LuxOutput(output.name, transform, model))
        start = stop
    return EMResult(
        outputs=tuple(fitted),
        latents=mean,
        latent_cov=cov,
        history=final.history,
        n_steps=final.step,
        converged=final.change <= tol,
        change=final.change,
    )
