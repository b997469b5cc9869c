"""How long the test suite takes, and where its CPU time goes.

Runs the README's suite command (``python -m pytest -q -n 2``) with the per-test profile
of ``tests/conftest.py`` (``STARLABEL_TEST_PROFILE``) and writes one JSON: wall seconds,
CPU seconds of the pytest processes and of the subprocesses the tests wait for, per
worker and per file, JAX's compilation and tracing seconds, persistent-cache hits and
the slowest tests. On a loaded machine wall time says little; the CPU sums still compare
two runs, and the quiet wall time of a run is about the CPU sum of its busiest worker
(the suite is CPU-bound: compiling dominates). Threads are not pinned: the suite runs
as CI runs it.

    python benchmarks/suite.py                           # quiet machine, ~10 min
    python benchmarks/suite.py --allow-busy --out /tmp/suite.json
    python benchmarks/suite.py --from-profile DIR --wall 3600 --allow-busy   # summarise a profiled run
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_arguments, finish, log, start, write_result  # noqa: E402


def summarise(profile: Path, top: int = 15) -> dict[str, object]:
    """Sums over the one-line-per-test JSON files a profiled run left in ``profile``."""
    tests = []
    for path in sorted(profile.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            tests.append({**json.loads(line), "worker": path.stem})
    cpu = lambda r: r["cpu"] + r["children_cpu"]  # noqa: E731
    modules: collections.Counter[str] = collections.Counter()
    jax_seconds: collections.Counter[str] = collections.Counter()
    events: collections.Counter[str] = collections.Counter()
    workers: dict[str, dict[str, float]] = {}
    for r in tests:
        modules[r["test"].split("::", 1)[0]] += cpu(r)
        jax_seconds.update(r.get("jax", {}))
        events.update(r.get("events", {}))
        w = workers.setdefault(r["worker"], {"tests": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0})
        w["tests"] += 1
        w["cpu_seconds"] += cpu(r)
        w["wall_seconds"] += r["wall"]
    slowest = sorted(tests, key=cpu, reverse=True)[:top]
    return {
        "tests": len(tests),
        "cpu_seconds": round(sum(cpu(r) for r in tests), 1),
        "subprocess_cpu_seconds": round(sum(r["children_cpu"] for r in tests), 1),
        "workers": {k: {n: round(v, 1) for n, v in w.items()} for k, w in workers.items()},
        "jax_wall_seconds": {k: round(v, 1) for k, v in jax_seconds.items()},
        "jax_events": dict(events),
        "files_cpu_seconds": {m: round(v, 1) for m, v in modules.most_common()},
        "slowest_tests_cpu_seconds": {r["test"]: round(cpu(r), 1) for r in slowest},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "suite.json")
    parser.add_argument("--from-profile", type=Path, default=None, help="summarise this profile folder")
    parser.add_argument("--wall", type=float, default=None, help="with --from-profile: the run's wall s")
    parser.add_argument("--note", default="", help="what the JSON should say about this run")
    args, pytest_args = parser.parse_known_args()
    record = start(args, {"threads": "not pinned (the suite as CI runs it)"})
    if args.from_profile is not None:
        profile, wall, returncode = args.from_profile, args.wall, None
    else:
        profile = Path(tempfile.mkdtemp(prefix="starlabel-suite-profile-"))
        command = [sys.executable, "-m", "pytest", "-q", "-n", "2", *pytest_args]
        log("running", " ".join(command))
        began = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "STARLABEL_TEST_PROFILE": str(profile)})
        wall, returncode = round(time.perf_counter() - began, 1), done.returncode
        log(f"exit {returncode} after {wall:.0f} s")
    result = {
        "benchmark": "suite",
        "command": "python -m pytest -q -n 2",
        "wall_seconds": wall,
        "returncode": returncode,
        **summarise(profile),
        "note": args.note,
        "run": finish(record),
    }
    # Each worker runs its files one test at a time on about one core: on a quiet machine
    # the run lasts about as long as its busiest worker's CPU sum.
    workers = result["workers"]
    assert isinstance(workers, dict)
    result["quiet_wall_estimate_seconds"] = max((w["cpu_seconds"] for w in workers.values()), default=None)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
