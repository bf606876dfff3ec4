"""TidalDecode against a float64 numpy transcription of the official reference path
(DerrickYLJ/TidalDecode HEAD d67a1bd, src/tidal_build/modify_llama.py
``llama_tidal_attention_forward`` and the ``pos_dict`` hand-off of
src/models/llama_tidaldecoding.py ``LlamaModel.forward``):

- layers < sparse_layer_start: full attention;
- selection layers (sparse_layer_start, correction_layer): full attention, and per query head
  (K repeated over the GQA group) ``torch.topk(q_h . K^T / sqrt(D), min(N, top_k))`` -> mask;
- the other layers: logits masked with finfo.min outside head h's mask, softmax, i.e. exact
  attention restricted to the stored positions of the same head index.

A whole model step (16 layers, each with its own K/V) is run through ``m(q, cache, layer=i)`` and
compared layer by layer."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, ref_attention


def official_topk_mask(q, k, top_k):
    """q (Hq, D), k (Hkv, N, D) -> bool (Hq, N): torch.topk per query head of q . k / sqrt(D) over
    repeat_kv(K) (ties: the lower position, a stable descending sort)."""
    Hq, Hkv, N, D = q.shape[0], k.shape[0], k.shape[1], k.shape[2]
    kk = np.repeat(k.astype(np.float64), Hq // Hkv, axis=0)
    logits = np.einsum("hd,hnd->hn", q.astype(np.float64), kk) / np.sqrt(D)
    budget = min(N, top_k)
    mask = np.zeros((Hq, N), bool)
    for h in range(Hq):
        mask[h, np.argsort(-logits[h], kind="stable")[:budget]] = True
    return mask


def official_step(qs, ks, vs, top_k, start, correction):
    """Outputs of every layer of one decode step: qs[l] (B, Hq, 1, D), ks[l]/vs[l] (B, Hkv, N, D)."""
    outs, mask = [], None
    for layer in range(len(qs)):
        q, k, v = qs[layer], ks[layer], vs[layer]
        B, Hq = q.shape[:2]
        if layer < start:
            out, _ = ref_attention(q, k, v)
        elif layer in (start, correction):
            mask = np.stack([official_topk_mask(q[b, :, 0], k[b], top_k) for b in range(B)])[:, :, None]
            out, _ = ref_attention(q, k, v)
        else:
            out, _ = ref_attention(q, k, v, allowed=mask)
        outs.append(out)
    return outs


@pytest.mark.parametrize("B, Hq, Hkv, N, D, top_k", [
    (1, 4, 2, 301, 64, 37),     # GQA: heads of a group choose independently
    (2, 4, 4, 517, 128, 100),
    (1, 6, 2, 123, 80, 200),    # top_k > N: every key
    (1, 2, 1, 64, 64, 1),
])
def test_model_step_equals_official(B, Hq, Hkv, N, D, top_k):
    L, start, correction = 16, 2, 13
    rng = np.random.default_rng(N)
    m = spattn.methods.get("tidaldecode", top_k=top_k)
    cache = spattn.KVCache(initial_capacity=32)
    ks = [rng.standard_normal((B, Hkv, N, D)).astype(np.float32) for _ in range(L)]
    vs = [rng.standard_normal((B, Hkv, N, D)).astype(np.float32) for _ in range(L)]
    qs = [rng.standard_normal((B, Hq, 1, D)).astype(np.float32) for _ in range(L)]
    for layer in range(L):  # the prompt, then the step's own token appended
        cache.append(layer, ks[layer][:, :, :N - 1], vs[layer][:, :, :N - 1])
        cache.append(layer, ks[layer][:, :, N - 1:], vs[layer][:, :, N - 1:])
    want = official_step(qs, ks, vs, top_k, start, correction)
    for layer in range(L):
        out = m(qs[layer], cache, layer=layer)
        np.testing.assert_allclose(out, want[layer], atol=ATOL, rtol=RTOL, err_msg=f"layer {layer}")
    # select() on a reuse layer above the correction layer: layer 13's per-head top-k
    idx = m.select(qs[14], cache, layer=14).indices
    for b in range(B):
        want_mask = official_topk_mask(qs[correction][b, :, 0], ks[correction][b], top_k)
        for h in range(Hq):
            np.testing.assert_array_equal(idx[b, h, 0][idx[b, h, 0] >= 0], np.flatnonzero(want_mask[h]))

def test_selection_layers_store_and_reuse_layers_read():
    B, Hq, Hkv, N, D = 1, 4, 2, 200, 64
    rng = np.random.default_rng(0)
    m = spattn.methods.get("tidaldecode", top_k=20)
    cache = spattn.KVCache()
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    for layer in range(4):
        cache.append(layer, k, v)
    assert m.select(q, cache, layer=0).indices.shape[-1] == N          # dense layer
    assert m.select(q, cache, layer=2).indices.shape[-1] == N          # selection layer attends all
    reused = m.select(q, cache, layer=3)                               # reuse: layer 2's top-20
    want = official_topk_mask(q[0, :, 0], k[0], 20)
    for h in range(Hq):
        np.testing.assert_array_equal(reused.indices[0, h, 0], np.flatnonzero(want[h]))
    # a reuse layer without a selection at this step raises a clear error
    cache.append(3, k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="no lower 'select' layer"):
        m.select(q, cache, layer=3)
    fresh = spattn.KVCache()
    fresh.append(3, k, v)
    with pytest.raises(ValueError, match="reuses a selection"):
        m(q, fresh, layer=3)


def test_arrays_call_and_prefill():
    B, Hq, Hkv, N, D = 1, 4, 2, 150, 64
    rng = np.random.default_rng(1)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    m = spattn.methods.get("tidaldecode", top_k=16)
    mask = official_topk_mask(q[0, :, 0], k[0], 16)[None, :, None]
    ref, ref_lse = ref_attention(q, k, v, allowed=mask)
    out, lse = m(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)
    qp = rng.standard_normal((B, Hq, 9, D)).astype(np.float32)        # prefill: dense, causal
    ref_p, _ = ref_attention(qp, k, v, causal=True)
    np.testing.assert_allclose(m(qp, k, v, causal=True), ref_p, atol=ATOL, rtol=RTOL)


def test_custom_plan_and_params():
    m = spattn.methods.get("tidaldecode", sparse_layer_start=1, correction_layer=0)
    assert m.layer_plan() == spattn.LayerPlan(dense=[0], select=[1], default="reuse")
    m2 = spattn.methods.get("tidaldecode", layer_plan={"dense": [0], "sparse": [], "select": [3], "reuse": [],
                                                       "default": "sparse"})
    assert m2.layer_plan().role(3) == "select" and m2.layer_plan().role(4) == "sparse"
    assert spattn.methods.get("tidaldecode").params["top_k"] == 256
    with pytest.raises(ValueError, match="top_k"):
        spattn.methods.get("tidaldecode", top_k=0)
    with pytest.raises(TypeError, match="layer_plan"):
        spattn.methods.get("tidaldecode", layer_plan=[1, 2])


def test_statistical_topk_option_keeps_the_threshold_set():
    B, Hq, Hkv, N, D = 1, 2, 1, 4000, 64
    rng = np.random.default_rng(3)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    m = spattn.methods.get("tidaldecode", top_k=200, statistical_topk=True)
    idx = m.estimate(q, k)
    logits = np.einsum("hd,nd->hn", q[0, :, 0].astype(np.float64), k[0, 0].astype(np.float64))
    for h in range(Hq):
        mu, sd = logits[h].mean(), logits[h].std()
        theta = mu + spattn.normal_quantile(1 - 200 / N) * sd
        row = idx.indices[0, h, 0]
        row = row[row >= 0]
        want = np.flatnonzero(logits[h] > theta)
        # float32 logits: entries within rounding of theta may differ
        near = np.abs(logits[h] - theta) < 1e-4 * (1 + abs(theta))
        assert set(row) ^ set(want) <= set(np.flatnonzero(near))
        assert 120 < row.size < 300
