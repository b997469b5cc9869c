"""The one damped Newton loop (``inference.damped_newton``): before/after, and why not optimistix.

Two measurements, written to ``benchmarks/results/solver.json``:

* **A/B.** The Cannon MAP test step (3 labels, 2,048 simulated spectra at 300 and 7,214
  pixels) and the RV fit (``fit_nuisance``, 64 smooth spectra on the 7,214-pixel APOGEE
  grid), timed in fresh processes from two source trees — BEFORE (a commit, extracted
  with ``git archive``) and AFTER (this checkout's ``src/``) — alternating the order every
  round (B A, A B, …) so both see the same machine load. Each process warms up on the
  timed data first, then reports its best of ``--reps`` calls (wall and CPU). The Cannon
  labels of the two trees are compared element by element.
* **optimistix.** The per-spectrum problem of the Cannon step (χ² from the sufficient
  statistics ``(c, g, H)``) solved by this loop and by ``optimistix.LevenbergMarquardt``
  on the equivalent residuals ``Lᵀv(x) − L⁻¹g`` (``H = LLᵀ``, same χ² up to a constant),
  both jitted and vmapped over the same 2,048 spectra from the same (linear) starts,
  without bounds (optimistix has none).

On a busy machine wall times swing with the load; CPU seconds (all threads of the
timing process) measure the work and move less. Run (about 30 minutes on 2 busy cores)::

    .venv/bin/python benchmarks/solver.py --before 54920b5 --rounds 2 --reps 3 --allow-busy

and the optimistix comparison alone (``--cases ""``, a minute or two)::

    .venv/bin/python benchmarks/solver.py --cases "" --reps 7 --allow-busy \\
        --out benchmarks/results/solver_optimistix.json
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "solver.json"

# One timing process: prints a JSON line; labels go to argv[2] (.npy).
_CHILD = r"""
import json, sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from starlabel.data import simulate_cannon
from starlabel.models.cannon import Cannon
case, labels_out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])

def best_of(fn):
    fn()  # warm-up on the timed data (compiles)
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w); cpus.append(time.process_time() - c)
    return out, min(walls), min(cpus)

if case.startswith("cannon"):
    n_pixels = int(case.split("_")[1])
    sim = simulate_cannon(1000 + 2048, n_pixels, 3, snr=50.0, scatter=0.005, seed=3)
    fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset[:1000], calibrate=False)
    test = sim.dataset[1000:]
    out, wall, cpu = best_of(lambda: fitted.infer(test, calibrate=False, chunk_size=1024))
    np.save(labels_out, np.asarray(out.labels))
    n = len(test)
else:
    sys.path.insert(0, sys.argv[4])
    from test_teststep_sim import (PIVOT, SCALE, LineList, apogee_wavelength, draw_labels,
                                   line_list_theta, simulate_smooth, truth_spectrum)
    from starlabel.models._nuisance import build_nuisance_model, fit_nuisance
    wavelength = apogee_wavelength()
    lines = LineList(wavelength)
    train = draw_labels(np.random.default_rng(1), 300)
    model = truth_spectrum(line_list_theta(lines, wavelength), PIVOT, SCALE,
                           np.full(len(wavelength), 0.002), train)
    data, _, _ = simulate_smooth(64, v=np.linspace(-30, 30, 64), snr=100.0, seed=2)
    nuisance = build_nuisance_model(model, wavelength, fit_rv=True)
    out, wall, cpu = best_of(lambda: fit_nuisance(nuisance, data))
    np.save(labels_out, np.asarray(out.params))
    n = 64
print(json.dumps({"case": case, "wall_s": wall, "cpu_s": cpu, "n": n, "per_s": n / wall}))
"""


def _tree(commit: str, folder: Path) -> Path:
    """``src/`` of ``commit``, extracted into ``folder``."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "src"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def _time(src: Path, case: str, labels: Path, reps: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, case, str(labels), str(reps), str(REPO / "tests")],
        env={**__import__("os").environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def ab(before: str, rounds: int, reps: int, cases: list[str]) -> dict:
    """Alternating before/after timings of each case, and the largest label difference."""
    import numpy as np

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _tree(before, Path(tmp) / "before"), "after": REPO / "src"}
        for case in cases:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for tag in order:
                    result = _time(trees[tag], case, Path(tmp) / f"{tag}_{case}.npy", reps)
                    _common.log(case, tag, f"{result['wall_s']:.4f} s wall, {result['cpu_s']:.4f} s CPU")
                    runs[tag].append(result)
            a, b = np.load(Path(tmp) / f"after_{case}.npy"), np.load(Path(tmp) / f"before_{case}.npy")
            scale = np.maximum(np.abs(b), 1e-300)
            median = {tag: statistics.median(x["wall_s"] for x in runs[tag]) for tag in runs}
            median_cpu = {tag: statistics.median(x["cpu_s"] for x in runs[tag]) for tag in runs}
            out[case] = {
                "runs": runs,
                "median_wall_s": median,
                "median_cpu_s": median_cpu,
                "after_over_before_wall": median["after"] / median["before"],
                "after_over_before_cpu": median_cpu["after"] / median_cpu["before"],
                "max_relative_difference": float(np.nanmax(np.abs(a - b) / scale)),
                "identical": bool(np.array_equal(a, b, equal_nan=True)),
            }
    return out


