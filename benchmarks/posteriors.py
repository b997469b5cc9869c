"""Posterior sampling cost: whitened NUTS (blackjax) vs numpyro NUTS vs emcee, 5 labels × 7214 px.

Measures, for a quadratic-in-labels spectral model with intrinsic scatter:

* NUTS (1000 warm-up + 1000 draws, 1 chain) in Laplace-whitened coordinates, one star
  (warm, median of repeats) and a batch of stars in one compiled call (per star), for
  the two batching strategies (a loop inside the compiled program vs ``vmap``);
* numpyro's NUTS kernel (functional API, same whitened target, step size adapted);
* emcee, 16 walkers × 15,000 steps on the same star (vectorised JAX log density);
* effective samples per second for each, with **one ESS estimator for every sampler**
  (``starlabel.inference.effective_sample_size``: Geyer-truncated FFT autocovariances
  pooled over chains, emcee's walkers counted as chains); emcee's own
  ``integrated_time`` estimate is recorded beside it, labelled, and not used in ratios;
* and the agreement of the posteriors.

The model is a Cannon trained on simulated spectra when the Cannon is importable
(``--model cannon``), otherwise the simulator's true polynomial (``--model truth``).
The box is a shared 2-core CPU: its load average is recorded with the timings.

Run on a quiet machine (about 15 min on 2 cores, most of it emcee)::

    .venv/bin/python benchmarks/posteriors.py      # writes benchmarks/results/posteriors.json

Check that it runs (any machine, not for quoting)::

    .venv/bin/python benchmarks/posteriors.py --quick --allow-busy --out /tmp/posteriors.json

Threads, load average and commit are recorded (``_common.py``).
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

from starlabel.data import simulate_cannon  # noqa: E402
from starlabel.inference import (  # noqa: E402
    effective_sample_size,
    fit_map,
    laplace_approximation,
    nuts,
    split_rhat,
    whiten,
)

N_PIXELS = 7214
N_LABELS = 5


class TruthPolynomial(eqx.Module):
    """The simulator's exact model: flux = θ·v((labels − pivot)/scale), variance σ² + s²."""

    theta: jax.Array
    s2: jax.Array
    pivot: jax.Array
    scale: jax.Array
    pairs: tuple[tuple[int, int], ...] = eqx.field(static=True)

    def log_likelihood(self, labels, flux, ivar):
        x = (labels - self.pivot) / self.scale
        quad = jnp.stack([x[i] * x[j] for i, j in self.pairs])
        model = self.theta @ jnp.concatenate([jnp.ones(1, x.dtype), x, quad])
        good = ivar > 0
        omega = jnp.where(good, ivar / (1.0 + ivar * self.s2), 0.0)
        return -0.5 * jnp.sum(omega * (flux - model) ** 2)


def build_problem(model: str, n_test: int, seed: int):
    sim = simulate_cannon(
        n_stars=2000 + n_test, n_pixels=N_PIXELS, n_labels=N_LABELS, snr=(40.0, 120.0), seed=seed
    )
    test = sim.dataset[2000:]
    truth = sim.true_labels[2000:]
    if model == "cannon":
        from starlabel.models.cannon import Cannon

        t0 = time.perf_counter()
        fitted = Cannon(sim.dataset.label_names, order=2).fit(sim.dataset[:2000])
        fit_time = time.perf_counter() - t0
        start = fitted.infer(test).labels
        return (
            fitted,
            test,
            truth,
            start,
            {"model": "cannon (trained on 2000 simulated stars)", "fit_s": fit_time},
        )
    pairs = tuple(itertools.combinations_with_replacement(range(N_LABELS), 2))
    with jax.enable_x64(True):
        fitted = TruthPolynomial(
            jnp.asarray(sim.theta),
            jnp.asarray(sim.scatter**2),
            jnp.asarray(sim.pivot),
            jnp.asarray(sim.scale),
            pairs,
        )
    return fitted, test, truth, truth.copy(), {"model": "simulator truth polynomial (quadratic, 21 terms)"}


def log_density(labels, args):
    fitted, flux, ivar = args
    return fitted.log_likelihood(labels, flux, ivar)


