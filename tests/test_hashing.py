"""Input fingerprints started on a background thread equal the plain SHA-256, and only
a digest of the file as it is now is ever used."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import numpy as np

from starlabel._internal import _hashing
from starlabel.pipeline._inputs import describe_inputs


def _write(path, rng, n_bytes):
    path.write_bytes(rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def test_background_digest_is_the_sha256_of_the_file(tmp_path, rng):
    path = _write(tmp_path / "a.npz", rng, 9 * (1 << 20) + 123)  # several blocks and a tail
    _hashing.hash_in_background([path, tmp_path / "missing.npz", tmp_path, str(tmp_path / "*.npz")])
    assert len(_hashing._PENDING) == 1  # only the existing regular file started
    assert _hashing.sha256_of_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not _hashing._PENDING  # collected once


def test_many_files_are_hashed_in_order_by_one_thread(tmp_path, rng):
    paths = [_write(tmp_path / f"s{i}.npz", rng, (1 << 20) + i) for i in range(6)]
    _hashing.hash_in_background(paths)
    workers = [t for t in threading.enumerate() if t.name == "starlabel-sha256"]
    assert len(workers) <= 1  # one reader for a survey of many files, not one per file
    for path in paths:
        assert _hashing.sha256_of_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not _hashing._PENDING


def test_a_file_changed_after_its_hash_started_is_hashed_again(tmp_path, rng):
    path = _write(tmp_path / "b.npz", rng, 1 << 20)
    _hashing.hash_in_background([path])
    _write(path, rng, (1 << 20) + 1)  # another size (and content): another key
    assert _hashing.sha256_of_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    _hashing._PENDING.clear()


def test_describe_inputs_uses_the_background_digest_and_discards_unneeded_ones(tmp_path, rng):
    fresh = _write(tmp_path / "fresh.npz", rng, 1 << 21)
    known = _write(tmp_path / "known.npz", rng, 1 << 21)
    earlier = describe_inputs([known])[0]
    _hashing.hash_in_background([fresh, known])
    pending_known = _hashing._PENDING[_hashing._key(known.stat())]
    described = describe_inputs([fresh, known], known=[earlier])
    assert described[0].sha256 == hashlib.sha256(fresh.read_bytes()).hexdigest()
    assert described[1] == earlier  # a resumed input is not hashed again...
    assert pending_known.cancelled.is_set() and not _hashing._PENDING  # ...nor in the background


def test_infer_exits_without_waiting_for_a_background_hash(tmp_path):
    """The hashing thread is a daemon: a command that fails early does not read the input first."""
    big = tmp_path / "big.npz"
    with open(big, "wb") as handle:  # sparse: 32 GB to hash (~25 s), no disk used
        handle.truncate(32 << 30)
    code = f"import sys; from starlabel._internal._hashing import hash_in_background; hash_in_background([{str(big)!r}]); sys.exit(3)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    began = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], env=env, timeout=120)
    assert run.returncode == 3 and time.perf_counter() - began < 8
