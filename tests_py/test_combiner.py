"""Combiner (spattn.methods.get("combiner")) against float64 numpy references written from the
official code's own steps: TF ``combiner/tf/approx_attention.py::sqrt_fixed_full`` (reshape into
segments, pooled query / key, in-segment span values, local and previous-segment logits with
-1e9 masks, one softmax over [local | summaries]) and JAX ``combiner/jax/model/layer.py::
_SelfAttLogn`` (per level: roll the queries by -2^l, the alternating rolled mask, pad and roll
back; level 0 the keys themselves plus the self logit)."""

import numpy as np
import pytest

import spattn


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def official_fixed(q, k, v, s, causal):
    """sqrt_fixed_full for one head, q pre-scaled by D^-0.5 as get_qkv does; N % s == 0."""
    N, D = q.shape
    n = N // s
    q = q * D ** -0.5
    cq, ck, cv = q.reshape(n, s, D), k.reshape(n, s, D), v.reshape(n, s, -1)
    mq = cq.max(axis=1, keepdims=True)                                   # pooling_summary identity-max
    span_val = np.einsum("nqk,nkd->nqd", softmax(np.einsum("nqd,nkd->nqk", mq, ck)), cv)[:, 0]
    span_key = ck.max(axis=1)
    local = np.einsum("nqd,nkd->nqk", cq, ck)
    if causal:
        local = local + np.where(np.tril(np.ones((s, s))) > 0, 0.0, -1e9)[None]
    prev = q @ span_key.T                                                 # (N, n)
    if causal:
        pm = np.where(np.tril(np.ones((n, n)), -1) > 0, 0.0, -1e9)        # strict: earlier segments
        prev = prev + np.repeat(pm, s, axis=0)
    joint = np.concatenate([local.reshape(N, s), prev], axis=-1)
    att = softmax(joint)
    la, pa = att[:, :s].reshape(n, s, s), att[:, s:]
    return np.einsum("nqk,nkd->nqd", la, cv).reshape(N, -1) + pa @ span_val