def optimistix_comparison(n_pixels: int, reps: int) -> dict:
    """This loop against optimistix's Levenberg–Marquardt on the same statistics."""
    sys.path.insert(0, str(REPO / "src"))  # this checkout, not whatever tree is installed
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optimistix as optx

    from starlabel.data import simulate_cannon
    from starlabel.models.cannon import Cannon
    from starlabel.models.cannon._test_step import (
        _levenberg_marquardt,
        linear_start,
        spectrum_stats,
        theta_pairs,
    )

    sim = simulate_cannon(1000 + 2048, n_pixels, 3, snr=50.0, scatter=0.005, seed=3)
    fitted = Cannon(label_names=sim.dataset.label_names).fit(sim.dataset[:1000], calibrate=False)
    test = sim.dataset[1000:]
    vec = fitted.vectorizer
    stats = spectrum_stats(
        jnp.asarray(test.flux),
        jnp.asarray(test.ivar),
        fitted.theta,
        theta_pairs(fitted.theta),
        fitted.s2,
        fitted.pixel_ok,
    )
    n_labels = len(test.label_names) if test.label_names else 3
    zero = jnp.zeros(n_labels)
    free = jnp.ones(n_labels, dtype=bool)
    inf = jnp.full(n_labels, jnp.inf)

    @jax.jit
    def ours(stats):
        def one(s):
            x0 = linear_start(vec, s, zero)
            return _levenberg_marquardt(vec, s, x0, free, -inf, inf, 100, 1e-6).x

        return jax.vmap(one)(stats)

    solver = optx.LevenbergMarquardt(rtol=1e-10, atol=1e-10)

    @jax.jit
    def theirs(stats):
        def one(s):
            n = s.H.shape[0]
            H = s.H + 1e-10 * jnp.trace(s.H) / n * jnp.eye(n)
            L = jnp.linalg.cholesky(H)
            b = jax.scipy.linalg.solve_triangular(L, s.g, lower=True)

            def residuals(x, args):
                return L.T @ vec(x) - b

            x0 = linear_start(vec, s, zero)
            sol = optx.least_squares(residuals, solver, x0, max_steps=100, throw=False)
            return sol.value

        return jax.vmap(one)(stats)

    result = {}
    answers = {}
    for name, fn in (("damped_newton", ours), ("optimistix_levenberg_marquardt", theirs)):
        answers[name] = np.asarray(jax.block_until_ready(fn(stats)))
        walls, cpus = [], []
        for _ in range(reps):
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(stats))
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        result[name] = {
            "best_wall_s": min(walls),
            "best_cpu_s": min(cpus),
            "spectra_per_s": len(test) / min(walls),
        }
        _common.log(name, f"{min(walls):.4f} s wall, {min(cpus):.4f} s CPU for {len(test)} spectra")
    chi2 = {}
    for name, x in answers.items():
        v = jax.vmap(vec)(jnp.asarray(x))
        chi2[name] = np.asarray(
            stats.c - 2 * jnp.sum(v * stats.g, 1) + jnp.einsum("na,nab,nb->n", v, stats.H, v)
        )
    result["median_chi2_difference_optimistix_minus_ours"] = float(
        np.nanmedian(chi2["optimistix_levenberg_marquardt"] - chi2["damped_newton"])
    )
    for unit in ("wall", "cpu"):
        result[f"slowdown_of_optimistix_{unit}"] = (
            result["optimistix_levenberg_marquardt"][f"best_{unit}_s"]
            / result["damped_newton"][f"best_{unit}_s"]
        )
    result["n_spectra"], result["n_pixels"] = len(test), n_pixels
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="54920b5", help="commit of the BEFORE tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default="cannon_300,cannon_7214,nuisance")
    parser.add_argument("--out", type=Path, default=RESULTS)
    _common.add_arguments(parser)
    args = parser.parse_args()
    record = _common.start(args, THREADS)
    record["optimistix"] = optimistix_comparison(300, args.reps)
    if args.cases:  # --cases "": the optimistix comparison only
        record["ab"] = ab(args.before, args.rounds, args.reps, args.cases.split(","))
    _common.write_result(_common.finish(record), args.out)


if __name__ == "__main__":
    main()
