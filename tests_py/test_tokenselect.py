"""TokenSelect against a float64 numpy transcription of the official selection (pzs19/TokenSelect
HEAD 8e1e97f, patcher/token_retrieval.py): ``retrieval_indices`` (dense while n_init + top_k +
n_local >= N; candidates [n_init, N - n_local); sinks + top-k + local, concatenated) and
``get_topk_tokens`` (unscaled per-head q . k, softmax over the candidates, summed over the heads,
optional ``max_pool1d(k, stride 1, padding (k - 1) // 2)``, ``topk``, sorted, + n_init). The
decode step equals float64 attention over the selected keys."""

import numpy as np
import pytest

import spattn
from conftest import assert_matches, make_qkv, ref_attention


def official_keys(q, k, n_init=128, n_local=512, top_k=2048, kernel_size=-1, interleave=False):
    """q (Hq, D), k (Hkv, N, D) -> the layer's key list (shared by the heads)."""
    Hq, Hkv, N = q.shape[0], k.shape[0], k.shape[1]
    if n_init + top_k + n_local >= N:
        return np.arange(N)
    cand = k[:, n_init:N - n_local].astype(np.float64)
    kv = [h % Hkv if interleave else h // (Hq // Hkv) for h in range(Hq)]
    s = np.stack([cand[kv[h]] @ q[h].astype(np.float64) for h in range(Hq)])  # no 1/sqrt(D)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    score = p.sum(axis=0)
    if kernel_size > 0:  # torch max_pool1d pads with -inf; an even kernel gives one score fewer
        pad = (kernel_size - 1) // 2
        padded = np.concatenate([np.full(pad, -np.inf), score, np.full(pad, -np.inf)])
        score = np.array([padded[i:i + kernel_size].max() for i in range(len(padded) - kernel_size + 1)])
    top = np.sort(np.argsort(-score, kind="stable")[:top_k]) + n_init
    return np.concatenate([np.arange(n_init), top, np.arange(N - n_local, N)])


CASES = [  # B, Hq, Hkv, N, D, params
    (1, 4, 2, 700, 64, dict(n_init=16, n_local=64, top_k=100)),
    (2, 8, 2, 1500, 128, dict(n_init=4, n_local=32, top_k=200, kernel_size=5)),
    (1, 4, 4, 901, 80, dict(n_init=8, n_local=40, top_k=77, kernel_size=6)),   # even kernel
    (1, 6, 2, 800, 64, dict(n_init=8, n_local=40, top_k=120, gqa_interleave=True)),
    (1, 4, 2, 3000, 64, {}),                                                   # release defaults, sparse
    (1, 2, 1, 2000, 64, {}),                                                   # 128 + 2048 + 512 >= N: dense
]


@pytest.mark.parametrize("B, Hq, Hkv, N, D, params", CASES)
def test_decode_step_equals_official_selection(B, Hq, Hkv, N, D, params):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=N, D=D, seed=N)
    q = np.ascontiguousarray(w.q[:, :, -1:])
    m = spattn.methods.get("tokenselect", **params)
    cache = spattn.KVCache(initial_capacity=64)
    cache.append(0, w.k[:, :, : N // 2], w.v[:, :, : N // 2])
    cache.append(0, w.k[:, :, N // 2:], w.v[:, :, N // 2:])  # a buffer larger than N: read in place
    idx = m.select(q, cache, layer=0)
    off = {"interleave" if key == "gqa_interleave" else key: val for key, val in params.items()}
    allowed = np.zeros((B, Hq, 1, N), bool)
    for b in range(B):
        want = official_keys(q[b, :, 0], w.k[b], **off)
        for h in range(Hq):
            np.testing.assert_array_equal(idx.indices[b, h, 0], want)
            allowed[b, h, 0, want] = True
    out, lse = m(q, cache, layer=0, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, w.k, w.v, causal=True, allowed=allowed))
    # the generic call on arrays selects the same keys
    np.testing.assert_array_equal(m.estimate(q, w.k, causal=True).indices, idx.indices)


def test_dense_layers_and_prefill_run_dense():
    q, k, v = make_qkv(1, 4, 2, 10, 3000, 64, seed=3)
    m = spattn.methods.get("tokenselect", n_init=4, n_local=8, top_k=16, dense_layers=1)
    cache = spattn.KVCache()
    cache.append(0, k, v)
    cache.append(1, k, v)
    assert (m.select(q[:, :, -1:], cache, layer=0).indices >= 0).sum(-1).max() == 3000
    assert (m.select(q[:, :, -1:], cache, layer=1).indices >= 0).sum(-1).max() == 28
    out = m(q, cache, layer=1, causal=True)  # Nq > 1: dense
    np.testing.assert_allclose(out, spattn.attention(q, k, v, causal=True), atol=1e-6)


@pytest.mark.parametrize("params, err, match", [
    (dict(top_k=0), ValueError, "top_k"),
    (dict(n_init=-1), ValueError, "n_init"),
    (dict(n_local=1.5), TypeError, "n_local"),
    (dict(gqa_interleave=1), TypeError, "gqa_interleave"),
])
def test_bad_parameters(params, err, match):
    with pytest.raises(err, match=match):
        spattn.methods.get("tokenselect", **params)


def test_selection_cache_reuses_the_top_k_while_the_query_barely_moves():
    """The paper's selection cache: reuse the last candidates while cos(fingerprint) >= 0.9,
    recompute (and store) otherwise; sinks and the local window follow the current length."""
    B, Hq, Hkv, N, D = 1, 4, 2, 600, 64
    rng = np.random.default_rng(5)
    k = rng.standard_normal((B, Hkv, N + 3, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N + 3, D)).astype(np.float32)
    q0 = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    params = dict(n_init=4, n_local=16, top_k=40)
    m = spattn.methods.get("tokenselect", selection_cache=True, **params)
    plain = spattn.methods.get("tokenselect", **params)
    cache = spattn.KVCache()
    cache.append(0, k[:, :, :N], v[:, :, :N])
    first = m.select(q0, cache, layer=0).indices
    np.testing.assert_array_equal(first, plain.select(q0, cache, layer=0).indices)
    cache.append(0, k[:, :, N:N + 1], v[:, :, N:N + 1])
    q1 = q0 + 0.05 * rng.standard_normal(q0.shape).astype(np.float32)     # cos ~ 0.999: reuse
    second = m.select(q1, cache, layer=0).indices[0, 0, 0]
    assert m.last_info == {"reused": 1, "computed": 0}
    np.testing.assert_array_equal(second[4:44], first[0, 0, 0, 4:44])     # the cached candidates
    np.testing.assert_array_equal(second[44:], np.arange(N + 1 - 16, N + 1))
    cache.append(0, k[:, :, N + 1:N + 2], v[:, :, N + 1:N + 2])
    q2 = rng.standard_normal(q0.shape).astype(np.float32)                 # unrelated query: recompute
    third = m.select(q2, cache, layer=0).indices
    assert m.last_info == {"reused": 0, "computed": 1}
    np.testing.assert_array_equal(third, plain.select(q2, cache, layer=0).indices)
    out = m(q2, cache, layer=0)
    assert out.shape == (B, Hq, 1, D)
    with pytest.raises(ValueError, match="similarity_threshold"):
        spattn.methods.get("tokenselect", similarity_threshold=2.0)
    with pytest.raises(TypeError, match="selection_cache"):
        spattn.methods.get("tokenselect", selection_cache="yes")