def official_logsparse(q, k, v):
    """_SelfAttLogn for one head (max_len = N, log_len = ceil(log2(N - 1))), q pre-scaled."""
    N, D = q.shape
    q = q * D ** -0.5
    log_len = int(np.ceil(np.log2(N - 1)))
    joint, vals = [], []
    for lvl in range(log_len):
        ctx = 2 ** lvl
        last = N - N % ctx
        if lvl == 0:
            span_key, span_val = k, v
            joint.append((q * k).sum(-1, keepdims=True))
        else:
            lq = q[:last].reshape(-1, ctx, D)
            sq = lq.max(axis=1, keepdims=True)
            lk, lv = k[:last].reshape(lq.shape), v[:last].reshape(-1, ctx, v.shape[1])
            # flax dot_product_attention divides the query by sqrt(D); the code multiplied by it
            span_val = np.einsum("cqk,ckd->cqd", softmax(np.einsum("cqd,ckd->cqk", sq * np.sqrt(D) / np.sqrt(D), lk)),
                                 lv)[:, 0]
            span_key = lk.max(axis=1)
        rq = np.roll(q, -ctx, axis=0)[:last].reshape(-1, ctx, D)
        mask = np.concatenate([(np.arange(N - ctx) // ctx) % 2, np.ones(last + ctx - N, dtype=int)])
        rl = np.einsum("cqd,cd->cq", rq, span_key).reshape(-1) + mask * -1e9
        ol = np.concatenate([rl, np.full(N - last, -1e9)])
        joint.append(np.roll(ol, ctx)[:, None])
        vals.append(span_val)
    w = softmax(np.concatenate(joint, axis=-1))
    out = w[:, :1] * v
    for lvl in range(log_len):
        ctx = 2 ** lvl
        last = N - N % ctx
        rw = np.roll(w[:, lvl + 1], -ctx)[:last].reshape(-1, ctx, 1)
        rv = (rw * vals[lvl][:, None, :]).reshape(last, -1)
        out = out + np.roll(np.concatenate([rv, np.zeros((N - last, v.shape[1]))]), ctx, axis=0)
    return out


def qkv(B, Hq, Hkv, N, D, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, Hq, N, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, N, D)).astype(np.float32),
            rng.standard_normal((B, Hkv, N, D)).astype(np.float32))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("N, s, D", [(96, 16, 64), (120, 8, 80), (64, 64, 128), (50, 10, 64)])
def test_fixed_matches_sqrt_fixed_full(N, s, D, causal):
    q, k, v = qkv(1, 4, 2, N, D, seed=N + s)
    out = spattn.methods.get("combiner", segment=s)(q, k, v, causal=causal)
    for h in range(4):
        ref = official_fixed(q[0, h].astype(np.float64), k[0, h // 2].astype(np.float64),
                             v[0, h // 2].astype(np.float64), s, causal)
        np.testing.assert_allclose(out[0, h], ref, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("N", [64, 100, 128, 37, 7])
@pytest.mark.parametrize("D", [64, 80])
def test_logsparse_matches_selfattlogn(N, D):
    q, k, v = qkv(2, 2, 1, N, D, seed=N * D)
    out = spattn.methods.get("combiner", variant="logsparse")(q, k, v, causal=True)
    for b in range(2):
        for h in range(2):
            ref = official_logsparse(q[b, h].astype(np.float64), k[b, 0].astype(np.float64),
                                     v[b, 0].astype(np.float64))
            np.testing.assert_allclose(out[b, h], ref, rtol=2e-4, atol=2e-5)


def test_logsparse_covers_the_top_span_the_official_level_count_misses():
    # N - 1 = 32 is a power of two: the official ceil(log2(N - 1)) = 5 levels leave query 32
    # (bit 5 only) with its self logit; spattn's bit-length levels give it the span [0, 32).
    N, D = 33, 64
    q, k, v = qkv(1, 1, 1, N, D, seed=3)
    out = spattn.methods.get("combiner", variant="logsparse")(q, k, v, causal=True)
    ref = official_logsparse(q[0, 0].astype(np.float64), k[0, 0].astype(np.float64), v[0, 0].astype(np.float64))
    np.testing.assert_allclose(out[0, 0, :32], ref[:32], rtol=2e-4, atol=2e-5)
    assert not np.allclose(out[0, 0, 32], ref[32], atol=1e-3)  # the official row is v[32] alone
    np.testing.assert_allclose(ref[32], v[0, 0, 32], rtol=1e-6)


def test_fixed_partial_last_segment_pools_its_own_tokens():
    # N % s != 0 (the official code asserts it away): a float64 reference over explicit spans.
    N, s, D = 45, 16, 64
    q, k, v = qkv(1, 1, 1, N, D, seed=9)
    q64, k64, v64 = (x[0, 0].astype(np.float64) for x in (q, k, v))
    spans = [(a, min(a + s, N)) for a in range(0, N, s)]
    ks = np.stack([k64[a:b].max(0) for a, b in spans])
    vs = np.stack([softmax(q64[a:b].max(0) @ k64[a:b].T / np.sqrt(D)) @ v64[a:b] for a, b in spans])
    for causal in (True, False):
        out = spattn.methods.get("combiner", segment=s)(q, k, v, causal=causal)[0, 0]
        for i in range(N):
            g = i // s
            a, b = spans[g]
            loc = np.arange(a, i + 1 if causal else b)
            rem = np.arange(g if causal else len(spans))
            logits = np.concatenate([q64[i] @ k64[loc].T, q64[i] @ ks[rem].T]) / np.sqrt(D)
            p = softmax(logits)
            ref = p[:len(loc)] @ v64[loc] + p[len(loc):] @ vs[rem]
            np.testing.assert_allclose(out[i], ref, rtol=2e-4, atol=2e-5)


def test_mask_lse_and_refusals():
    q, k, v = qkv(1, 2, 2, 40, 64, seed=1)
    m = spattn.methods.get("combiner", segment=16)
    mask = m.estimate(q, k, causal=True)
    assert isinstance(mask, spattn.TokenIndices) and mask.group_size == 16
    out, lse = m(q, k, v, causal=True, return_lse=True)
    assert lse.shape == (1, 2, 40) and np.isfinite(lse).all()
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("combiner", variant="logsparse")(q, k, v, causal=False)
    with pytest.raises(ValueError, match="Nq=1, Nk=40"):
        m(q[:, :, :1], k, v, causal=True)
    with pytest.raises(ValueError, match="variant"):
        spattn.methods.get("combiner", variant="axial")
    with pytest.raises(ValueError, match="segment"):
        spattn.methods.get("combiner", segment=0)
    with pytest.raises(ValueError, match="pool"):
        spattn.methods.get("combiner", pool="relu-max")
