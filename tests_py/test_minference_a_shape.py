"""Window attention and MInference's A-shape against float64 attention over the official rule:
``streaming_forward(q, k, v, n_init, n_local)`` (microsoft/MInference HEAD fb56c91,
minference/ops/streaming_kernel.py) appends the keys with a sliding window
(dist = i - j + (k_len - q_len) in [0, n_local)) and, when k_len > n_local, the first n_init keys
with the complement window (dist >= n_local), so no key counts twice."""

import numpy as np
import pytest

import spattn
from conftest import SHAPES, assert_matches, make_qkv, ref_attention, ref_probs


def official_a_shape(nq, nk, n_init, n_local):
    dist = np.arange(nq)[:, None] - np.arange(nk)[None, :] + (nk - nq)
    allowed = (dist >= 0) & (dist < n_local)
    if nk > n_local:
        allowed |= (np.arange(nk)[None, :] < n_init) & (dist >= n_local)
    return allowed


@pytest.mark.parametrize("B, Hq, Hkv, Nq, Nk, D", [s for s in SHAPES if s[3] <= s[4]])
@pytest.mark.parametrize("n_init, n_local", [(4, 100), (0, 1), (64, 63), (128, 3968)])
def test_a_shape_equals_official_rule(B, Hq, Hkv, Nq, Nk, D, n_init, n_local):
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=Nq + Nk)
    m = spattn.methods.get("minference_a_shape", n_init=n_init, n_local=n_local)
    out, lse = m(q, k, v, causal=True, return_lse=True)
    allowed = official_a_shape(Nq, Nk, n_init, n_local)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=True, allowed=allowed[None, None]))
    mask = m.estimate(q, k, causal=True)
    np.testing.assert_array_equal(mask.to_dense()[0, 0], allowed)
    vis = np.tril(np.ones((Nq, Nk), bool), Nk - Nq)
    np.testing.assert_allclose(mask.density(), [[allowed.sum() / vis.sum()]])
    p, _ = ref_probs(q, k, causal=True)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, mask, causal=True),
                               np.where(allowed, p, 0).sum(-1).mean(-1), atol=1e-5)


@pytest.mark.parametrize("B, Hq, Hkv, Nq, Nk, D", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sinks, left, right", [(3, 17, 9), (0, None, 5), (0, 5, None), (1000, 2, 0), (0, 0, 0)])
def test_window_attention_equals_rule(B, Hq, Hkv, Nq, Nk, D, causal, sinks, left, right):
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=7)
    out, lse = spattn.window_attention(q, k, v, sinks=sinks, left=left, right=right, causal=causal, return_lse=True)
    p = np.arange(Nq)[:, None] + (Nk - Nq)
    j = np.arange(Nk)[None, :]
    win = np.ones((Nq, Nk), bool)
    if left is not None:
        win &= j >= p - left
    if right is not None:
        win &= j <= p + right
    allowed = (j < sinks) | win
    assert_matches(out, lse, *ref_attention(q, k, v, causal=causal, allowed=allowed[None, None]))
    mask = spattn.WindowMask(Nq, Nk, sinks=sinks, left=left, right=right)
    vis = allowed & (j <= p) if causal else allowed
    np.testing.assert_array_equal(mask.to_dense(causal=causal)[0, 0], vis)
    total = np.tril(np.ones((Nq, Nk), bool), Nk - Nq).sum() if causal else Nq * Nk
    if total:
        np.testing.assert_allclose(mask.density(causal=causal), [[vis.sum() / total]])


def test_window_bad_arguments():
    q, k, v = make_qkv(1, 2, 1, 10, 10, 64)
    with pytest.raises(ValueError, match="left must be >= 0"):
        spattn.window_attention(q, k, v, left=-3)
    with pytest.raises(ValueError, match="sinks must be >= 0"):
        spattn.window_attention(q, k, v, sinks=-1)
    with pytest.raises(TypeError, match="left"):
        spattn.window_attention(q, k, v, left=2.5)
    with pytest.raises(ValueError, match="n_local must be >= 1"):
        spattn.methods.get("minference_a_shape", n_local=0)
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("minference_a_shape").estimate(q, k, causal=False)
    with pytest.raises(ValueError, match="q_len=10, kv_len=20"):
        spattn.sparse_attention(q, k, v, spattn.WindowMask(10, 20, left=3), causal=True)
