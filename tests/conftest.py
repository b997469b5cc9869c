"""Shared test configuration: strict JAX numerics, deterministic keys, real-data access."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from starlabel.data import SHARED_DATA_ENV, shared_data_dir

# Pipeline runs (and their subprocesses) keep compiled code in a per-session folder,
# never in the user's cache.
os.environ["STARLABEL_CACHE_DIR"] = tempfile.mkdtemp(prefix="starlabel-tests-cache-")
# ...and only programs that took ≥ 1 s to compile (JAX's default), as before the CLI
# cached small programs too: a test session compiles thousands of them.
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
