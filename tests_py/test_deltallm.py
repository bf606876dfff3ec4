"""DeltaLLM (PAPER ONLY, no official code: the reference encodes spattn's documented reading, see
the module docstring): thresholded query deltas from a held reference, exact logits for the last
``local_window`` keys, one softmax; against a float64 loop reference, GQA, odd sizes, decode
steps carrying the reference."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention


def ref_deltallm(q, k, v, threshold, W, q_ref=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    G = Hq // k.shape[1]
    kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    ref = np.zeros((B, Hq, D)) if q_ref is None else np.asarray(q_ref, np.float64).copy()
    out = np.zeros((B, Hq, Nq, v.shape[3]))
    zeroed = 0
    for t in range(Nq):
        for b in range(B):
            for h in range(Hq):
                for d in range(D):
                    if abs(q[b, h, t, d] - ref[b, h, d]) >= threshold:
                        ref[b, h, d] = q[b, h, t, d]
                    else:
                        zeroed += 1
        p = t + Nk - Nq
        j = np.arange(p + 1)
        exact = j > p - W
        s = np.where(exact, np.einsum("bhd,bhjd->bhj", q[:, :, t], kk[:, :, :p + 1]),
                     np.einsum("bhd,bhjd->bhj", ref, kk[:, :, :p + 1])) / np.sqrt(D)
        e = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, t] = np.einsum("bhj,bhjd->bhd", e / e.sum(-1, keepdims=True), vv[:, :, :p + 1])
    return out, ref, zeroed / q.size


@pytest.mark.parametrize("Nq, Nk, D, threshold, W", [(133, 133, 64, 0.5, 16), (61, 200, 80, 0.3, 7),
                                                     (90, 90, 128, 1.0, 1)])
def test_hybrid_attention_matches_the_reference(Nq, Nk, D, threshold, W):
    q, k, v = make_qkv(2, 4, 2, Nq, Nk, D, seed=Nk + W)
    q = np.cumsum(q * 0.3, axis=2).astype(np.float32)  # slowly varying queries
    m = spattn.methods.get("deltallm", threshold=threshold, local_window=W)
    out = m(q, k, v, causal=True)
    want, ref, share = ref_deltallm(q, k, v, threshold, W)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(m.last_info["q_ref"], ref, rtol=0, atol=0)
    assert m.last_info["temporal_sparsity"] == pytest.approx(share) and 0 < share < 1


def test_zero_threshold_or_a_window_covering_every_key_is_exact():
    q, k, v = make_qkv(1, 4, 2, 77, 77, 64, seed=1)
    exact = ref_attention(q, k, v, causal=True)[0]
    for kw in ({"threshold": 0.0}, {"local_window": 77}):
        np.testing.assert_allclose(spattn.methods.get("deltallm", **kw)(q, k, v, causal=True), exact,
                                   rtol=RTOL, atol=ATOL)


def test_decode_steps_carry_the_reference():
    q, k, v = make_qkv(1, 4, 2, 12, 45, 64, seed=2)
    q = np.cumsum(q * 0.2, axis=2).astype(np.float32)
    m = spattn.methods.get("deltallm", threshold=0.4, local_window=8)
    whole = m(q, k, v, causal=True)
    ref = None
    for t in range(12):  # the same run one query at a time, the reference carried
        nk = 45 - 12 + t + 1
        step = m(q[:, :, t:t + 1], k[:, :, :nk], v[:, :, :nk], causal=True, q_ref=ref)
        ref = m.last_info["q_ref"]
        np.testing.assert_allclose(step[:, :, 0], whole[:, :, t], rtol=RTOL, atol=ATOL)


def test_bad_inputs_name_the_argument():
    q, k, v = make_qkv(1, 4, 2, 10, 10, 16, seed=3)
    m = spattn.methods.get("deltallm")
    with pytest.raises(ValueError, match="q_ref"):
        m(q, k, v, causal=True, q_ref=np.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match="causal"):
        m(q, k, v, causal=False)
    with pytest.raises(ValueError, match="threshold"):
        spattn.methods.get("deltallm", threshold=-1.0)
    with pytest.raises(ValueError, match="local_window"):
        spattn.methods.get("deltallm", local_window=0)
