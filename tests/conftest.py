"""Shared test configuration: strict JAX numerics, deterministic keys, real-data access."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from starlabel.data import SHARED_DATA_ENV, shared_data_dir

# One compilation cache for the whole test session, never the user's: the xdist
# controller (or the single pytest process) makes the folder and its workers inherit it
# through the environment, as do the CLI and tutorial subprocesses the tests start. Every
# program is cached (min compile time 0): what one worker or subprocess compiled, the
# others load. STARLABEL_TEST_CACHE=<folder> uses and keeps that folder instead, so that
# a rerun on the same machine compiles almost nothing (entries are keyed by the program,
# so an edited one is compiled again); STARLABEL_TEST_SHARED_CACHE=0 restores the old
# behaviour (only the CLI's own cache, programs that took >= 1 s).
_KEEP_CACHE = os.environ.get("STARLABEL_TEST_CACHE")
_OWN_CACHE = "PYTEST_XDIST_WORKER" not in os.environ or not os.environ.get("STARLABEL_CACHE_DIR")
if _OWN_CACHE:
    os.environ["STARLABEL_CACHE_DIR"] = _KEEP_CACHE or tempfile.mkdtemp(prefix="starlabel-tests-cache-")
if os.environ.get("STARLABEL_TEST_SHARED_CACHE", "1") == "1":
    from starlabel._internal._compile_cache import enable_compilation_cache

    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
else:
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

# Strictness that catches silent broadcasting and dtype surprises in our own code.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded NumPy generator per test."""
    return np.random.default_rng(20261122)


@pytest.fixture
def getkey():
    """Deterministic JAX keys: each call returns the next key of a fixed sequence."""
    key = jax.random.key(0)

    def next_key():
        nonlocal key
        key, subkey = jax.random.split(key)
        return subkey

    return next_key


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips the test with a clear reason when absent."""
    folder = shared_data_dir()
    if folder is None:
        pytest.skip(
            f"shared real data not found: set ${SHARED_DATA_ENV} or place it at ../shared/data"
            " beside the checkout (CI always has it)."
        )
    return folder


@pytest.fixture(scope="session")
def apogee_giants(shared_data: Path):
    """The 500 real APOGEE giants (100 pixels) with labels teff, logg, m_h."""
    from starlabel.data import read_dataset

    return read_dataset(shared_data / "apogee" / "giants_100px.npz", labels=("teff", "logg", "m_h"))


# --- Optional per-test profile: STARLABEL_TEST_PROFILE=<folder> writes one JSON line per
# test (CPU seconds of the test process and of the subprocesses it waited for, wall
# seconds, and JAX's own tracing / compilation seconds), one file per xdist worker. CPU
# time, not wall time, because the suite is timed on shared, loaded machines.
_PROFILE_DIR = os.environ.get("STARLABEL_TEST_PROFILE")
_JAX_SECONDS: dict[str, float] = {}
_JAX_EVENTS: dict[str, int] = {}

if _PROFILE_DIR:
    from jax import monitoring

    def _jax_event(event: str, seconds: float, **_: object) -> None:
        _JAX_SECONDS[event] = _JAX_SECONDS.get(event, 0.0) + seconds

    def _jax_count(event: str, **_: object) -> None:
        _JAX_EVENTS[event] = _JAX_EVENTS.get(event, 0) + 1

    monitoring.register_event_duration_secs_listener(_jax_event)
    monitoring.register_event_listener(_jax_count)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 - pytest's hook signature
        before, wall, jax_before, events_before = (
            os.times(),
            time.perf_counter(),
            dict(_JAX_SECONDS),
            dict(_JAX_EVENTS),
        )
        yield
        after = os.times()
        jax_spent = {
            k.rsplit("/", 1)[-1]: round(v - jax_before.get(k, 0.0), 3) for k, v in _JAX_SECONDS.items()
        }
        record = {
            "test": item.nodeid,
            "cpu": round(after.user + after.system - before.user - before.system, 3),
            "children_cpu": round(
                after.children_user + after.children_system - before.children_user - before.children_system, 3
            ),
            "wall": round(time.perf_counter() - wall, 3),
            "jax": {k: v for k, v in jax_spent.items() if v > 0},
            "events": {
                k.rsplit("/", 1)[-1]: v - events_before.get(k, 0)
                for k, v in _JAX_EVENTS.items()
                if v > events_before.get(k, 0)
            },
        }
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(_PROFILE_DIR).mkdir(parents=True, exist_ok=True)
        with open(Path(_PROFILE_DIR) / f"{worker}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


# --- Scheduling: `--dist loadfile` (pyproject) keeps each file on one xdist worker, so
# module fixtures (trained models) are built and their programs compiled once, not once
# per worker. Files are handed out in this order: the most expensive first (CPU seconds
# per file, from a profiled run, tests/module_cpu_seconds.json), so that two workers
# finish together instead of one waiting on a long file that started last. Files not in
# the table keep their collection order, after the others.
_COSTS = Path(__file__).with_name("module_cpu_seconds.json")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    costs = json.loads(_COSTS.read_text()) if _COSTS.exists() else {}
    first = {}
    for index, item in enumerate(items):
        first.setdefault(item.nodeid.split("::", 1)[0], index)
    items.sort(key=lambda item: (-costs.get(m := item.nodeid.split("::", 1)[0], 0.0), first[m]))


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest's hook signature
    """Sum a profiled run's CPU seconds per file (refresh module_cpu_seconds.json from it)."""
    if not _PROFILE_DIR or "PYTEST_XDIST_WORKER" in os.environ:
        return
    totals: dict[str, float] = {}
    for path in Path(_PROFILE_DIR).glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            module = record["test"].split("::", 1)[0]
            totals[module] = totals.get(module, 0.0) + record["cpu"] + record["children_cpu"]
    ranked = dict(sorted(((m, round(t, 1)) for m, t in totals.items()), key=lambda kv: -kv[1]))
    (Path(_PROFILE_DIR) / "module_cpu_seconds.json").write_text(json.dumps(ranked, indent=1) + "\n")


def pytest_unconfigure(config):  # noqa: ARG001 - pytest's hook signature
    if _OWN_CACHE and not _KEEP_CACHE:  # the process that made the session's cache folder removes it
        shutil.rmtree(os.environ["STARLABEL_CACHE_DIR"], ignore_errors=True)
