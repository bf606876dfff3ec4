"""MobileViG SVGA against a numpy transcription of the official ``MRConv4d.forward``
(SLDGroup/MobileViG models/mobilevig.py: xj = 0; for i in range(K, H, K):
xj = max(xj, x - cat([x[:, :, -i:], x[:, :, :-i]], dim=2)); the same along W), and the softmax
variant against float64 attention over the same neighbourhood."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spattn
from spattn.methods.svga import svga_max_relative, svga_pattern
from conftest import make_qkv, ref_attention


def official_mrconv_xj(x, K):
    x = np.asarray(x, np.float64)
    xj = np.zeros_like(x)
    H, W = x.shape[2], x.shape[3]
    for i in range(K, H, K):
        xj = np.maximum(xj, x - np.concatenate([x[:, :, -i:], x[:, :, :-i]], axis=2))
    for i in range(K, W, K):
        xj = np.maximum(xj, x - np.concatenate([x[:, :, :, -i:], x[:, :, :, :-i]], axis=3))
    return xj


def official_neighbours(H, W, K):
    """(N, N) bool from the rolls: node (h, w) is compared with the node the roll brings to it."""
    n = np.arange(H * W).reshape(1, 1, H, W).astype(np.float64)
    adj = np.eye(H * W, dtype=bool)
    for i in range(K, H, K):
        src = np.concatenate([n[:, :, -i:], n[:, :, :-i]], axis=2).ravel().astype(int)
        adj[np.arange(H * W), src] = True
    for i in range(K, W, K):
        src = np.concatenate([n[:, :, :, -i:], n[:, :, :, :-i]], axis=3).ravel().astype(int)
        adj[np.arange(H * W), src] = True
    return adj


@pytest.mark.parametrize("H, W, K", [(7, 7, 2), (5, 9, 2), (6, 4, 3), (1, 13, 2)])
def test_pattern_is_the_official_graph(H, W, K):
    idx = svga_pattern(H, W, K)
    adj = np.zeros((H * W, H * W), bool)
    adj[np.arange(H * W)[:, None], idx] = True
    np.testing.assert_array_equal(adj, official_neighbours(H, W, K))
    assert idx.shape[1] == 1 + len(range(K, H, K)) + len(range(K, W, K))  # distinct entries


@pytest.mark.parametrize("B, Hq, Hkv, H, W, D", [(1, 4, 2, 7, 7, 64), (2, 2, 1, 9, 11, 80), (1, 2, 2, 5, 6, 128)])
def test_max_relative_and_softmax_variant(B, Hq, Hkv, H, W, D):
    N = H * W
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    x = np.random.default_rng(1).standard_normal((B, D, H, W)).astype(np.float32)
    np.testing.assert_allclose(svga_max_relative(x, 2), official_mrconv_xj(x, 2), rtol=1e-6, atol=1e-6)
    m = spattn.methods.get("svga", grid=(H, W))
    out = m(q, k, v)
    G = Hq // Hkv
    for b in range(B):
        for h in range(Hq):
            img = v[b, h // G].T.reshape(1, D, H, W)  # token n = h * W + w, channels = the value dims
            ref = official_mrconv_xj(img, 2).reshape(D, N).T
            np.testing.assert_allclose(out[b, h], ref, rtol=1e-6, atol=1e-6)
    soft = spattn.methods.get("svga", grid=(H, W), aggregation="softmax")
    ref, _ = ref_attention(q, k, v, allowed=official_neighbours(H, W, 2))
    np.testing.assert_allclose(soft(q, k, v), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        spattn.methods.get("svga", grid=(H, W + 1)).estimate(q, k)


@pytest.mark.parametrize("case", ["7x7", "odd", "k3"])
def test_matches_the_official_torch_mrconv4d(case):
    """x_j recorded inside the official MRConv4d on CPU torch (tests_py/data/make_vision_fixture.py),
    and the method on the same map laid out as (B, 1, N, C) values."""
    z = np.load(Path(__file__).parent / "data" / "svga_official.npz")
    x, xj, K = z[f"{case}/x"].astype(np.float32), z[f"{case}/xj"], int(z[f"{case}/K"])
    np.testing.assert_allclose(svga_max_relative(x, K), xj, rtol=0, atol=1e-6)
    B, C, H, W = x.shape
    v = np.ascontiguousarray(x.reshape(B, 1, C, H * W).transpose(0, 1, 3, 2))
    out = spattn.methods.get("svga", grid=(H, W), K=K)(v, v, v)
    np.testing.assert_allclose(out, xj.reshape(B, 1, C, H * W).transpose(0, 1, 3, 2), rtol=0, atol=1e-6)