def prepare(fitted, flux, ivar, start):
    """MAP by BFGS from ``start``, then the Laplace whitening, for every star."""

    def one(f, i, s):
        args = (fitted, f, i)
        sol = fit_map(log_density, optx.BFGS(rtol=1e-10, atol=1e-10), s, args, max_steps=100)
        return whiten(laplace_approximation(log_density, sol.value, args))

    with jax.enable_x64(True):
        return jax.jit(jax.vmap(one))(jnp.asarray(flux), jnp.asarray(ivar), jnp.asarray(start))


def take(tree, index):
    return jax.tree.map(lambda a: a[index], tree)


def timed(fn, *args, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return out, times


def run_nuts(fitted, whitenings, flux, ivar, num_warmup, num_samples, batch, vmap_batch, repeats):
    results = {}
    with jax.enable_x64(True):
        w0 = take(whitenings, 0)
        args0 = (fitted, jnp.asarray(flux[0]), jnp.asarray(ivar[0]))
        one = lambda key: nuts(  # noqa: E731
            log_density, w0, args0, key, num_warmup=num_warmup, num_samples=num_samples, num_chains=1
        )
        t0 = time.perf_counter()
        first = jax.block_until_ready(one(jax.random.key(0)))
        compile_s = time.perf_counter() - t0
        times = []
        for r in range(repeats):
            post, (dt,) = timed(one, jax.random.key(r + 1))
            times.append(dt)
        ess = np.array(effective_sample_size(post.samples))
        results["one_star"] = {
            "first_call_s_including_compile": compile_s,
            "warm_s": float(np.median(times)),
            "warm_s_all": times,
            "ess_per_label": ess.tolist(),
            "min_ess": float(ess.min()),
            "rhat_per_label": np.asarray(split_rhat(post.samples)).tolist(),
            "step_size": float(post.step_size[0]),
            "mean_leapfrog_steps": float(post.mean_integration_steps[0]),
            "divergent": int(np.asarray(post.num_divergent).sum()),
        }
        samples_one = np.asarray(post.samples[0])
        del first

        def single(w, f, i, k):
            return nuts(
                log_density,
                w,
                (fitted, f, i),
                k,
                num_warmup=num_warmup,
                num_samples=num_samples,
                num_chains=1,
            )

        keys = jax.random.split(jax.random.key(7), batch)
        batch_args = (
            take(whitenings, slice(0, batch)),
            jnp.asarray(flux[:batch]),
            jnp.asarray(ivar[:batch]),
            keys,
        )
        looped = jax.jit(lambda w, f, i, k: jax.lax.map(lambda z: single(*z), (w, f, i, k)))
        _, (compile_loop,) = timed(looped, *batch_args)
        post, (dt,) = timed(looped, *batch_args)
        ess = np.array(jax.vmap(effective_sample_size)(post.samples))  # (batch, labels)
        rhat = np.array(jax.vmap(split_rhat)(post.samples))
        results["batch_loop"] = {
            "stars": batch,
            "first_call_s_including_compile": compile_loop,
            "warm_total_s": dt,
            "warm_s_per_star": dt / batch,
            "median_min_ess": float(np.median(ess.min(axis=1))),
            "rhat_max_per_star_quantiles_50_90_99_max": np.quantile(
                rhat.max(axis=1), [0.5, 0.9, 0.99, 1.0]
            ).tolist(),
            "divergent_total": int(np.asarray(post.num_divergent).sum()),
        }
        # R̂ from one chain of 1000 draws is itself noisy by ~±0.005; four chains per
        # star give the convergence check its intended power (Vehtari et al. 2021).
        n_multi = min(batch, 16)

        def multi(w, f, i, k):
            return nuts(
                log_density, w, (fitted, f, i), k,
                num_warmup=num_warmup, num_samples=num_samples, num_chains=4,
            )  # fmt: skip

        multi_args = jax.tree.map(lambda a: a[:n_multi], batch_args)
        looped4 = jax.jit(lambda w, f, i, k: jax.lax.map(lambda z: multi(*z), (w, f, i, k)))
        _, (compile_4,) = timed(looped4, *multi_args)
        post4, (dt4,) = timed(looped4, *multi_args)
        rhat4 = np.array(jax.vmap(split_rhat)(post4.samples))
        ess4 = np.array(jax.vmap(effective_sample_size)(post4.samples))
        results["batch_loop_4_chains"] = {
            "stars": n_multi,
            "chains": 4,
            "first_call_s_including_compile": compile_4,
            "warm_total_s": dt4,
            "warm_s_per_star_per_2000_iterations_per_chain": dt4
            / n_multi
            / 4
            * 2000
            / (num_warmup + num_samples),
            "median_min_ess": float(np.median(ess4.min(axis=1))),
            "rhat_max_per_star_quantiles_50_90_99_max": np.quantile(
                rhat4.max(axis=1), [0.5, 0.9, 0.99, 1.0]
            ).tolist(),
            "fraction_of_stars_rhat_below_1_01": float(np.mean(rhat4.max(axis=1) < 1.01)),
            "divergent_total": int(np.asarray(post4.num_divergent).sum()),
        }
        if vmap_batch:
            vargs = jax.tree.map(lambda a: a[:vmap_batch], batch_args)
            vmapped = jax.jit(jax.vmap(single))
            _, (compile_v,) = timed(vmapped, *vargs)
            _, (dtv,) = timed(vmapped, *vargs)
            results["batch_vmap"] = {
                "stars": vmap_batch,
                "first_call_s_including_compile": compile_v,
                "warm_total_s": dtv,
                "warm_s_per_star": dtv / vmap_batch,
            }
    return results, samples_one


def run_numpyro(fitted, whitening, flux, ivar, num_warmup, num_samples):
    """numpyro's NUTS on the same whitened target (identity mass, step size adapted)."""
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import ParamInfo
    from numpyro.util import fori_collect

    with jax.enable_x64(True):
        args = (fitted, jnp.asarray(flux), jnp.asarray(ivar))

        def potential(u):
            return -log_density(whitening.to_params(u), args)

        init_kernel, sample_kernel = hmc(potential_fn=potential, algo="NUTS")
        n = whitening.transform.shape[0]

        def run(key):
            key_init, key_run = jax.random.split(key)
            u0 = jax.random.normal(key_init, (n,), dtype=jnp.float64)
            state = init_kernel(
                ParamInfo(u0, potential(u0), jax.grad(potential)(u0)),
                num_warmup,
                adapt_mass_matrix=False,
                rng_key=key_run,
            )
            return fori_collect(
                num_warmup,
                num_warmup + num_samples,
                sample_kernel,
                state,
                transform=lambda s: s.z,
                progbar=False,
            )

        # One jit around the whole run: fori_collect alone retraces on every call.
        run = jax.jit(run)
        _, (first,) = timed(run, jax.random.key(0))
        draws, (warm,) = timed(run, jax.random.key(1))
        draws = jax.vmap(whitening.to_params)(draws)
        ess = np.array(effective_sample_size(draws[None]))
    return {"first_call_s": first, "warm_s": warm, "min_ess": float(ess.min()), "ess_per_label": ess.tolist()}


def run_emcee(fitted, whitening, flux, ivar, walkers, steps, burn, seed):
    import emcee

    with jax.enable_x64(True):
        args = (fitted, jnp.asarray(flux), jnp.asarray(ivar))
        batched = jax.jit(jax.vmap(lambda labels: log_density(labels, args)))
        centre = np.asarray(whitening.to_params(jnp.zeros(whitening.transform.shape[0])))
        rng = np.random.default_rng(seed)
        start = centre + (np.asarray(whitening.transform) @ rng.normal(size=(centre.size, walkers))).T
        batched(jnp.asarray(start)).block_until_ready()  # compile outside the timing

        def log_prob(x):
            return np.asarray(batched(jnp.asarray(x)))

        sampler = emcee.EnsembleSampler(walkers, centre.size, log_prob, vectorize=True)
        t0 = time.perf_counter()
        sampler.run_mcmc(start, steps, progress=False)
        wall = time.perf_counter() - t0
    chain = sampler.get_chain(discard=burn)  # (steps, walkers, labels)
    tau = emcee.autocorr.integrated_time(chain, quiet=True)
    kept = chain.shape[0] * walkers
    ess_tau = kept / tau
    # The estimator NUTS is scored with: each walker a chain, (chains, samples, labels).
    ess = np.array(effective_sample_size(jnp.asarray(np.swapaxes(chain, 0, 1))))
    return {
        "walkers": walkers,
        "steps": steps,
        "burn_in": burn,
        "wall_s": wall,
        "ess_estimator": "starlabel.inference.effective_sample_size, walkers as chains (as for NUTS)",
        "ess_per_label": ess.tolist(),
        "min_ess": float(ess.min()),
        "emcee_integrated_time_steps": tau.tolist(),
        "emcee_integrated_time_ess_per_label": ess_tau.tolist(),
        "emcee_integrated_time_min_ess": float(ess_tau.min()),
        "acceptance_fraction": float(np.mean(sampler.acceptance_fraction)),
    }, chain.reshape(-1, centre.size)


def compare_mixture_samplers(quick: bool) -> dict:
    """The mixtures' NUTS before (Stan-style warm-up) and after (whitened ``inference.nuts``).

    Both run on the line-with-outliers fit (N = 32, 600 warm-up + 1000 draws, as its test)
    and on the cluster-membership fit (1,120 simulated stars, 200 + 200, as its test), cold
    (compile + run) then warm (a second seed), interleaved so that load affects both alike.
    Timed: the sampler call alone, in process CPU seconds and wall seconds. ESS: one
    estimator for both (``starlabel.inference.effective_sample_size``, minimum over sites).
    """
    import _stan_warmup

    from starlabel.inference import effective_sample_size as ess_of
    from starlabel.mixtures import (
        _cluster,
        _line,
        fit_line_with_outliers,
        fit_membership_table,
        simulate_cluster_field,
        simulate_line_with_outliers,
    )
    from starlabel.mixtures import _sampling as new

    def old_run(model, model_args, mode, key, **kw):
        return _stan_warmup.run_nuts(model, model_args, mode.values, key, **kw)

    def timed_sampler(sampler, record):
        def run(*a, **kw):
            c0, w0 = time.process_time(), time.perf_counter()
            chain = sampler(*a, **kw)
            record.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - w0)
            return chain

        return run

    line_sim = simulate_line_with_outliers()
    cluster_sim = simulate_cluster_field(n_field=1000, n_cluster=120, n_missing=4, seed=3)
    line_counts = (200, 200) if quick else (600, 1000)
    cluster_counts = (100, 100) if quick else (200, 200)

    def line(seed):
        w, n = line_counts
        return fit_line_with_outliers(
            line_sim.x, line_sim.y, line_sim.y_err, num_warmup=w, num_samples=n, seed=seed
        )

    def cluster(seed):
        w, n = cluster_counts
        table = cluster_sim.table
        fit = fit_membership_table(
            table, position_columns=("ra", "dec"), n_field_max=2, num_warmup=w, num_samples=n, seed=seed
        )
        return fit.fit

    out: dict = {}
    for problem, fit, module in (("line", line, _line), ("cluster", cluster, _cluster)):
        rows: dict = {}
        for phase, seed in (("cold", 0), ("warm", 1)):
            for name, sampler in (("before_stan_warmup", old_run), ("after_inference_nuts", new.run_nuts)):
                record: dict = {}
                module.run_nuts = timed_sampler(sampler, record)
                try:
                    result = fit(seed)
                finally:
                    module.run_nuts = new.run_nuts
                sites = {k: np.asarray(v) for k, v in result.samples.items()}
                min_ess = min(float(np.min(np.asarray(ess_of(v[None])))) for v in sites.values())
                record.update(
                    divergences=int(result.divergences),
                    min_ess=min_ess,
                    min_ess_per_cpu_s=min_ess / record["cpu_s"],
                    medians={k: np.median(v, axis=0).ravel().tolist() for k, v in sites.items()},
                )
                rows.setdefault(name, {})[phase] = record
                _common.log(
                    problem,
                    phase,
                    name,
                    {k: record[k] for k in ("cpu_s", "wall_s", "min_ess", "divergences")},
                )
        out[problem] = rows
    out["counts"] = {"line": line_counts, "cluster": cluster_counts}
    return out


