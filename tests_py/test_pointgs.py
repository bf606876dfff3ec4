"""PointGS (paper only, no official code): the kNN builders (grid == brute force == a full
sort of the distance matrix, ties to the lower index) and the method's output against float64
softmax attention restricted to each point's k nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest

import spattn
from spattn.methods.pointgs import default_points, knn_brute, knn_grid, knn_indices
from conftest import make_qkv, ref_attention


def ref_knn(points, k, include_self=True):
    p = np.asarray(points, np.float64)
    d = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    if not include_self:
        np.fill_diagonal(d, np.inf)
    idx = np.arange(len(p))
    return np.stack([np.lexsort((idx, row))[:k] for row in d])


@pytest.mark.parametrize("n, k, include_self, kind", [(1, 1, True, "uniform"), (37, 5, False, "uniform"),
                                                      (613, 16, True, "flat"), (900, 9, False, "lattice"),
                                                      (2500, 8, True, "uniform")])
def test_grid_and_brute_force_equal_the_full_sort(n, k, include_self, kind):
    rng = np.random.default_rng(n)
    if kind == "lattice":  # many exact ties and duplicates
        pts = np.round(rng.random((n, 3)) * 5)
    elif kind == "flat":
        pts = rng.random((n, 3)) * [10.0, 3.0, 0.01]
    else:
        pts = rng.random((n, 3))
    pts = pts.astype(np.float32)
    grid = knn_grid(pts, k, include_self=include_self)
    np.testing.assert_array_equal(grid, knn_brute(pts, k, include_self=include_self))
    if n <= 1000:
        np.testing.assert_array_equal(grid, ref_knn(pts, k, include_self))
    assert grid.dtype == np.int32
    with pytest.raises(ValueError, match="k must be <="):
        knn_indices(pts, n + 1)


@pytest.mark.parametrize("B, Hq, Hkv, N, D, k", [(1, 4, 2, 211, 64, 16), (2, 2, 1, 97, 80, 7), (1, 2, 2, 50, 128, 50)])
def test_output_is_attention_over_the_knn_set(B, Hq, Hkv, N, D, k):
    q, k_, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    pts = np.random.default_rng(D).random((B, N, 3)).astype(np.float32)
    m = spattn.methods.get("pointgs", k=k, points=pts)
    allowed = np.zeros((B, 1, N, N), bool)
    for b in range(B):
        allowed[b, 0, np.arange(N)[:, None], ref_knn(pts[b], k)] = True
    np.testing.assert_array_equal(m.estimate(q, k_).to_dense(N), np.broadcast_to(allowed, (B, Hq, N, N)))
    ref, _ = ref_attention(q, k_, v, allowed=allowed)
    np.testing.assert_allclose(m(q, k_, v), ref, rtol=1e-4, atol=1e-5)


def test_default_points_and_bad_points():
    p = default_points(30)
    assert p.shape == (30, 3) and len(np.unique(p, axis=0)) == 30
    q, k, v = make_qkv(1, 2, 1, 30, 30, 16)
    with pytest.raises(ValueError, match="points must have shape"):
        spattn.methods.get("pointgs", points=np.zeros((29, 3))).estimate(q, k)
    with pytest.raises(ValueError, match="points must have shape"):
        spattn.methods.get("pointgs", points=np.zeros((30, 2)))
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("pointgs").estimate(q, k, causal=True)
