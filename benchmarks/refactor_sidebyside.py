"""The typed test step (issue 17) against the code before it, side by side in one run.

Issue 17 reshaped the test step (typed strategies, one ``infer``, abstract model
classes, one solver) "behaviour unchanged"; its closing condition is that the test-step,
pipeline, Lux and posterior timings stay within noise of before, measured side by side,
and that the closing note gives the test-step code's line counts before and after.

How: the pre-refactor commit (``--before``, default e79605e) is checked out as a
temporary ``git worktree``; the current code is a copy of this checkout's ``src/``.
Each side runs in a long-lived worker process (this file with ``--worker``,
``PYTHONPATH`` at that tree's ``src``; BLAS/XLA threads pinned to the same count on
both sides and recorded). A worker simulates the same data (same seeds; a checksum of
the inputs is recorded per side), fits its models, then runs every timed call once
untimed (warm-up on the timed shapes: compilation is not timed). The driver then asks
the two workers in turn, alternating which goes first (A B, B A, …), to run one timed
call of a case; the idle worker waits on its pipe and uses no CPU. Each call's wall
and process CPU seconds (user + system, all threads) are recorded with the load
average. The same code runs 10–50 % faster or slower in one process than in another
(measured while profiling the Cannon test step), so this is repeated with
``--processes`` fresh worker pairs (default 3, one pair at a time); the summary gives,
per side, the median over processes of each process's median call, the ratio new/old
of wall and CPU seconds, and ``noise_cpu``, the largest ratio between two processes of
the same side: a ratio within ``[1/noise, noise]`` is within noise.

Cases (the old and the new API for the same work):

* ``cannon_map``: ``FittedCannon.infer`` (MAP, Fisher errors), 3 labels, quadratic;
* ``cannon_laplace``: ``infer(..., uncertainty="laplace")``;
* ``cannon_posterior_mean``: grid posterior mean, old ``infer_labels(estimator="mean")``,
  new ``infer(estimator=PosteriorMean())``;
* ``cannon_nuts``: NUTS draws started at the MAP, ``infer(..., uncertainty="nuts")``
  (200 warm-up steps, 200 draws, one chain per star);
* ``lux``: ``FittedLux.infer`` (latents, then labels);
* ``pipeline``: ``starlabel.pipeline.run_inference`` of a saved Cannon on a dataset
  file (local engine, chunks of 1,024, Parquet output, no persistent compilation cache).

Models are fitted without error calibration (``calibrate=False``; the old code had
none), so both sides do the same work. Run::

    nice -n 5 .venv/bin/python benchmarks/refactor_sidebyside.py --allow-busy

(``benchmarks/refactor_sidebyside.py --quick`` for a smoke run). On a busy machine
compare the CPU seconds (the JSON says ``busy``); walls move with the load.
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import ast  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import _common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "refactor_sidebyside.json"
BEFORE = "e79605e"
CASES = ("cannon_map", "cannon_laplace", "cannon_posterior_mean", "cannon_nuts", "lux", "pipeline")
# (stars to train on, test spectra per call) per case, and the Cannon's pixels.
SIZES = {
    "full": {
        "pixels": 1000,
        "train": 800,
        "map": 4000,
        "laplace": 1000,
        "mean": 1000,
        "nuts": 32,
        "lux": 2000,
        "pipe": 4000,
    },
    "quick": {
        "pixels": 200,
        "train": 300,
        "map": 100,
        "laplace": 50,
        "mean": 50,
        "nuts": 4,
        "lux": 100,
        "pipe": 300,
    },
}

# The test-step code, by role: what a reader has to understand to follow label inference
# of new spectra (entry points, strategies, estimators, uncertainties, nuisance and binary
# fits, the families' test steps, and the generic solvers/samplers in inference/).
# Training, calibration learning, priors, file I/O and the families' model classes are
# left out on both sides. "added" marks modules for features that arrived after the
# before commit (not part of the refactor), counted separately.
_INFERENCE = [
    f"inference/_{name}.py"
    for name in (
        "map",
        "nuts",
        "grid",
        "curvature",
        "gaussian",
        "iterate",
        "solution",
        "natural_gradient",
        "optax",
    )
]
TEST_STEP_FILES: dict[str, dict[str, list[str]]] = {
    "before": {
        "entry points and routing": ["models/_posterior_mean.py", "models/base.py"],
        "posterior uncertainties": ["models/_posterior.py"],
        "nuisance (RV, continuum) and binary": ["models/_nuisance.py", "models/_binary.py"],
        "Cannon test step": ["models/cannon/_test_step.py", "models/cannon/_infer.py"],
        "Lux test step": ["models/lux/_test_step.py"],
        "inference/ solvers and samplers": _INFERENCE,
        "mixtures' hand-written sampler": ["mixtures/_sampling.py"],
    },
    "after": {
        "entry points and routing": [
            "models/_infer.py",
            "models/_strategies.py",
            "models/_estimators.py",
            "models/_temperature.py",
            "models/_nuts_columns.py",
            "models/base.py",
        ],
        "posterior uncertainties": ["models/_posterior.py"],
        "nuisance (RV, continuum) and binary": [
            "models/_nuisance.py",
            "models/_nuisance_model.py",
            "models/_doppler.py",
            "models/_flux_fit.py",
            "models/_binary.py",
            "models/_binary_model.py",
        ],
        "Cannon test step": [
            "models/cannon/_test_step.py",
            "models/cannon/_infer.py",
            "models/cannon/_map.py",
            "models/cannon/_posterior_mean.py",
            "models/cannon/_nuts.py",
            "models/cannon/_flux_model.py",
        ],
        "Lux test step": ["models/lux/_test_step.py"],
        "inference/ solvers and samplers": [
            *_INFERENCE,
            "inference/_damped_newton.py",
            "inference/_importance.py",
        ],
        "mixtures' hand-written sampler": [],
        "added": [
            "models/cannon/_quadratic_step.py",
            "models/_binary_calibration.py",
            "models/_accuracy_guard.py",
            "models/payne/_test_step.py",
        ],
    },
}


# ---------------------------------------------------------------- worker (one tree)


def _fit(model: Any, train: Any, **kwargs: Any) -> Any:
    import inspect

    if "calibrate" in inspect.signature(model.fit).parameters:
        kwargs["calibrate"] = False
    return model.fit(train, **kwargs)


def _checksum(*arrays: Any) -> str:
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(np.asarray(array, dtype=np.float64)).tobytes())
    return digest.hexdigest()[:16]


def _worker_setup(size: dict[str, int], workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Data, fitted models and one closure per case; a description of the inputs."""

    import starlabel
    from starlabel.data import simulate_cannon, simulate_linear_latent, write_dataset
    from starlabel.models.cannon import Cannon
    from starlabel.models.lux import Lux
    from starlabel.pipeline import run_inference

    try:  # the typed entry point (after the refactor)
        from starlabel.models import PosteriorMean
        from starlabel.models import infer as typed_infer

        def posterior_mean(fitted: Any, data: Any) -> Any:
            return typed_infer(fitted, data, estimator=PosteriorMean())

        api = "typed infer(estimator=PosteriorMean())"
    except ImportError:  # before: strings
        from starlabel.models import infer_labels

        def posterior_mean(fitted: Any, data: Any) -> Any:
            return infer_labels(fitted, data, estimator="mean")

        api = 'infer_labels(estimator="mean")'

    n_test = max(size["map"], size["laplace"], size["mean"], size["pipe"])
    sim = simulate_cannon(size["train"] + n_test, n_pixels=size["pixels"], n_labels=3, seed=17)
    data = sim.dataset
    train, test = data[: size["train"]], data[size["train"] :]
    cannon = _fit(Cannon(label_names=data.label_names), train)
    latent = simulate_linear_latent(n_stars=2 * size["lux"], n_latents=4, n_pixels=128, seed=7)
    lux_train, lux_test = latent.dataset[: size["lux"]], latent.dataset[size["lux"] :]
    lux = _fit(Lux(latent.dataset.label_names, latent_size=4), lux_train)

    model_path = workdir / "cannon.starlabel"
    cannon.save(model_path)
    pipe_input = workdir / "pipeline_input.npz"
    write_dataset(test[: size["pipe"]], pipe_input)
    pipe_output = workdir / "pipeline_output.parquet"

    def pipeline() -> Any:
        summary = run_inference(
            model_path,
            [pipe_input],
            pipe_output,
            chunk_size=1024,
            overwrite=True,
            progress=False,
            compilation_cache=False,
        )
        return summary

    # The test sets are cut once: a dataset slice copies and validates its arrays, which
    # is not the test step's work.
    sets = {name: test[: size[name]] for name in ("map", "laplace", "mean", "nuts")}
    cases = {
        "cannon_map": lambda: cannon.infer(sets["map"]),
        "cannon_laplace": lambda: cannon.infer(sets["laplace"], uncertainty="laplace"),
        "cannon_posterior_mean": lambda: posterior_mean(cannon, sets["mean"]),
        "cannon_nuts": lambda: cannon.infer(
            sets["nuts"], uncertainty="nuts", posterior_options={"num_warmup": 200, "num_samples": 200}
        ),
        "lux": lambda: lux.infer(lux_test),
        "pipeline": pipeline,
    }
    info = {
        "starlabel": str(Path(starlabel.__file__).resolve().parents[1]),
        "posterior_mean_api": api,
        "inputs_checksum": _checksum(data.flux, data.ivar, latent.dataset.flux),
        "cannon_theta_checksum": _checksum(cannon.theta),
    }
    return cases, info


