"""Nearest neighbours without scipy for small problems (_internal/_nearest.py) = scipy's k-d tree."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial import KDTree

from starlabel._internal import _nearest
from starlabel._internal._nearest import k_nearest


@pytest.mark.parametrize("brute", [True, False], ids=["numpy", "kd-tree"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_k_nearest_is_the_kd_trees(brute, k, monkeypatch):
    rng = np.random.default_rng(k)
    points, query = rng.normal(size=(300, 4)), rng.normal(size=(1200, 4))
    monkeypatch.setattr(_nearest, "_tree_pays", lambda pairs: not brute)
    monkeypatch.setattr(_nearest, "_BLOCK_ELEMENTS", 5000)  # several blocks
    distance, index = k_nearest(points, query, k)
    expected_distance, expected_index = KDTree(points).query(query, k=k)
    assert distance.shape == index.shape == (1200, k)
    np.testing.assert_allclose(distance, np.reshape(expected_distance, (1200, k)), rtol=1e-12)
    np.testing.assert_array_equal(index, np.reshape(expected_index, (1200, k)))


def test_more_neighbours_than_points_are_infinitely_far():
    points = np.array([[0.0, 0.0], [3.0, 4.0]])
    distance, index = k_nearest(points, np.array([[0.0, 0.0]]), 3)
    np.testing.assert_array_equal(distance, [[0.0, 5.0, np.inf]])
    np.testing.assert_array_equal(index, [[0, 1, 2]])


def test_small_problems_do_not_import_scipy():
    code = (
        "import sys, numpy as np\n"
        "from starlabel._internal._nearest import k_nearest\n"
        "k_nearest(np.random.default_rng(0).normal(size=(2048, 5)), np.zeros((1024, 5)), 32)\n"
        "assert 'scipy.spatial' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dims", [0, 1, 5, 7])
def test_brute_force_distances_are_the_plain_sums_bit_for_bit(dims):
    # Below 8 dimensions np.sum adds left to right: the per-dimension sums are the same numbers.
    rng = np.random.default_rng(dims)
    points, query = rng.normal(size=(300, dims)), rng.normal(size=(200, dims))
    distance, index = k_nearest(points, query, 7)
    plain = np.sqrt(np.sum((query[:, None, :] - points[None, :, :]) ** 2, axis=2))
    np.testing.assert_array_equal(distance, np.take_along_axis(plain, index, axis=1))
    np.testing.assert_array_equal(distance, np.sort(plain, axis=1)[:, :7])


def test_a_long_run_switches_to_the_tree_once_brute_force_has_cost_the_import():
    # Each 4,000 x 800 search costs ~10-30 ms: after the 0.2 s budget the process imports
    # scipy.spatial and searches with the tree (same results), never before.
    code = (
        "import sys, numpy as np\n"
        "from starlabel._internal import _nearest\n"
        "rng = np.random.default_rng(0)\n"
        "points, query = rng.normal(size=(800, 3)), rng.normal(size=(4000, 3))\n"
        "first = _nearest.k_nearest(points, query, 1)\n"
        "assert 'scipy.spatial' not in sys.modules\n"
        "for _ in range(200):\n"
        "    if 'scipy.spatial' in sys.modules:\n"
        "        break\n"
        "    again = _nearest.k_nearest(points, query, 1)\n"
        "assert 'scipy.spatial' in sys.modules, 'never switched to the tree'\n"
        "assert _nearest._brute_force_seconds > _nearest.SCIPY_IMPORT_SECONDS\n"
        "tree = _nearest.k_nearest(points, query, 1)\n"
        "np.testing.assert_allclose(tree[0], first[0], rtol=1e-12)\n"
        "np.testing.assert_array_equal(tree[1], first[1])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
