"""Cannon training and test step on more spectra than memory: peak RSS, wall time, agreement.

Run from the repository root on a quiet machine (≈ 15–25 min on a 2-core box; needs
≈ 12 GB free in /tmp)::

    .venv/bin/python benchmarks/cannon_memory.py          # writes benchmarks/results/cannon_memory.json

Check that it runs (any machine, ~3 min, not for quoting)::

    .venv/bin/python benchmarks/cannon_memory.py --stars 5000 --allow-busy --output /tmp/cannon_memory.json

What it does:

1. writes 100 000 simulated spectra × 7214 pixels (3 labels, quadratic Cannon truth,
   S/N 40–150, 1 % masked pixels, 0.5 % of stars missing logg) as float64 ``flux`` and
   ``ivar`` to an HDF5 file in /tmp (11.5 GB), block by block: the spectra are never
   all in memory. All blocks share one simulated model (θ, scatter, wavelengths from
   one :func:`~starlabel.data.simulate_cannon` call); each block draws its own labels
   and noise;
2. trains with :meth:`Cannon.fit_file` in a fresh subprocess and records its peak RSS
   (``VmHWM`` from /proc, the child's own) and wall time;
3. checks agreement with the in-memory :meth:`Cannon.fit` on the first 5000 stars
   (both at the default ``tol`` and at ``tol=1e-10``), in another subprocess;
4. runs :func:`starlabel.pipeline.run_inference` with the streamed model on the whole
   file in a fresh subprocess, records its peak RSS and compares the labels with the
   truth;
5. deletes the file.

The target (project issue): peak memory under 4 GB for training and test step at
100 000 × 7214. Threads (all CPUs, ``--threads``), load average and commit are recorded
(``_common.py``).
"""

from __future__ import annotations

from _common import pin_threads  # isort: skip  (before numpy: it pins the threads)

THREADS = pin_threads()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common  # noqa: E402
import numpy as np  # noqa: E402
from _common import log, peak_rss_bytes  # noqa: E402

N_PIXELS = 7214  # APOGEE DR12 gap-removed grid
LABELS = ("teff", "logg", "fe_h")
WRITE_BLOCK = 2000
ROWS_PER_BLOCK = 1024
SUBSET = 5000
RESULT = Path(__file__).resolve().parent / "results" / "cannon_memory.json"
GIB = 2.0**30


# ----------------------------------------------------------------------------- data
def _design(x: np.ndarray) -> np.ndarray:
    """The simulator's quadratic term order: 1, x_k, x_i x_j (i ≤ j)."""
    columns = [np.ones(len(x))] + [x[:, k] for k in range(x.shape[1])]
    columns += [x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])]
    return np.stack(columns, axis=1)


def write_file(path: Path, n_stars: int) -> dict:
    """Write the training/survey file block by block; returns the simulated truth summary."""
    import h5py

    from starlabel.data import simulate_cannon

    model = simulate_cannon(10, N_PIXELS, len(LABELS), seed=0)  # θ, scatter, wavelengths
    with h5py.File(path, "w") as handle:
        # Contiguous (unchunked, uncompressed) datasets: a row range is one read.
        flux = handle.create_dataset("flux", shape=(n_stars, N_PIXELS), dtype="f8")
        ivar = handle.create_dataset("ivar", shape=(n_stars, N_PIXELS), dtype="f8")
        columns = {name: handle.create_dataset(name, shape=(n_stars,), dtype="f8") for name in LABELS}
        handle.create_dataset("wavelength", data=model.dataset.wavelength)
        handle.create_dataset("label_names", data=np.array(LABELS, dtype=object), dtype=h5py.string_dtype())
        for start in range(0, n_stars, WRITE_BLOCK):
            stop = min(start + WRITE_BLOCK, n_stars)
            n = stop - start
            seed = 1000 + start // WRITE_BLOCK
            # Labels from the simulator's distribution (1 pixel: labels only), shared model.
            labels = simulate_cannon(n, 1, len(LABELS), seed=seed).true_labels
            rng = np.random.default_rng(seed)
            true_flux = _design((labels - model.pivot) / model.scale) @ model.theta.T
            sigma = 1.0 / rng.uniform(40.0, 150.0, n)
            block = (
                true_flux
                + rng.normal(size=true_flux.shape) * model.scatter[None, :]
                + rng.normal(size=true_flux.shape) * sigma[:, None]
            )
            weights = np.broadcast_to(1.0 / sigma[:, None] ** 2, block.shape).copy()
            weights[rng.uniform(size=block.shape) < 0.01] = 0.0  # masked pixels
            flux[start:stop] = block
            ivar[start:stop] = weights
            missing = rng.uniform(size=n) < 0.005
            for k, name in enumerate(LABELS):
                column = labels[:, k].copy()
                if name == "logg":
                    column[missing] = np.nan
                columns[name][start:stop] = column
            del true_flux, block, weights
    return {"mean_scatter": float(model.scatter.mean()), "theta_shape": list(model.theta.shape)}


