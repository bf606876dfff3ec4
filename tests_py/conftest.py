"""Shared float64 numpy references (obviously right, O(Nq * Nk)) and seeded inputs."""

from __future__ import annotations

import numpy as np
import pytest

# float32 kernels against float64 references on O(1) inputs.
ATOL = 2e-5
RTOL = 1e-5


def causal_visible(nq: int, nk: int) -> np.ndarray:
    """Bottom-right aligned causal visibility (nq, nk)."""
    return np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)


def ref_probs(q, k, *, causal=False, scale=None, allowed=None):
    """Exact float64 softmax probabilities (B, Hq, Nq, Nk) and lse; allowed: bool (B|1, Hq|1, Nq, Nk)."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    B, Hq, Nq, D = q.shape
    G = Hq // k.shape[1]
    kk = np.repeat(k, G, axis=1)
    scale = 1 / np.sqrt(D) if scale is None else scale
    s = np.einsum("bhid,bhjd->bhij", q, kk) * scale
    vis = np.ones(s.shape, bool)
    if causal:
        vis &= causal_visible(Nq, k.shape[2])
    if allowed is not None:
        vis &= allowed
    s = np.where(vis, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(vis, np.exp(s - safe), 0.0)
    tot = e.sum(axis=-1, keepdims=True)
    p = np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0.0)
    with np.errstate(divide="ignore"):
        lse = np.where(tot[..., 0] > 0, safe[..., 0] + np.log(np.where(tot[..., 0] > 0, tot[..., 0], 1)), -np.inf)
    return p, lse


def ref_attention(q, k, v, *, causal=False, scale=None, allowed=None):
    """Float64 reference: (out (B, Hq, Nq, Dv), lse (B, Hq, Nq)); empty rows give 0 / -inf."""
    p, lse = ref_probs(q, k, causal=causal, scale=scale, allowed=allowed)
    G = q.shape[1] // k.shape[1]
    vv = np.repeat(np.asarray(v, np.float64), G, axis=1)
    return np.einsum("bhij,bhjd->bhid", p, vv), lse


def make_qkv(B, Hq, Hkv, Nq, Nk, D, Dv=None, seed=0):
    rng = np.random.default_rng(seed)
    Dv = D if Dv is None else Dv
    return (rng.standard_normal((B, Hq, Nq, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Nk, Dv)).astype(np.float32))


def assert_matches(out, lse, ref_out, ref_lse):
    np.testing.assert_allclose(out, ref_out, atol=ATOL, rtol=RTOL)
    fin = np.isfinite(ref_lse)
    assert np.all(np.isneginf(lse[~fin])), "rows with no visible key must have lse = -inf"
    np.testing.assert_allclose(lse[fin], ref_lse[fin], atol=ATOL, rtol=RTOL)
    assert not np.isnan(out).any()


# Shapes that break tiling: N not a multiple of blocks/tiles, GQA 1/2/4, causal Nq < Nk,
# Nq = 1, Nq > Nk (empty rows), head dims 64/80/128.
SHAPES = [
    # B, Hq, Hkv, Nq, Nk, D
    (1, 1, 1, 1, 1, 64),
    (1, 2, 1, 63, 63, 64),
    (2, 4, 2, 127, 300, 80),
    (1, 4, 1, 300, 300, 128),
    (1, 4, 4, 1, 517, 128),
    (1, 2, 2, 200, 77, 64),
    (1, 8, 2, 1000, 1000, 80),
]


@pytest.fixture(params=SHAPES, ids=lambda s: "B{}Hq{}Hkv{}Nq{}Nk{}D{}".format(*s))
def shape(request):
    return request.param
