"""DMA (Dynamic Mask Attention) against a float64 numpy reference of the official code
(SmallDoges/flash-dmattn: DogeAttention's bias, utils/mask.py topk_mask, the pure-torch
dynamic_mask_attention_python: s = q.k scale + bias over the kept keys)."""

import numpy as np
import pytest

import spattn
from spattn.methods.dma import prefix_topw

TOL = 2e-5


def _weights(rng, Hkv, Dv):
    return dict(A=rng.standard_normal(Hkv).astype(np.float32),
                dt_proj_weight=(rng.standard_normal((Hkv, Hkv * Dv)) / np.sqrt(Hkv * Dv)).astype(np.float32),
                dt_proj_bias=rng.standard_normal(Hkv).astype(np.float32))


def _reference(q, k, v, A, W, bvec, w, causal):
    """Official semantics, dense and float64: bias = A softplus(dt_proj(concat_h V)); per query the
    top-w allowed keys by bias (ties to the lower index), rows with fewer allowed keep them all;
    softmax(q.k / sqrt(D) + bias) over the kept keys."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, Hq, Nq, D = q.shape
    Hkv, Nk, Dv = v.shape[1], v.shape[2], v.shape[3]
    x = v.transpose(0, 2, 1, 3).reshape(B, Nk, Hkv * Dv)
    dt = x @ W.T.astype(np.float64) + bvec
    bias = (A * np.logaddexp(0, dt)).transpose(0, 2, 1)  # (B, Hkv, Nk)
    allowed = np.ones((Nq, Nk), bool)
    if causal:
        allowed = np.arange(Nk)[None] <= np.arange(Nq)[:, None] + Nk - Nq
    keep = np.zeros((B, Hkv, Nq, Nk), bool)
    for b in range(B):
        for h in range(Hkv):
            order = np.lexsort((np.arange(Nk), -bias[b, h].astype(np.float32)))  # by bias desc, then index
            for i in range(Nq):
                kept = [j for j in order if allowed[i, j]][:w]
                keep[b, h, i, kept] = True
    g = Hq // Hkv
    ke, ve = np.repeat(k, g, 1), np.repeat(v, g, 1)
    s = np.einsum("bhid,bhjd->bhij", q, ke) / np.sqrt(D) + np.repeat(bias, g, 1)[:, :, None, :]
    s = np.where(np.repeat(keep, g, 1), s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    den = p.sum(-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", p / np.where(den > 0, den, 1), ve)
    return out, keep


CASES = [  # (B, Hq, Hkv, Nq, Nk, D, w, causal)
    (1, 4, 2, 150, 150, 80, 37, True), (1, 4, 2, 41, 150, 64, 20, True), (1, 4, 2, 1, 150, 128, 33, True),
    (2, 2, 1, 97, 97, 64, 25, False), (1, 4, 2, 60, 60, 64, 100, True)]


@pytest.mark.parametrize("case", CASES)
def test_dma_matches_official_reference(case):
    B, Hq, Hkv, Nq, Nk, D, w, causal = case
    rng = np.random.default_rng(sum(case[:6]))
    q = rng.standard_normal((B, Hq, Nq, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
    wts = _weights(rng, Hkv, D)
    m = spattn.methods.get("dma", window_size=w, **wts)
    out = m(q, k, v, causal=causal)
    ref, keep = _reference(q, k, v, wts["A"], wts["dt_proj_weight"], wts["dt_proj_bias"], w, causal)
    np.testing.assert_allclose(out, ref, rtol=TOL, atol=TOL)
    dense = m.last_info["mask"].to_dense(Nq, causal=causal)
    np.testing.assert_array_equal(np.broadcast_to(dense, (B, Hq, Nq, Nk)), np.repeat(keep, Hq // Hkv, 1))


def test_prefix_topw_is_incremental_decode_equals_the_last_prefill_row():
    rng = np.random.default_rng(3)
    bias = rng.standard_normal(200).astype(np.float32)
    rows = prefix_topw(bias, 16, np.arange(200))
    for p in (0, 15, 16, 120, 199):
        kept = rows[p][rows[p] >= 0]
        want = np.sort(np.argsort(-bias[:p + 1], kind="stable")[:16])
        np.testing.assert_array_equal(kept, want)
        short = prefix_topw(bias[:p + 1], 16, np.array([p]))[0]
        np.testing.assert_array_equal(short[short >= 0], kept)


def test_dma_ties_go_to_the_lower_index_and_window_beyond_nk_is_dense():
    rows = prefix_topw(np.zeros(10, np.float32), 3, np.array([9]))
    np.testing.assert_array_equal(rows[0], [0, 1, 2])
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((1, 2, 50, 64)).astype(np.float32) for _ in range(3))
    m = spattn.methods.get("dma", **_weights(rng, 2, 64))
    bias = m.key_bias(v)
    np.testing.assert_allclose(m(q, k, v, causal=True), spattn.attention(q, k, v, causal=True, key_bias=bias),
                               rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name,value", [("A", np.zeros((3,), np.float32)),
                                        ("dt_proj_weight", np.zeros((2, 5), np.float32)),
                                        ("dt_proj_bias", np.zeros(3, np.float32))])
def test_dma_weight_shapes_are_checked(name, value):
    rng = np.random.default_rng(5)
    v = rng.standard_normal((1, 2, 10, 8)).astype(np.float32)
    wts = {"A": np.ones(2, np.float32), name: value}
    with pytest.raises(ValueError, match=name):
        spattn.methods.get("dma", **wts).key_bias(v)
    with pytest.raises(ValueError, match="window_size"):
        spattn.methods.get("dma", window_size=0)
