"""Additive logit biases (per key, per (query, key) pair, relative position) inside the dense,
block-sparse and token-sparse kernels, and the dense backward, against float64 numpy."""

import numpy as np
import pytest

import spattn

RTOL = ATOL = 2e-5  # float32 kernels vs float64 references


def _qkv(rng, B, Hq, Hkv, Nq, Nk, D, Dv=None):
    Dv = D if Dv is None else Dv
    return (rng.standard_normal((B, Hq, Nq, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, Nk, Dv)).astype(np.float32))


def _full_bias(shape, key_bias=None, bias=None, rel_bias=None):
    """The (B, Hq, Nq, Nk) float64 bias the kernels must add, built the obvious way."""
    B, Hq, Nq, Nk, Hkv = shape
    full = np.zeros((B, Hq, Nq, Nk))
    if key_bias is not None:
        kb = np.asarray(key_bias, np.float64)
        for h in range(Hq):
            full[:, h] += kb[:, h if kb.shape[1] == Hq else h // (Hq // Hkv)][:, None, :]
    if bias is not None:
        pb = np.asarray(bias, np.float64)
        full += pb if pb.ndim == 2 else pb[None]
    if rel_bias is not None:
        rb = np.asarray(rel_bias, np.float64)
        rb = rb[None] if rb.ndim == 1 else rb
        R = rb.shape[1] // 2
        d = np.arange(Nk)[None, :] - (np.arange(Nq)[:, None] + Nk - Nq)
        idx = np.clip(d, -R, R) + R
        full += rb[:, idx][None] if rb.shape[0] == Hq else rb[0][idx][None, None]
    return full


def _reference(q, k, v, *, causal, allowed=None, full_bias=None, scale=None):
    """float64 softmax(q.k scale + bias) over allowed (B, Hq, Nq, Nk) and causal keys."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q, k) * (scale if scale else 1 / np.sqrt(D))
    if full_bias is not None:
        s = s + full_bias
    vis = np.ones((B, Hq, Nq, Nk), bool) if allowed is None else allowed.copy()
    if causal:
        vis &= (np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + Nk - Nq)
    s = np.where(vis, s, -np.inf)
    m = s.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(s - m)
    lsum = p.sum(-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", p / np.where(lsum > 0, lsum, 1), v)
    lse = np.where(lsum[..., 0] > 0, np.log(np.where(lsum > 0, lsum, 1))[..., 0] + m[..., 0], -np.inf)
    return out, lse, p / np.where(lsum > 0, lsum, 1)


def _biases(rng, kind, B, Hq, Hkv, Nq, Nk):
    kw = {}
    if kind in ("key_hq", "all"):
        kw["key_bias"] = rng.standard_normal((B, Hq, Nk)).astype(np.float32)
    if kind == "key_hkv":
        kw["key_bias"] = rng.standard_normal((B, Hkv, Nk)).astype(np.float32)
    if kind == "pair2d":
        kw["bias"] = rng.standard_normal((Nq, Nk)).astype(np.float32)
    if kind in ("pair3d", "all"):
        kw["bias"] = rng.standard_normal((Hq, Nq, Nk)).astype(np.float32)
    if kind == "rel1d":
        kw["rel_bias"] = rng.standard_normal(2 * 9 + 1).astype(np.float32)
    if kind in ("rel2d", "all"):
        kw["rel_bias"] = rng.standard_normal((Hq, 2 * 40 + 1)).astype(np.float32)
    return kw


KINDS = ["key_hq", "key_hkv", "pair2d", "pair3d", "rel1d", "rel2d", "all"]
# (B, Hq, Hkv, Nq, Nk, D, causal): odd lengths, GQA 4/2, causal with Nq < Nk, decode Nq = 1
SHAPES = [(1, 4, 2, 37, 77, 80, True), (2, 2, 2, 101, 101, 64, False), (1, 4, 2, 1, 130, 128, True),
          (1, 4, 2, 300, 300, 64, True)]


def _check(out, lse, ref):
    np.testing.assert_allclose(out, ref[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lse, ref[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_bias_matches_float64(kind, shape):
    B, Hq, Hkv, Nq, Nk, D, causal = shape
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D)
    kw = _biases(rng, kind, B, Hq, Hkv, Nq, Nk)
    out, lse = spattn.attention(q, k, v, causal=causal, return_lse=True, **kw)
    _check(out, lse, _reference(q, k, v, causal=causal, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), **kw)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("shared", [False, True])
def test_block_sparse_bias_matches_float64(kind, shape, shared):
    B, Hq, Hkv, Nq, Nk, D, causal = shape
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D)
    kw = _biases(rng, kind, B, Hq, Hkv, Nq, Nk)
    bq, bk = 16, 32
    nqb, nkb = -(-Nq // bq), -(-Nk // bk)
    blocks = rng.random((B, 1 if shared else Hq, nqb, nkb)) < 0.5
    blocks[..., -1] = True
    mask = spattn.BlockMask(blocks, bq, bk, Nq, Nk)
    allowed = np.repeat(np.repeat(blocks, bq, 2)[:, :, :Nq], bk, 3)[..., :Nk]
    allowed = np.broadcast_to(allowed, (B, Hq, Nq, Nk))
    ref = _reference(q, k, v, causal=causal, allowed=allowed, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), **kw))
    out, lse = spattn.block_sparse_attention(q, k, v, mask, causal=causal, return_lse=True, **kw)
    _check(out, lse, ref)
    plan = spattn.plan(mask, q.shape, k.shape, causal=causal)
    out, lse = spattn.block_sparse_attention(q, k, v, plan, causal=causal, return_lse=True, **kw)
    _check(out, lse, ref)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group_size", [1, 5])
def test_token_sparse_bias_matches_float64(kind, shape, group_size):
    B, Hq, Hkv, Nq, Nk, D, causal = shape
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D)
    kw = _biases(rng, kind, B, Hq, Hkv, Nq, Nk)
    G, K = -(-Nq // group_size), min(Nk, 40)
    idx = np.stack([rng.choice(Nk, K, replace=False) for _ in range(B * Hq * G)]).reshape(B, Hq, G, K)
    idx[..., -1] = Nk - 1
    idx[..., :3] = -1
    ti = spattn.TokenIndices(idx, group_size, Nk)
    allowed = np.zeros((B, Hq, Nq, Nk), bool)
    for b in range(B):
        for h in range(Hq):
            for i in range(Nq):
                row = idx[b, h, i // group_size]
                allowed[b, h, i, row[row >= 0]] = True
    ref = _reference(q, k, v, causal=causal, allowed=allowed, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), **kw))
    out, lse = spattn.token_sparse_attention(q, k, v, ti, causal=causal, return_lse=True, **kw)
    _check(out, lse, ref)


def test_no_bias_is_bitwise_unchanged_and_zero_bias_changes_nothing():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 1, 4, 2, 50, 70, 64)
    base = spattn.attention(q, k, v, causal=True)
    zero = spattn.attention(q, k, v, causal=True, key_bias=np.zeros((1, 2, 70), np.float32),
                            bias=np.zeros((50, 70), np.float32), rel_bias=np.zeros(5, np.float32))
    np.testing.assert_allclose(zero, base, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,value,match", [
    ("key_bias", np.zeros((1, 3, 70), np.float32), "key_bias must have shape"),
    ("bias", np.zeros((50, 71), np.float32), "bias must have shape"),
    ("bias", np.zeros((2, 50, 70), np.float32), "bias must have shape"),
    ("rel_bias", np.zeros(4, np.float32), "rel_bias must have shape"),
    ("rel_bias", np.zeros((1, 1, 3), np.float32), "rel_bias must have shape"),
    ("key_bias", np.full((1, 2, 70), np.nan, np.float32), "key_bias must be finite"),
    ("bias", np.full((50, 70), -np.inf, np.float32), "bias must be finite"),
])
def test_bad_bias_raises_value_error_naming_it(name, value, match):
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 1, 4, 2, 50, 70, 64)
    with pytest.raises(ValueError, match=match):
        spattn.attention(q, k, v, **{name: value})
    ti = spattn.TokenIndices(np.zeros((1, 4, 50, 1), np.int32), 1, 70)
    with pytest.raises(ValueError, match=match):
        spattn.token_sparse_attention(q, k, v, ti, **{name: value})
    with pytest.raises(TypeError, match=name):
        spattn.attention(q, k, v, **{name: "x"})


# ---------------------------------------------------------------- dense backward

def _reference_backward(q, k, v, do, *, causal, full_bias=None, scale=None):
    """Closed-form float64 gradients: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)),
    dQ = scale dS K, dK = scale dS^T Q, dBias = dS (per (b, h, i, j))."""
    out, _, p = _reference(q, k, v, causal=causal, full_bias=full_bias, scale=scale)
    q, k, v, do = (np.asarray(x, np.float64) for x in (q, k, v, do))
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[3]
    g = Hq // Hkv
    s = scale if scale else 1 / np.sqrt(D)
    ke, ve = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    dv = np.einsum("bhij,bhid->bhjd", p, do)
    dp = np.einsum("bhid,bhjd->bhij", do, ve)
    ds = p * (dp - (do * out).sum(-1, keepdims=True))
    dq = s * np.einsum("bhij,bhjd->bhid", ds, ke)
    dk = s * np.einsum("bhij,bhid->bhjd", ds, q)
    fold = lambda x: x.reshape(x.shape[0], Hkv, g, *x.shape[2:]).sum(2)  # noqa: E731
    return dq, fold(dk), fold(dv), ds


@pytest.mark.parametrize("shape", [(1, 4, 2, 37, 77, 80, True), (2, 2, 1, 70, 70, 64, False),
                                   (1, 2, 2, 1, 90, 128, True)])
@pytest.mark.parametrize("bias_heads", [None, 0, 1, "H"])
def test_dense_backward_matches_float64_formulas(shape, bias_heads):
    B, Hq, Hkv, Nq, Nk, D, causal = shape
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D, Dv=48)
    do = rng.standard_normal((B, Hq, Nq, 48)).astype(np.float32)
    kw = {}
    if bias_heads == 0:
        kw["bias"] = rng.standard_normal((Nq, Nk)).astype(np.float32)
    elif bias_heads == 1:
        kw["bias"] = rng.standard_normal((1, Nq, Nk)).astype(np.float32)
    elif bias_heads == "H":
        kw["bias"] = rng.standard_normal((Hq, Nq, Nk)).astype(np.float32)
    o, lse = spattn.attention(q, k, v, causal=causal, return_lse=True, **kw)
    dq, dk, dv, db = spattn.dense_attention_backward(q, k, v, o, lse, do, causal=causal, **kw)
    fb = _full_bias((B, Hq, Nq, Nk, Hkv), **kw) if kw else None
    rq, rk, rv, ds = _reference_backward(q, k, v, do, causal=causal, full_bias=fb)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if not kw:
        assert db is None
        return
    want = ds.sum(0)
    want = want.sum(0) if kw["bias"].ndim == 2 else (want.sum(0, keepdims=True) if bias_heads == 1 else want)
    assert db.shape == kw["bias"].shape
    np.testing.assert_allclose(db, want, rtol=1e-4, atol=1e-4)


def test_dense_backward_matches_finite_differences():
    B, Hq, Hkv, Nq, Nk, D = 1, 2, 1, 9, 13, 8
    rng = np.random.default_rng(7)
    q, k, v = (x.astype(np.float64) for x in _qkv(rng, B, Hq, Hkv, Nq, Nk, D))
    bias = rng.standard_normal((Nq, Nk))
    w = rng.standard_normal((B, Hq, Nq, D))  # loss = sum(w * out)
    loss = lambda q, k, v, bias: float((w * _reference(  # noqa: E731
        q, k, v, causal=True, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), bias=bias))[0]).sum())
    o, lse = spattn.attention(q, k, v, causal=True, return_lse=True, bias=bias)
    grads = spattn.dense_attention_backward(q, k, v, o, lse, w, causal=True, bias=bias)
    eps = 1e-6
    for n, x in enumerate((q, k, v, bias)):
        num = np.zeros_like(x)
        for ix in np.ndindex(x.shape):
            args = [q, k, v, bias]
            xp, xm = x.copy(), x.copy()
            xp[ix] += eps
            xm[ix] -= eps
            args[n] = xp
            lp = loss(*args)
            args[n] = xm
            num[ix] = (lp - loss(*args)) / (2 * eps)
        np.testing.assert_allclose(grads[n], num, rtol=1e-3, atol=1e-4)


def test_dense_backward_bad_shapes_name_the_argument():
    rng = np.random.default_rng(8)
    q, k, v = _qkv(rng, 1, 2, 1, 10, 12, 8)
    o, lse = spattn.attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="lse must have shape"):
        spattn.dense_attention_backward(q, k, v, o, lse[..., :5], o)
    with pytest.raises(ValueError, match="do must have shape"):
        spattn.dense_attention_backward(q, k, v, o, lse, o[..., :3])


def test_split_kv_decode_with_biases_matches_float64():
    """Few-row calls over long keys run split-KV (parts merged exactly): the biases enter every part."""
    B, Hq, Hkv, Nq, Nk, D = 1, 4, 2, 1, 4500, 64
    rng = np.random.default_rng(9)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D)
    kw = _biases(rng, "all", B, Hq, Hkv, Nq, Nk)
    ref = _reference(q, k, v, causal=True, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), **kw))
    _check(*spattn.attention(q, k, v, causal=True, return_lse=True, **kw), ref)
    idx = np.broadcast_to(np.arange(Nk, dtype=np.int32), (B, Hq, 1, Nk))
    _check(*spattn.token_sparse_attention(q, k, v, spattn.TokenIndices(idx, 1, Nk), causal=True, return_lse=True,
                                          **kw), ref)
    mask = spattn.BlockMask(np.ones((B, Hq, 1, -(-Nk // 64)), bool), 64, 64, Nq, Nk)
    _check(*spattn.block_sparse_attention(q, k, v, mask, causal=True, return_lse=True, **kw), ref)


def _fold_bias_grad(name, ds, bias, Hkv, Nq, Nk):
    """The float64 gradient of one bias from dS (B, Hq, Nq, Nk): sums over what the bias shares."""
    B, Hq = ds.shape[:2]
    if name == "bias":
        g = ds.sum(0)
        return g.sum(0) if bias.ndim == 2 else (g.sum(0, keepdims=True) if bias.shape[0] == 1 else g)
    if name == "key_bias":
        g = ds.sum(2)  # (B, Hq, Nk)
        return g if bias.shape[1] == Hq else g.reshape(B, Hkv, Hq // Hkv, Nk).sum(2)
    R = bias.shape[-1] // 2
    e = np.clip(np.arange(Nk)[None, :] - (np.arange(Nq)[:, None] + Nk - Nq), -R, R) + R
    g = np.zeros((Hq, 2 * R + 1))
    for h in range(Hq):
        np.add.at(g[h], e.ravel(), ds[:, h].sum(0).ravel())
    return g.sum(0) if bias.ndim == 1 else (g.sum(0, keepdims=True) if bias.shape[0] == 1 else g)


@pytest.mark.parametrize("kind", ["key_hq", "key_hkv", "rel1d", "rel2d", "all"])
def test_dense_backward_key_and_rel_bias_gradients(kind):
    B, Hq, Hkv, Nq, Nk, D = 2, 4, 2, 45, 70, 64
    rng = np.random.default_rng(10)
    q, k, v = _qkv(rng, B, Hq, Hkv, Nq, Nk, D)
    do = rng.standard_normal((B, Hq, Nq, D)).astype(np.float32)
    kw = _biases(rng, kind, B, Hq, Hkv, Nq, Nk)
    o, lse = spattn.attention(q, k, v, causal=True, return_lse=True, **kw)
    dq, dk, dv, db = spattn.dense_attention_backward(q, k, v, o, lse, do, causal=True, **kw)
    rq, rk, rv, ds = _reference_backward(q, k, v, do, causal=True, full_bias=_full_bias((B, Hq, Nq, Nk, Hkv), **kw))
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    grads = db if isinstance(db, dict) else {next(iter(kw)): db}
    assert set(grads) == set(kw)
    for name, got in grads.items():
        assert got.shape == kw[name].shape
        np.testing.assert_allclose(got, _fold_bias_grad(name, ds, kw[name], Hkv, Nq, Nk), rtol=1e-4, atol=1e-4)