def _damped_newton_mode(args, start, steps):
    """The Laplace mode on ``inference.damped_newton`` (undamped, ``eigh_solve``): the candidate
    that ``models/_posterior.py`` did not adopt (``--laplace-newton`` measures why)."""
    from starlabel.inference import Marquardt, damped_newton, eigh_solve, hessian
    from starlabel.models._posterior import _log_posterior, _negative_log_posterior

    def loss(p):
        return -2.0 * _log_posterior(p, args)

    def linearise(p):
        return -jax.grad(_log_posterior)(p, args), hessian(_negative_log_posterior, p, args)

    undamped = Marquardt(initial=0.0, shrink=1.0, grow=1.0, smallest=0.0)
    final = damped_newton(
        loss, linearise, start, damping=undamped, max_steps=steps, tol=0.0, solve=eigh_solve
    )
    grad = jax.grad(_log_posterior)(final.x, args)
    return final.x, grad @ eigh_solve(hessian(_negative_log_posterior, final.x, args), grad)


def compare_laplace_newton(quick: bool) -> dict:
    """``posterior_infer(method="laplace")``: its ``lax.scan`` Newton vs ``damped_newton``.

    A quadratic Cannon (3 labels, 200 pixels, 500 training stars) and 1,024 test stars in
    one vmapped chunk. Cold (compile + run) and warm CPU and wall seconds, and the largest
    difference of labels, covariances and decrements. Not run here: 4,096 stars in one
    chunk, where the ``damped_newton`` variant hung XLA-CPU on 2026-12-07 (batched eigh in
    a ``while_loop``; all threads idle, CPU time frozen for minutes; killed).
    """
    from starlabel.models import _posterior
    from starlabel.models.cannon import Cannon

    sizes = (256,) if quick else (1024,)
    scan_newton = _posterior._newton
    out: dict = {}
    for n_test in sizes:
        sim = simulate_cannon(n_stars=500 + n_test, n_pixels=200, n_labels=3, snr=(30.0, 100.0), seed=5)
        fitted = Cannon(sim.dataset.label_names, order=2).fit(sim.dataset[:500])
        test = sim.dataset[500:]
        start = fitted.infer(test).labels
        rows: dict = {}
        results = {}
        for name, newton in (("scan_kept", scan_newton), ("damped_newton_candidate", _damped_newton_mode)):
            _posterior._newton = newton
            # The compiled chunk program holds whichever _newton it was traced with.
            jax.clear_caches()
            try:
                record = {}
                for phase in ("cold", "warm"):
                    c0, w0 = time.process_time(), time.perf_counter()
                    result = _posterior.posterior_infer(
                        fitted, test, method="laplace", start=start, chunk_size=n_test
                    )
                    record[f"{phase}_cpu_s"] = time.process_time() - c0
                    record[f"{phase}_wall_s"] = time.perf_counter() - w0
                results[name] = result
                rows[name] = record
                _common.log("laplace newton", n_test, name, record)
            finally:
                _posterior._newton = scan_newton
        a, b = results["scan_kept"], results["damped_newton_candidate"]
        rows["max_abs_difference"] = {
            "labels": float(np.max(np.abs(a.labels - b.labels))),
            "cov": float(np.nanmax(np.abs(a.cov - b.cov))),
            "newton_decrement": float(
                np.max(np.abs(a.extra["newton_decrement"] - b.extra["newton_decrement"]))
            ),
        }
        out[str(n_test)] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    parser.add_argument("--model", choices=("auto", "cannon", "truth"), default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "posteriors.json")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vmap-batch", type=int, default=16, help="stars for the vmap comparison (0: skip)")
    parser.add_argument(
        "--mixtures",
        action="store_true",
        help="only the mixtures' NUTS before/after (writes results/posteriors_mixtures.json by default)",
    )
    parser.add_argument(
        "--laplace-newton",
        action="store_true",
        help="only the Laplace mode's Newton loop before/after (writes results/posteriors_laplace_newton.json)",
    )
    _common.add_arguments(parser)
    args = parser.parse_args()
    run_record = _common.start(args, THREADS)
    side_by_side = {
        "laplace_newton": (
            compare_laplace_newton,
            "posteriors_laplace_newton.json",
            "posterior_infer(method='laplace') Newton mode: its lax.scan (kept) vs inference.damped_newton"
            " (eigh_solve, undamped; not adopted); see compare_laplace_newton in benchmarks/posteriors.py",
        ),
        "mixtures": (
            compare_mixture_samplers,
            "posteriors_mixtures.json",
            "mixtures NUTS: former Stan-style warm-up vs inference.nuts (Laplace-whitened);"
            " see compare_mixture_samplers in benchmarks/posteriors.py",
        ),
    }
    for flag, (compare, name, description) in side_by_side.items():
        if getattr(args, flag):
            out_path = args.out.with_name(name) if args.out.name == "posteriors.json" else args.out
            comparison = compare(args.quick)
            record = _common.finish(run_record)
            loads = (record["load_average_before"][0], record["load_average_after"][0])
            record["busy"] = bool(record["busy"] or max(loads) > 2.5)
            result = {
                "run": record,
                "description": description,
                "quick": args.quick,
                "note": "before and after side by side in one process; compare CPU seconds"
                + (" (box busy: load > 2.5)" if record["busy"] else ""),
                **comparison,
            }
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2))
            print(json.dumps(result, indent=2)[:3000])
            return

    warmup, draws, repeats = (200, 200, 1) if args.quick else (1000, 1000, 3)
    walkers, steps, burn = (16, 1500, 500) if args.quick else (16, 15000, 5000)
    batch = 4 if args.quick else args.batch
    vmap_batch = min(args.vmap_batch, 2 if args.quick else args.vmap_batch)
    model = args.model
    if model == "auto":
        try:
            from starlabel.models.cannon import Cannon  # noqa: F401

            model = "cannon"
        except ImportError:
            model = "truth"

    fitted, test, truth, start, info = build_problem(model, batch, seed=11)
    t0 = time.perf_counter()
    whitenings = prepare(fitted, test.flux, test.ivar, start)
    prep_s = time.perf_counter() - t0

    nuts_res, nuts_draws = run_nuts(
        fitted, whitenings, test.flux, test.ivar, warmup, draws, batch, vmap_batch, repeats
    )
    w0 = take(whitenings, 0)
    numpyro_res = run_numpyro(fitted, w0, test.flux[0], test.ivar[0], warmup, draws)
    emcee_res, emcee_draws = run_emcee(fitted, w0, test.flux[0], test.ivar[0], walkers, steps, burn, seed=3)

    sd = emcee_draws.std(axis=0)
    agreement = {
        "mean_difference_in_emcee_sd": ((nuts_draws.mean(0) - emcee_draws.mean(0)) / sd).tolist(),
        "sd_ratio_nuts_over_emcee": (nuts_draws.std(0) / sd).tolist(),
        "truth_minus_nuts_mean_in_sd": ((truth[0] - nuts_draws.mean(0)) / nuts_draws.std(0)).tolist(),
    }
    nuts_ess_per_s = nuts_res["one_star"]["min_ess"] / nuts_res["one_star"]["warm_s"]
    batch_ess_per_s = nuts_res["batch_loop"]["median_min_ess"] / nuts_res["batch_loop"]["warm_s_per_star"]
    emcee_ess_per_s = emcee_res["min_ess"] / emcee_res["wall_s"]
    summary = {
        "nuts_s_per_star_per_2000_iterations_batch": nuts_res["batch_loop"]["warm_s_per_star"]
        * 2000.0
        / (warmup + draws),
        "nuts_s_one_star": nuts_res["one_star"]["warm_s"],
        "nuts_min_ess_per_s_one_star": nuts_ess_per_s,
        "nuts_min_ess_per_s_batch": batch_ess_per_s,
        "emcee_min_ess_per_s": emcee_ess_per_s,
        "ess_per_s_ratio_nuts_over_emcee": nuts_ess_per_s / emcee_ess_per_s,
        "ess_estimator": "one estimator for all samplers (starlabel.inference.effective_sample_size)",
        "rhat_max_per_star_4_chains_quantiles_50_90_99_max": nuts_res["batch_loop_4_chains"][
            "rhat_max_per_star_quantiles_50_90_99_max"
        ],
        "fraction_of_stars_rhat_below_1_01_4_chains": nuts_res["batch_loop_4_chains"][
            "fraction_of_stars_rhat_below_1_01"
        ],
        "targets": {"s_per_star_per_2000_it_max": 1.0, "ess_per_s_ratio_min": 10.0, "rhat_max": 1.01},
    }
    out = {
        "run": _common.finish(run_record),
        "description": "whitened NUTS vs numpyro NUTS vs emcee on one posterior; see benchmarks/posteriors.py",
        "quick": args.quick,
        "problem": {
            "labels": N_LABELS,
            "pixels": N_PIXELS,
            "snr": [40, 120],
            **info,
            "prep_map_laplace_s": prep_s,
        },
        "settings": {
            "nuts_warmup": warmup,
            "nuts_samples": draws,
            "nuts_chains": 1,
            "emcee_walkers": walkers,
            "emcee_steps": steps,
        },
        "summary": summary,
        "nuts_blackjax_whitened": nuts_res,
        "nuts_numpyro_functional_whitened": numpyro_res,
        "emcee": emcee_res,
        "agreement_star0": agreement,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "note": "shared 2-core box; see load_average_at_end",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