# ----------------------------------------------------------------------------- children
def _child_train(spec: dict) -> dict:
    import logging

    from starlabel.models import save_model
    from starlabel.models.cannon import Cannon

    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("starlabel.models.cannon._streaming")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Keep())
    t = time.perf_counter()
    fitted = Cannon(label_names=LABELS, order=2).fit_file(spec["data"], rows_per_block=spec["rows_per_block"])
    wall = time.perf_counter() - t
    save_model(fitted, spec["model"])
    return {
        "wall_s": wall,
        "peak_rss_bytes": peak_rss_bytes(),
        "training_info": dict(fitted.training_info),
        "pass_log": messages,
    }


def _child_agree(spec: dict) -> dict:
    """In-memory fit vs fit_file on the first SUBSET stars."""
    from starlabel.data import write_dataset
    from starlabel.models.cannon import Cannon
    from starlabel.pipeline import open_rows

    with open_rows(spec["data"]) as source:
        subset = source.read(0, spec["subset"], labels=LABELS)
    subset_path = Path(spec["workdir"]) / "subset.npz"
    write_dataset(subset, subset_path)
    out: dict = {"n_stars": spec["subset"]}
    for name, tol in (("default_tol", 1e-5), ("tol_1e-10", 1e-10)):
        model = Cannon(label_names=LABELS, order=2, tol=tol)
        t = time.perf_counter()
        memory = model.fit(subset)
        t_fit = time.perf_counter() - t
        t = time.perf_counter()
        streamed = model.fit_file(subset_path, rows_per_block=spec["rows_per_block"])
        t_stream = time.perf_counter() - t
        theta, theta_ref = np.asarray(streamed.theta), np.asarray(memory.theta)
        s2, s2_ref = np.asarray(streamed.s2), np.asarray(memory.s2)
        scattered = s2_ref > 1e-4 * np.median(s2_ref)
        out[name] = {
            "fit_s": t_fit,
            "fit_file_s": t_stream,
            "fit_em_iterations": dict(memory.training_info)["em_iterations"],
            "fit_file_passes": dict(streamed.training_info)["em_iterations"],
            "theta_max_abs_diff": float(np.max(np.abs(theta - theta_ref))),
            "theta_max_rel_diff_where_abs_theta_gt_1e-3": float(
                np.max((np.abs(theta - theta_ref) / np.abs(theta_ref))[np.abs(theta_ref) > 1e-3])
            ),
            "s2_max_rel_diff": float(np.max(np.abs(s2 - s2_ref)[scattered] / s2_ref[scattered])),
            "s2_max_abs_diff_over_median_noise_variance": float(
                np.max(np.abs(s2 - s2_ref)) / np.median(1.0 / subset.ivar[subset.ivar > 0])
            ),
            "pixel_ok_equal": bool(
                np.array_equal(np.asarray(streamed.pixel_ok), np.asarray(memory.pixel_ok))
            ),
        }
    subset_path.unlink()
    return out


