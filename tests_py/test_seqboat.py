"""SMA / SeqBoat attention against a float64 numpy reference written from the official
standalone_seqboat.py (router, compress_seq, local_attention with exact windows in the packed
order, relu2 or softmax, FastRelativePositionalBias by original positions, extract * q_probs)."""

import numpy as np
import pytest

import spattn

TOL = 2e-5


def _table_bias(table, i, j):
    P = (table.shape[-1] + 1) // 2
    return table[..., np.clip(j - i, -(P - 1), P - 1) + P - 1]


def _reference(q, k, v, active, gate, w, causal, table, activation, threshold):
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, Hq, N, D = q.shape
    g = Hq // k.shape[1]
    k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    compress = active.sum(1).max() / N < threshold
    for b in range(B):
        if compress:
            orig = np.flatnonzero(active[b])
            key_ok = np.ones(orig.size, bool)
        else:
            orig = np.arange(N)
            key_ok = active[b]
        c = np.arange(orig.size)
        if causal:
            allowed = (c[None] <= c[:, None]) & (c[:, None] - c[None] <= w)
        else:
            allowed = np.abs(c[:, None] - c[None]) <= w
        allowed &= key_ok[None]
        qc, kc, vc = q[b][:, orig], k[b][:, orig], v[b][:, orig]
        s = (1.0 / (w if causal else 2 * w)) if activation == "relu2" else 1 / np.sqrt(D)
        sim = np.einsum("hid,hjd->hij", qc, kc) * s
        if table is not None:
            bias = _table_bias(table.astype(np.float64), orig[:, None], orig[None])
            sim = sim + (bias if bias.ndim == 3 else bias[None])
        if activation == "relu2":
            a = np.maximum(np.where(allowed, sim, 0.0), 0.0) ** 2
        else:
            sim = np.where(allowed, sim, -5e4)
            a = np.exp(sim - sim.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
        out[b][:, orig] = np.einsum("hij,hjd->hid", a, vc) * gate[b, orig][None, :, None]
    return out


def _router(rng, Hkv, D, bias_1):
    return dict(router_weight=rng.standard_normal((2, Hkv * D)).astype(np.float32),
                router_bias=np.array([0.0, bias_1], np.float32))


CASES = [  # (B, Hq, Hkv, N, D, w, causal, activation, table heads, router bias toward option 1, threshold)
    (1, 4, 2, 151, 64, 16, True, "relu2", 1, 0.0, 1.0),
    (2, 2, 2, 97, 80, 7, False, "relu2", 2, 0.0, 1.0),
    (1, 4, 2, 130, 128, 20, True, "softmax", 1, 0.0, 1.0),
    (1, 2, 1, 120, 64, 9, True, "relu2", 0, 2.0, 0.5),   # dense enough: the uncompressed branch
    (1, 4, 2, 64, 64, 300, False, "relu2", 1, 0.5, 1.0),  # window beyond the length
]


@pytest.mark.parametrize("case", CASES)
def test_seqboat_matches_official_reference(case):
    B, Hq, Hkv, N, D, w, causal, act, th, rb, thr = case
    rng = np.random.default_rng(N + D)
    q = rng.standard_normal((B, Hq, N, D)).astype(np.float32) * 2
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32) * 2
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    table = None
    if th:
        table = rng.standard_normal((2 * 40 - 1,) if th == 1 else (Hq, 2 * 40 - 1)).astype(np.float32)
    m = spattn.methods.get("seqboat", window_size=w, activation=act, rel_pos_bias=table, density_threshold=thr,
                           **_router(rng, Hkv, D, rb))
    out = m(q, k, v, causal=causal)
    active, gate = m.last_info["active"], m.last_info["gate"]
    assert 0 < active.mean() < 1
    ref = _reference(q, k, v, active, gate, w, causal, table, act, thr)
    np.testing.assert_allclose(out, ref, rtol=TOL, atol=TOL)


def test_seqboat_router_is_the_official_latent_configurator():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 2, 50, 16)).astype(np.float32)
    r = _router(rng, 2, 16, 0.3)
    m = spattn.methods.get("seqboat", router_temperature=3.0, **r)
    active, gate = m.route(k)
    x = k.transpose(0, 2, 1, 3).reshape(2, 50, 32).astype(np.float64)
    u = (x @ r["router_weight"].T.astype(np.float64) + r["router_bias"]) / 3.0
    p = np.exp(u) / np.exp(u).sum(-1, keepdims=True)
    np.testing.assert_array_equal(active, p.argmax(-1) == 1)
    np.testing.assert_allclose(gate, np.where(active, p.max(-1), 0), rtol=1e-6)


def test_relu2_token_kernel_matches_float64():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 2, 40, 32)).astype(np.float32) for _ in range(3))
    idx = np.sort(rng.choice(40, (1, 2, 40, 12)), axis=-1)
    ti = spattn.TokenIndices(idx, 1, 40)
    out, lse = spattn.token_sparse_attention(q, k, v, ti, causal=True, scale=0.3, activation="relu2",
                                             return_lse=True)
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * 0.3
    vis = ti.to_dense(40, causal=True)
    a = np.where(vis, np.maximum(s, 0), 0) ** 2
    np.testing.assert_allclose(out, a @ v.astype(np.float64), rtol=TOL, atol=TOL)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(lse, np.log(a.sum(-1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        spattn.token_sparse_attention(q, k, v, ti, activation="gelu")
