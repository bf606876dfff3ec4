"""Sparse State Expansion (spattn.linear.sse_attention, method "sse") against a float64
token-by-token loop written from the official code: fla's ``naive_recurrent_gla`` (S = S *
exp(g) + k v^T, o = (q * dk^-0.5)^T S) for the shared state, and SSEGLA's varlen path
(``sort_along_l``: softmax router, top-k, gather the tokens of each partition in order, q and k
multiplied by the token's probability, ``index_add`` of the partition outputs onto o1)."""

import numpy as np
import pytest

import spattn
from spattn.linear import sse_activations, sse_attention


def gla(q, k, v, g, scale, S=None):
    S = np.zeros((q.shape[1], v.shape[1])) if S is None else S.copy()
    o = np.zeros((q.shape[0], v.shape[1]))
    for t in range(q.shape[0]):
        S = S * np.exp(g[t])[:, None] + np.outer(k[t], v[t])
        o[t] = (q[t] * scale) @ S
    return o, S


def reference(q1, k1, v, e, g1, q2, k2, g2, K, emulq=True, emulk=True):
    B, H, T, dk = q1.shape
    N = e.shape[2]
    p = np.exp(e - e.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    out = np.zeros(v.shape, dtype=np.float64)
    for b in range(B):
        top = np.argsort(-p[b], axis=1, kind="stable")[:, :K]
        for h in range(H):
            out[b, h] = gla(q1[b, h], k1[b, h], v[b, h], g1[b, h], dk ** -0.5)[0]
            for n in range(N):
                m = [t for t in range(T) if n in top[t]]
                if not m:
                    continue
                w = p[b, m, n][:, None]
                o, _ = gla(q2[b, h, m] * (w if emulq else 1), k2[b, h, m] * (w if emulk else 1), v[b, h, m],
                           g2[b, h, m], dk ** -0.5)
                out[b, h, m] += o
    return out


def inputs(B, H, T, dk, dv, N, seed, decay=4.0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    q1, k1, v, g1 = sse_activations(f(B, H, T, dk), f(B, H, T, dk), f(B, H, T, dv), f(B, H, T, dk) * decay)
    q2, k2, _, g2 = sse_activations(f(B, H, T, dk), f(B, H, T, dk), f(B, H, T, dv), f(B, H, T, dk) * decay)
    return q1, k1, v, f(B, T, N), g1, q2, k2, g2


@pytest.mark.parametrize("T, dk, dv, N, K", [(37, 16, 8, 4, 1), (130, 64, 64, 4, 2), (1, 8, 4, 3, 1),
                                             (200, 80, 160, 8, 3)])
def test_sse_matches_the_official_step_loop(T, dk, dv, N, K):
    q1, k1, v, e, g1, q2, k2, g2 = inputs(2, 2, T, dk, dv, N, seed=T + N)
    out = sse_attention(q1, k1, v, e, g1=g1, q2=q2, k2=k2, g2=g2, top_k=K)
    ref = reference(*(x.astype(np.float64) for x in (q1, k1, v, e, g1, q2, k2, g2)), K)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_read_and_write_gates_can_be_turned_off():
    q1, k1, v, e, g1, q2, k2, g2 = inputs(1, 2, 50, 16, 16, 4, seed=5)
    for emulq, emulk in ((False, True), (True, False)):
        out = sse_attention(q1, k1, v, e, g1=g1, q2=q2, k2=k2, g2=g2, top_k=2, emulq=emulq, emulk=emulk)
        ref = reference(*(x.astype(np.float64) for x in (q1, k1, v, e, g1, q2, k2, g2)), 2, emulq, emulk)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def test_state_carries_a_split_prefill_and_decode_steps():
    q1, k1, v, e, g1, q2, k2, g2 = inputs(1, 2, 90, 16, 8, 4, seed=11)
    whole, final = sse_attention(q1, k1, v, e, g1=g1, q2=q2, k2=k2, g2=g2, top_k=2, return_state=True)
    cut = 61
    sl = lambda x, a, b: x[:, :, a:b]  # noqa: E731
    o1, st = sse_attention(*(sl(x, 0, cut) for x in (q1, k1, v)), e[:, :cut], g1=sl(g1, 0, cut), q2=sl(q2, 0, cut),
                           k2=sl(k2, 0, cut), g2=sl(g2, 0, cut), top_k=2, return_state=True)
    outs = [o1]
    for t in range(cut, 90):  # decode one token at a time
        o, st = sse_attention(*(sl(x, t, t + 1) for x in (q1, k1, v)), e[:, t:t + 1], g1=sl(g1, t, t + 1),
                              q2=sl(q2, t, t + 1), k2=sl(k2, t, t + 1), g2=sl(g2, t, t + 1), top_k=2, state=st,
                              return_state=True)
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs, axis=2), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st, final, rtol=1e-9, atol=1e-12)
    assert final.shape == (1, 5, 2, 16, 8)


def test_strong_decays_stay_finite_and_exact():
    q1, k1, v, e, g1, q2, k2, g2 = inputs(1, 1, 150, 8, 8, 2, seed=2, decay=400.0)
    out = sse_attention(q1, k1, v, e, g1=g1, q2=q2, k2=k2, g2=g2)
    ref = reference(*(x.astype(np.float64) for x in (q1, k1, v, e, g1, q2, k2, g2)), 1)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)


def test_activations_follow_the_layer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 3, 4)).astype(np.float32)
    q, k, v, g = sse_activations(x, x, x, x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(q, x64 / (1 + np.exp(-x64)), rtol=1e-6)
    np.testing.assert_allclose(k, np.exp(x64) / np.exp(x64).sum(-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(g, np.log(1 / (1 + np.exp(-x64))) / 16, rtol=1e-5)


def test_method_runs_the_layer_with_its_stand_ins():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=96, D=64, seed=3)
    m = spattn.methods.get("sse", top_k=2)
    out = m(w.q, w.k, w.v, causal=True)
    k, v = np.repeat(w.k, 2, axis=1), np.repeat(w.v, 2, axis=1)
    q_a, k_a, v_a, _ = sse_activations(w.q, k, v)
    zero = np.zeros_like(q_a, dtype=np.float64)
    ref = reference(q_a.astype(np.float64), k_a.astype(np.float64), v_a.astype(np.float64),
                    m.router_logits(w.k).astype(np.float64), zero, q_a.astype(np.float64), k_a.astype(np.float64),
                    zero, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6)
    assert m.estimate(w.q, w.k, causal=True).density(causal=True).min() == 1.0


def test_bad_input():
    q1, k1, v, e, g1, q2, k2, g2 = inputs(1, 2, 10, 8, 8, 4, seed=1)
    with pytest.raises(ValueError, match="top_k"):
        sse_attention(q1, k1, v, e, top_k=5)
    with pytest.raises(ValueError, match="router_logits"):
        sse_attention(q1, k1, v, e[:, :9])
    with pytest.raises(ValueError, match="g1 must hold log-decays"):
        sse_attention(q1, k1, v, e, g1=np.abs(g1) + 1)
    with pytest.raises(ValueError, match="k1"):
        sse_attention(q1, k1[:, :1], v, e)
    with pytest.raises(ValueError, match="state"):
        sse_attention(q1, k1, v, e, state=np.zeros((1, 4, 2, 8, 8)))
    with pytest.raises(TypeError):
        sse_attention(q1, k1, v, "router")
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("sse")(q1, k1, v, causal=False)
    with pytest.raises(ValueError, match="top_k"):
        spattn.methods.get("sse", top_k=5)