def _child_infer(spec: dict) -> dict:
    from starlabel.data import read_result
    from starlabel.pipeline import run_inference

    t = time.perf_counter()
    summary = run_inference(
        spec["model"],
        [spec["data"]],
        spec["output"],
        chunk_size=spec["chunk_size"],
        overwrite=True,
        labels_from_input=True,
        progress=False,
    )
    wall = time.perf_counter() - t
    peak = peak_rss_bytes()
    table = read_result(spec["output"])
    recovery = {}
    for k, name in enumerate(LABELS):
        reference = np.asarray(table.extra[f"ref_{name}"], dtype=float)
        good = np.isfinite(reference)
        error = table.labels[good, k] - reference[good]
        recovery[name] = {"bias": float(np.mean(error)), "rms": float(np.sqrt(np.mean(error**2)))}
    return {
        "wall_s": wall,
        "peak_rss_bytes": peak,
        "n_written": summary.n_written,
        "n_failed": summary.n_failed,
        "spectra_per_s": summary.n_written / wall,
        "label_recovery": recovery,
    }


_CHILDREN = {"train": _child_train, "agree": _child_agree, "infer": _child_infer}


def _run_child(kind: str, spec: dict, timeout: float) -> dict:
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "_child", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {kind!r} failed:\n{done.stderr[-4000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["wall_s_including_startup"] = time.perf_counter() - t
    if "peak_rss_bytes" in record:
        record["peak_rss_gib"] = record["peak_rss_bytes"] / GIB
    return record


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stars", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/starlabel_cannon_memory"))
    parser.add_argument("--rows-per-block", type=int, default=ROWS_PER_BLOCK)
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--keep", action="store_true", help="keep the data file")
    _common.add_arguments(parser)
    args = parser.parse_args()
    run_record = _common.start(args, THREADS)

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / "train.h5"
    need = args.stars * N_PIXELS * 16 * 1.1 + 2e9
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        raise SystemExit(f"need {need / 1e9:.1f} GB free in {args.workdir}, have {free / 1e9:.1f} GB.")
    results: dict = {
        "run": run_record,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
            "load_before": [round(x, 2) for x in os.getloadavg()],
        },
        "n_stars": args.stars,
        "n_pixels": N_PIXELS,
        "labels": list(LABELS),
        "rows_per_block": args.rows_per_block,
        "target_peak_rss_gib": 4e9 / GIB,
    }
    try:
        t = time.perf_counter()
        results["simulation"] = write_file(data, args.stars)
        results["file"] = {
            "format": "HDF5, contiguous float64 flux + ivar",
            "bytes": data.stat().st_size,
            "gb": data.stat().st_size / 1e9,
            "write_s": time.perf_counter() - t,
        }
        log(f"wrote {data} ({data.stat().st_size / 1e9:.1f} GB) in {results['file']['write_s']:.0f} s")
        model = args.workdir / "streamed.starlabel"
        spec = {"data": str(data), "model": str(model), "rows_per_block": args.rows_per_block}
        results["fit_file"] = _run_child("train", spec, timeout=3600)
        log("fit_file:", {k: v for k, v in results["fit_file"].items() if k != "pass_log"})
        results["agreement_with_fit"] = _run_child(
            "agree", {**spec, "subset": min(SUBSET, args.stars), "workdir": str(args.workdir)}, timeout=3600
        )
        log("agreement:", results["agreement_with_fit"])
        output = args.workdir / "labels.parquet"
        results["run_inference"] = _run_child(
            "infer", {**spec, "output": str(output), "chunk_size": 1024}, timeout=3600
        )
        log("run_inference:", results["run_inference"])
        results["targets"] = {
            "fit_file_peak_rss_below_4GB": results["fit_file"]["peak_rss_bytes"] < 4e9,
            "run_inference_peak_rss_below_4GB": results["run_inference"]["peak_rss_bytes"] < 4e9,
        }
    finally:
        results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        results["run"] = _common.finish(run_record)
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"wrote {args.output}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(_CHILDREN[sys.argv[2]](json.loads(sys.argv[3])), default=str))
    else:
        main()
