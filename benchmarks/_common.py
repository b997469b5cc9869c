"""Small helpers shared by the benchmark scripts (run as ``python benchmarks/X.py``).

Imports nothing heavy, so scripts that must set environment variables before numpy
or JAX load can import it first.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

__all__ = ["log", "peak_rss_bytes", "proc_status_kb", "write_result"]


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
