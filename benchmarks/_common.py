"""Helpers every benchmark script uses (run as ``python benchmarks/X.py``).

Imports nothing heavy, so a script imports it first and calls :func:`pin_threads`
before numpy or JAX load. The rules that make a figure worth quoting:

* **Threads pinned and recorded** for both sides of a comparison: BLAS
  (``OPENBLAS/OMP/MKL_NUM_THREADS``) and XLA (``XLA_FLAGS`` intra-op threads) are set
  in the environment before any import, so the main process (where a reference such as
  Ho's ``thecannon`` runs in-process) and every child process get the same counts.
* **A quiet machine**: the load average is recorded before and after; a run that
  starts on a busy machine stops with a message unless ``--allow-busy`` is given, and
  then its JSON says ``"busy": true``.
* **The commit** that produced the numbers is recorded (and whether the tree was dirty).

Scripts call ``add_arguments(parser)``, then ``record = start(args)`` after parsing and
``finish(record)`` just before writing; ``record`` goes into the JSON as ``"run"``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "add_arguments",
    "finish",
    "git_commit",
    "giants_cv_splits",
    "log",
    "peak_rss_bytes",
    "pin_threads",
    "proc_status_kb",
    "start",
    "write_result",
]

REPO = Path(__file__).resolve().parents[1]
BUSY_LOAD_PER_CPU = 0.35
"""A 1-minute load average above this × CPUs before a run counts as a busy machine."""
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_from_argv(default: int) -> int:
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


def pin_threads(default: int | None = None) -> dict[str, Any]:
    """Set BLAS and XLA thread counts for this process and its children; call before numpy.

    The count is ``--threads N`` from the command line, else ``default``, else every
    CPU. Both sides of a comparison then run with the same threads, whether the other
    side runs in this process or in a child.

    Returns
    -------
    dict
        The settings, to record in the results.

    Raises
    ------
    RuntimeError
        If numpy or JAX is already imported (the settings would not take effect).
    """
    loaded = [m for m in ("numpy", "jax", "scipy") if m in sys.modules]
    if loaded:
        raise RuntimeError(f"pin_threads must run before importing {loaded}; move it to the top.")
    n = _threads_from_argv(default or os.cpu_count() or 1)
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    eigen = "true" if n > 1 else "false"
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={n}".strip()
    )
    os.environ.setdefault("MPLBACKEND", "Agg")  # Ho's thecannon sets usetex at import
    return {"threads": n, **{var: os.environ[var] for var in (*_THREAD_VARS, "XLA_FLAGS")}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (read early by :func:`pin_threads`), ``--allow-busy`` and ``--max-load``."""
    parser.add_argument(
        "--threads", type=int, default=None, help="BLAS/XLA threads for both sides (default: all CPUs)"
    )
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="run even if the machine is busy; the JSON then says busy: true (figures not quotable)",
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=None,
        help=f"1-minute load average counted as busy (default {BUSY_LOAD_PER_CPU} × CPUs)",
    )


def git_commit() -> dict[str, Any]:
    """The repository's HEAD commit and whether tracked files differ from it."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "-uno"))}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start(args: argparse.Namespace, threads: dict[str, Any]) -> dict[str, Any]:
    """Check the machine is quiet, and collect what the results must record.

    Exits with a message when the 1-minute load average is above ``--max-load``
    (default :data:`BUSY_LOAD_PER_CPU` × CPUs), unless ``--allow-busy`` is given.
    """
    cpus = os.cpu_count() or 1
    limit = args.max_load if args.max_load is not None else BUSY_LOAD_PER_CPU * cpus
    load = _load()
    busy = load[0] > limit
    if busy and not args.allow_busy:
        sys.exit(
            f"machine busy: load average {load} > {limit:g} on {cpus} CPUs; timings would not be"
            " quotable. Wait for a quiet machine, or pass --allow-busy (the JSON is then marked"
            " busy: true)."
        )
    return {
        **git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": cpus,
        "threads": threads,
        "load_average_before": load,
        "busy_limit": limit,
        "busy": busy,
    }


def finish(record: dict[str, Any]) -> dict[str, Any]:
    """Add the load average after the run and the library versions; returns ``record``."""
    record["load_average_after"] = _load()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    versions = {}
    for name in ("starlabel", "numpy", "jax", "jaxlib", "scipy", "astropy", "thecannon", "emcee"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    record["versions"] = versions
    return record


def log(*args: object) -> None:
    """Print with a wall-clock time stamp, flushed (benchmarks run for minutes)."""
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def proc_status_kb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``…) in kB; NaN if absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process image in bytes.

    /proc's VmHWM belongs to this process image; ``ru_maxrss`` is only the fallback
    because Linux carries it across ``execve`` from the parent (the benchmark driver).
    """
    peak = proc_status_kb("VmHWM")
    if peak == peak:  # not NaN
        return int(peak) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_result(result: dict[str, object], out: Path, **versions: str) -> None:
    """Add the machine, versions and date to ``result``, write it as JSON and print it."""
    result = {
        **result,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "date": time.strftime("%Y-%m-%d"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def giants_cv_splits(n_folds: int = 5, seed: int = 2026) -> tuple[Any, list]:
    """The 500 shared APOGEE giants (teff, logg, m_h) and their (train, held-out) folds.

    Exits with a message when the shared data are absent. Imports starlabel only when
    called, so :func:`pin_threads` can still run first.
    """
    import numpy as np

    from starlabel._internal import fold_indices
    from starlabel.data import read_dataset, shared_data_dir

    folder = shared_data_dir()
    if folder is None:
        raise SystemExit("the shared real data were not found; set STARLABEL_SHARED_DATA.")
    giants = read_dataset(folder / "apogee" / "giants_100px.npz", labels=("teff", "logg", "m_h"))
    everyone = np.arange(giants.n_stars)
    return giants, [
        (np.setdiff1d(everyone, held), held) for held in fold_indices(giants.n_stars, n_folds, seed)
    ]
