"""SeNER's arrow attention against a float64 reference written from the official
``Arrow_Attention`` (THUDM/scholar-profiling, sener/modeling_deberta.py): row 0 ([CLS]) attends every
key with its logits multiplied by log(N_pad)/log(512) (N_pad: N padded to a multiple of 2w);
every other row attends key 0 (the cls column) and the band |i - j| <= w without a second copy
of key 0; one softmax per row."""

import math

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv


def reference(q, k, v, w, logn=True, pretrain=512):
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    kk = np.repeat(k.astype(np.float64), G, axis=1)
    vv = np.repeat(v.astype(np.float64), G, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), kk) / math.sqrt(D)
    n_pad = -(-N // (2 * w)) * (2 * w)
    if logn:
        s[:, :, 0] *= math.log(n_pad) / math.log(pretrain)
    i, j = np.arange(N)[:, None], np.arange(N)[None, :]
    allowed = (np.abs(i - j) <= w) | (j == 0) | (i == 0)
    s = np.where(allowed, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    z = p.sum(-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", p / z, vv), (m + np.log(z))[..., 0]


@pytest.mark.parametrize("B, Hq, Hkv, N, D, w", [
    (1, 4, 2, 700, 64, 128),     # N not a multiple of 2w: N_pad 768
    (2, 2, 2, 100, 80, 16),
    (1, 3, 1, 1000, 128, 128),   # LogN factor > 1 (N_pad 1024)
    (1, 2, 1, 5, 64, 8),         # band wider than the sequence
])
def test_equals_official_rule(B, Hq, Hkv, N, D, w):
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    m = spattn.methods.get("sener_arrow", window=w)
    out, lse = m(q, k, v, return_lse=True)
    ref, ref_lse = reference(q, k, v, w)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)
    m2 = spattn.methods.get("sener_arrow", window=w, logn_scaling=False)
    np.testing.assert_allclose(m2(q, k, v), reference(q, k, v, w, logn=False)[0], atol=ATOL, rtol=RTOL)
    mask = m.estimate(q, k)  # rows 1.. : the band and the first column
    dense = mask.to_dense(causal=False)[0, 0]
    i, j = np.arange(N)[:, None], np.arange(N)[None, :]
    np.testing.assert_array_equal(dense[1:], ((np.abs(i - j) <= w) | (j == 0))[1:])


def test_factor_and_bad_input():
    m = spattn.methods.get("sener_arrow")
    assert m.logn_factor(700) == pytest.approx(math.log(768) / math.log(512))
    q, k, v = make_qkv(1, 2, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="non-causal"):
        m(q, k, v, causal=True)
    with pytest.raises(ValueError, match="window"):
        spattn.methods.get("sener_arrow", window=0)
    with pytest.raises(TypeError, match="logn_scaling"):
        spattn.methods.get("sener_arrow", logn_scaling="yes")
    q2, k2, v2 = make_qkv(1, 2, 1, 10, 20, 64)
    with pytest.raises(ValueError, match="Nq"):
        m(q2, k2, v2)