def _labels_summary(result: Any) -> Any:
    """A short digest of a result's labels, to see both sides computed the same thing."""
    import numpy as np

    labels = getattr(result, "labels", None)
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=float)
    return [round(float(x), 4) for x in np.nanmedian(labels, axis=0)]


def worker(size_name: str, workdir: Path) -> None:
    """Serve timed calls: read a case name per line, answer one JSON line."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not reach the protocol pipe
    cases, info = _worker_setup(SIZES[size_name], workdir)
    digests = {}
    for name, call in cases.items():  # warm-up on the timed shapes: compile here
        digests[name] = _labels_summary(call())
        call()
    out.write(json.dumps({"ready": True, **info, "labels_median": digests}) + "\n")
    out.flush()
    for line in sys.stdin:
        name = line.strip()
        if not name:
            break
        cpu0, wall0 = time.process_time(), time.perf_counter()
        cases[name]()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        out.write(json.dumps({"case": name, "wall_s": wall, "cpu_s": cpu}) + "\n")
        out.flush()


# ---------------------------------------------------------------- driver


class _Side:
    def __init__(self, name: str, src: Path, workdir: Path, size: str, threads: int) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(src), "JAX_ENABLE_COMPILATION_CACHE": "false"}
        command = [sys.executable, __file__, "--worker", "--size", size, "--threads", str(threads)]
        self.process = subprocess.Popen(
            [*command, "--workdir", str(workdir)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(workdir.parent / f"{name}.log", "w"),  # noqa: SIM115
            text=True,
        )
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped; see its log next to the workdir.")
        return json.loads(line)

    def run(self, case: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(case + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def _code_lines(path: Path) -> int:
    """Lines holding code: not blank, not a comment, not inside a docstring."""
    text = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstring_lines.update(range(value.lineno, (value.end_lineno or value.lineno) + 1))
    return sum(
        1
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#") and number not in docstring_lines
    )


def line_counts(roots: dict[str, Path]) -> dict[str, Any]:
    """Lines and code lines of the test-step files (:data:`TEST_STEP_FILES`) per side."""
    counts: dict[str, Any] = {}
    for side, groups in TEST_STEP_FILES.items():
        root = roots[side] / "starlabel"
        per_group = {}
        for group, files in groups.items():
            rows = {
                f: {"lines": len((root / f).read_text().splitlines()), "code": _code_lines(root / f)}
                for f in files
            }
            per_group[group] = {
                "files": rows,
                "lines": sum(r["lines"] for r in rows.values()),
                "code": sum(r["code"] for r in rows.values()),
            }
        refactored = [g for g in per_group if g != "added"]
        counts[side] = {
            "groups": per_group,
            "total_lines": sum(per_group[g]["lines"] for g in refactored),
            "total_code": sum(per_group[g]["code"] for g in refactored),
        }
    return counts


def _summary(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case and side: the median over worker processes of each process's median call.

    The same code runs 10–50 % faster or slower in one process than in another (memory
    placement; measured while profiling the Cannon test step), so one worker per side
    compares two draws of that. ``noise_cpu`` is the largest ratio between two processes
    of the same side (their medians); a ratio after/before inside ``[1/noise, noise]``
    is within noise.
    """
    out: dict[str, Any] = {}
    processes = sorted({c.get("process", 0) for c in calls})
    for case in CASES:
        row: dict[str, Any] = {}
        spread = 1.0
        for side in ("before", "after"):
            mine = [c for c in calls if c["case"] == case and c["side"] == side]
            per_process = {
                field: [
                    statistics.median(c[f"{field}_s"] for c in mine if c.get("process", 0) == p)
                    for p in processes
                ]
                for field in ("wall", "cpu")
            }
            spread = max(spread, max(per_process["cpu"]) / min(per_process["cpu"]))
            row[side] = {
                "median_wall_s": statistics.median(per_process["wall"]),
                "median_cpu_s": statistics.median(per_process["cpu"]),
                "process_median_cpu_s": [round(v, 4) for v in per_process["cpu"]],
                "wall_s": [round(c["wall_s"], 4) for c in mine],
                "cpu_s": [round(c["cpu_s"], 4) for c in mine],
            }
        for field in ("wall", "cpu"):
            row[f"ratio_{field}_after_over_before"] = round(
                row["after"][f"median_{field}_s"] / row["before"][f"median_{field}_s"], 3
            )
        row["noise_cpu"] = round(spread, 3)
        row["within_noise"] = 1.0 / spread <= row["ratio_cpu_after_over_before"] <= spread
        out[case] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the pre-refactor commit (default e79605e)")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per case, side and process")
    parser.add_argument(
        "--processes", type=int, default=3, help="worker processes per side, one pair after another"
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 rounds: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    _common.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        worker(args.size, args.workdir)
        return
    size = "quick" if args.quick else "full"
    rounds = 2 if args.quick else args.rounds
    processes = 1 if args.quick else args.processes
    record = _common.start(args, THREADS)
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="starlabel-refactor-"))
    before_tree = scratch / "before_tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(before_tree), args.before],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    sides: dict[str, _Side] = {}
    try:
        # A copy of src/ as it is now: edits made while this runs do not reach the timed calls.
        after_src = scratch / "after" / "src"
        shutil.copytree(REPO / "src", after_src, ignore=shutil.ignore_patterns("__pycache__"))
        roots = {"before": before_tree / "src", "after": after_src}
        counts = line_counts(roots)
        calls: list[dict[str, Any]] = []
        infos: dict[str, Any] = {}
        for process in range(processes):
            for name in ("before", "after"):
                _common.log(f"process {process + 1}/{processes}, {name}: simulating, fitting and warming up")
                work = scratch / f"work_{name}_{process}"
                sides[name] = _Side(name, roots[name], work, size, THREADS["threads"])
            for r in range(rounds):
                for k, case in enumerate(CASES):
                    order = ("before", "after") if (r + k + process) % 2 == 0 else ("after", "before")
                    for name in order:
                        reply = sides[name].run(case)
                        load = round(os.getloadavg()[0], 2)
                        calls.append(
                            {**reply, "side": name, "process": process, "round": r, "load_1min": load}
                        )
                _common.log(
                    f"process {process + 1}, round {r + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}"
                )
            infos = {name: side.info for name, side in sides.items()}
            for side in sides.values():
                side.close()
            sides = {}
    finally:
        for side in sides.values():
            side.close()
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=REPO, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    summary = _summary(calls)
    result = {
        "description": __doc__.splitlines()[0],
        "before_commit": args.before,
        "size": SIZES[size],
        "rounds": rounds,
        "processes": processes,
        "note": (
            "Alternating timed calls (A B, B A, ...) in warm worker processes, one per tree at a"
            " time, `processes` pairs one after another, threads pinned alike; compilation happens"
            " in the untimed warm-up. Per side: the median over processes of each process's median"
            " call; noise_cpu: the largest ratio between two processes of one side. On a busy"
            " machine (run.busy) compare the CPU seconds: walls move with the load."
        ),
        "summary": summary,
        "workers": infos,
        "line_counts": counts,
        "calls": calls,
        "duration_s": round(time.perf_counter() - began, 1),
        "run": _common.finish(record),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for case, row in summary.items():
        print(
            f"{case:24s} before {row['before']['median_cpu_s']:.3f} CPU s / {row['before']['median_wall_s']:.3f} wall"
            f"  after {row['after']['median_cpu_s']:.3f} / {row['after']['median_wall_s']:.3f}"
            f"  ratio cpu {row['ratio_cpu_after_over_before']}, wall {row['ratio_wall_after_over_before']}"
            f"  (noise {row['noise_cpu']}: {'within' if row['within_noise'] else 'OUTSIDE'})"
        )
    for side in ("before", "after"):
        print(
            f"test-step code {side}: {counts[side]['total_lines']} lines, {counts[side]['total_code']} code lines"
        )
    print(f"wrote {args.out} in {result['duration_s']} s")


if __name__ == "__main__":
    main()
