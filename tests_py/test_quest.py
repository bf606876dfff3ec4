"""Quest: page selections equal float64 numpy transcriptions of the official code
(mit-han-lab/Quest HEAD 01c1623): the eval path (evaluation/quest_attention.py ``forward``'s sign
trick and ``local_heavy_hitter_mask``) and the kernel path (``InferenceController.begin_forward`` /
``need_estimate``, ``compute_max_possible``, top-k of all pages but the last, last page added);
the decode output equals float64 attention over the selected tokens; dense layers and prefill
run dense; parameters and errors."""

import numpy as np
import pytest

import spattn
from spattn import _core
from spattn.methods.quest import QuestPages
from conftest import ATOL, RTOL, assert_matches, make_qkv, ref_attention

P = 16  # the official page size


# ---------------------------------------------------------------------------- official references
def official_eval_mask(q, k, token_budget, chunk_size):
    """evaluation/quest_attention.py, decode branch (q_len 1, layer >= 2), transcribed to float64
    numpy: repeat_kv, sign trick, page max of sign * k (padding at finfo.min), per-token score,
    local_heavy_hitter_mask (chunk amax, topk of min(max(3, budget // chunk), num_chunks)).
    Ties go to the lower chunk (a stable argsort). Returns bool (B, Hq, N)."""
    q = np.asarray(q, np.float64)[:, :, 0]  # (B, Hq, D)
    k = np.asarray(k, np.float64)
    B, Hq, D = q.shape
    k = np.repeat(k, Hq // k.shape[1], axis=1)  # repeat_kv
    N = k.shape[2]
    fmin = np.finfo(np.float64).min
    sign = np.where(q > 0, 1.0, -1.0)
    max_key = k * sign[:, :, None, :]
    positive_query = q * sign
    pad = chunk_size - ((N - 1) % chunk_size + 1)
    max_key = np.concatenate([max_key, np.full((B, Hq, pad, D), fmin)], axis=2)
    chunk_max_key = max_key.reshape(B, Hq, -1, chunk_size, D).max(axis=3)
    per_token = np.repeat(chunk_max_key, chunk_size, axis=2)[:, :, :N]
    quantized_weight = np.einsum("bhd,bhnd->bhn", positive_query, per_token)
    budget = min(N, token_budget)
    # local_heavy_hitter_mask
    w = np.concatenate([quantized_weight, np.full((B, Hq, pad), fmin)], axis=2)
    chunk_w = w.reshape(B, Hq, -1, chunk_size).max(axis=3)
    kk = min(max(3, budget // chunk_size), chunk_w.shape[-1])
    top = np.argsort(-chunk_w, axis=-1, kind="stable")[..., :kk]
    mask = np.zeros(chunk_w.shape, bool)
    np.put_along_axis(mask, top, True, axis=-1)
    return np.repeat(mask, chunk_size, axis=2)[:, :, :N]


def official_kernel_mask(q, k, token_budget, page_size):
    """The kernel path's selection (quest_init: page_budget = token_budget // page_size;
    InferenceController: inference_page_budget = min(page_budget, pages), dense unless pages >
    it; decode_estimate = compute_max_possible over all pages but the last; decode_topk of
    inference_page_budget - 1; the last page appended), per query head (h // G for GQA, an
    extension: the official path asserts Hq == Hkv). Returns bool (B, Hq, N)."""
    q = np.asarray(q, np.float64)[:, :, 0]
    k = np.asarray(k, np.float64)
    B, Hq, D = q.shape
    k = np.repeat(k, Hq // k.shape[1], axis=1)
    N = k.shape[2]
    pages = -(-N // page_size)
    budget = min(token_budget // page_size, pages)
    if pages <= budget:  # need_estimate() is False
        return np.ones((B, Hq, N), bool)
    mask = np.zeros((B, Hq, pages), bool)
    mask[..., -1] = True
    for b in range(B):
        for h in range(Hq):
            scores = []
            for p in range(pages - 1):
                page = k[b, h, p * page_size:(p + 1) * page_size]
                kmax, kmin = page.max(axis=0), page.min(axis=0)
                scores.append(np.sum(np.maximum(q[b, h] * kmax, q[b, h] * kmin)))
            top = np.argsort(-np.asarray(scores), kind="stable")[:budget - 1]
            mask[b, h, top] = True
    return np.repeat(mask, page_size, axis=2)[:, :, :N]


def selected_mask(idx: spattn.TokenIndices, N: int) -> np.ndarray:
    ind = idx.indices[:, :, 0]
    out = np.zeros(ind.shape[:2] + (N,), bool)
    for b in range(ind.shape[0]):
        for h in range(ind.shape[1]):
            sel = ind[b, h][ind[b, h] >= 0]
            assert np.all(np.diff(sel) > 0)
            out[b, h, sel] = True
    return out


def cache_of(k, v, chunks=(None,), layer=2):
    """A KVCache holding k, v on `layer`, appended in the given chunk lengths (None: the rest)."""
    c = spattn.KVCache(initial_capacity=8)
    pos = 0
    for n in chunks:
        n = k.shape[2] - pos if n is None else n
        c.append(layer, k[:, :, pos:pos + n], v[:, :, pos:pos + n])
        pos += n
    while pos < k.shape[2]:  # the rest one token at a time
        c.append(layer, k[:, :, pos:pos + 1], v[:, :, pos:pos + 1])
        pos += 1
    return c


# B, Hq, Hkv, N, D, token_budget
CASES = [
    (1, 1, 1, 17, 64, 16),       # two pages, the second of one token
    (1, 4, 2, 300, 80, 64),      # GQA 2, partial last page
    (2, 4, 1, 517, 128, 128),    # GQA 4, B = 2
    (1, 2, 2, 1000, 64, 256),
    (1, 4, 4, 333, 128, 48),     # budget not a multiple of the page
    (1, 2, 1, 100, 64, 1024),    # budget larger than the cache
    (1, 3, 3, 64, 80, 64),       # cache exactly the budget
    (1, 2, 2, 5, 64, 512),       # a single partial page
]
IDS = ["B{}Hq{}Hkv{}N{}D{}T{}".format(*c) for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_page_scores_equal_the_official_sign_trick(case):
    B, Hq, Hkv, N, D, _ = case
    q, k, _ = make_qkv(B, Hq, Hkv, 1, N, D, seed=1)
    pages = QuestPages(P)
    pages.update(k, 0, N)
    U = _core.quest_page_scores(q, pages.kmin, pages.kmax, N, P)
    kk = np.repeat(k.astype(np.float64), Hq // Hkv, axis=1)
    pad = (-N) % P
    kp = np.concatenate([kk, np.full((B, Hq, pad, D), np.nan)], axis=2).reshape(B, Hq, -1, P, D)
    q64 = q[:, :, 0].astype(np.float64)
    s = np.where(q64 > 0, 1.0, -1.0)[:, :, None, None, :]
    ref = np.einsum("bhd,bhpd->bhp", np.abs(q64), np.nanmax(kp * s, axis=3))  # sum |q_d| max_t s_d k_td
    assert U.shape == (B, Hq, -(-N // P)) and U.dtype == np.float32
    np.testing.assert_allclose(U, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [(None,), (7, 1, 30), (1,)], ids=["one", "chunks", "tokens"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernel_selection_equals_the_official_controller(case, chunks):
    B, Hq, Hkv, N, D, T = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, N, D, seed=2)
    cache = cache_of(k, v, chunks)
    m = spattn.methods.get("quest", token_budget=T)
    idx = m.select(q, cache, layer=2)
    np.testing.assert_array_equal(selected_mask(idx, N), official_kernel_mask(q, k, T, P))
    out, lse = m(q, cache, layer=2, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, allowed=selected_mask(idx, N)[:, :, None, :])
    assert_matches(out, lse, ref_out, ref_lse)


@pytest.mark.parametrize("chunks", [(None,), (3, 40)], ids=["one", "chunks+tokens"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eval_selection_equals_local_heavy_hitter_mask(case, chunks):
    B, Hq, Hkv, N, D, T = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, N, D, seed=3)
    cache = cache_of(k, v, chunks)
    m = spattn.methods.get("quest", token_budget=T, eval_selection=True)
    idx = m.select(q, cache, layer=2)
    np.testing.assert_array_equal(selected_mask(idx, N), official_eval_mask(q, k, T, P))
    out, lse = m(q, cache, layer=2, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, allowed=selected_mask(idx, N)[:, :, None, :])
    assert_matches(out, lse, ref_out, ref_lse)


def test_eval_path_is_not_dense_when_the_budget_exceeds_the_cache():
    q, k, v = make_qkv(1, 2, 2, 1, 100, 64, seed=4)  # 7 pages, budget min(100, 1024) // 16 = 6 pages
    idx = spattn.methods.get("quest", token_budget=1024, eval_selection=True).estimate(q, k)
    assert ((idx.indices >= 0).sum(-1) <= 96).all() and ((idx.indices >= 0).sum(-1) >= 96 - 15).all()
    dense = spattn.methods.get("quest", token_budget=1024).estimate(q, k)  # kernel path: dense
    assert (dense.indices >= 0).sum(-1).min() == 100


def test_kernel_path_keeps_the_last_page_and_budget_pages():
    q, k, v = make_qkv(1, 4, 2, 1, 1000, 64, seed=5)
    idx = spattn.methods.get("quest", token_budget=100).estimate(q, k)  # 6 pages: last + top 5
    sel = selected_mask(idx, 1000)
    assert sel[..., 992:].all()  # the last page (8 tokens)
    pages = sel[..., :992].reshape(1, 4, 62, 16)
    assert (pages.all(-1) == pages.any(-1)).all() and (pages.all(-1).sum(-1) == 5).all()
    # query heads of one kv head choose their own pages (no group sharing)
    assert not all(np.array_equal(sel[0, 0], sel[0, h]) for h in range(1, 4))


@pytest.mark.parametrize("eval_selection", [False, True])
def test_ties_go_to_the_lower_page(eval_selection):
    k = np.ones((1, 1, 160, 64), np.float32)  # ten identical pages: every score ties
    q = np.ones((1, 1, 1, 64), np.float32)
    idx = spattn.methods.get("quest", token_budget=64, eval_selection=eval_selection).estimate(q, k)
    sel = selected_mask(idx, 160)[0, 0].reshape(10, 16).all(-1)
    want = [0, 1, 2, 9] if not eval_selection else [0, 1, 2, 3]
    assert list(np.flatnonzero(sel)) == want


def test_dense_layers_and_prefill_run_dense():
    q, k, v = make_qkv(1, 4, 2, 1, 400, 64, seed=6)
    cache = spattn.KVCache()
    for layer in range(4):
        cache.append(layer, k, v)
    m = spattn.methods.get("quest", token_budget=64)
    assert [m.is_dense_layer(i) for i in range(4)] == [True, True, False, False]
    ref, _ = ref_attention(q, k, v)
    for layer in (0, 1):
        np.testing.assert_allclose(m(q, cache, layer=layer), ref, atol=ATOL, rtol=RTOL)
        assert (m.select(q, cache, layer=layer).indices >= 0).all()
    assert not np.allclose(m(q, cache, layer=2), ref, atol=1e-3)
    assert (m.select(q, cache, layer=2).indices >= 0).sum(-1).max() == 64
    # dense_layers=0: layer 0 selects too; prefill (Nq > 1) over the cache is dense and causal
    m0 = spattn.methods.get("quest", token_budget=64, dense_layers=0)
    np.testing.assert_array_equal(m0.select(q, cache, layer=0).indices, m.select(q, cache, layer=2).indices)
    qp, _, _ = make_qkv(1, 4, 2, 30, 400, 64, seed=7)
    ref_p, _ = ref_attention(qp, k, v, causal=True)
    np.testing.assert_allclose(m0(qp, cache, layer=0, causal=True), ref_p, atol=ATOL, rtol=RTOL)
    # prefill on arrays: every key for one group of all queries
    mask = m.estimate(qp, k, causal=True)
    assert mask.group_size == 30 and mask.indices.shape == (1, 4, 1, 400) and (mask.indices >= 0).all()
    np.testing.assert_allclose(m(qp, k, v, causal=True), ref_p, atol=ATOL, rtol=RTOL)


def test_array_call_equals_the_cache_call():
    q, k, v = make_qkv(2, 4, 2, 1, 777, 80, seed=8)
    m = spattn.methods.get("quest", token_budget=128)
    cache = cache_of(k, v, (500, 100))
    np.testing.assert_array_equal(m.estimate(q, k).indices, m.select(q, cache, layer=2).indices)
    np.testing.assert_array_equal(m(q, k, v), m(q, cache, layer=2))


def test_an_empty_layer_gives_zero_output_and_neg_inf_lse():
    cache = spattn.KVCache()
    cache.append(3, np.zeros((1, 2, 0, 64), np.float32), np.zeros((1, 2, 0, 64), np.float32))
    q = np.ones((1, 2, 1, 64), np.float32)
    m = spattn.methods.get("quest")
    assert m.select(q, cache, layer=3).indices.shape == (1, 2, 1, 0)
    out, lse = m(q, cache, layer=3, return_lse=True)
    assert (out == 0).all() and np.isneginf(lse).all()


def test_defaults_are_the_official_ones():
    p = spattn.methods.get("quest").params
    assert p == {"page_size": 16, "token_budget": 512, "eval_selection": False, "dense_layers": 2,
                 "statistical_topk": False, "layer_plan": None}


def test_parameter_errors_name_the_parameter():
    with pytest.raises(ValueError, match="quest: token_budget must be >= page_size"):
        spattn.methods.get("quest", token_budget=8)
    spattn.methods.get("quest", token_budget=8, eval_selection=True)  # the eval path allows it
    with pytest.raises(ValueError, match="quest: page_size must be >= 1"):
        spattn.methods.get("quest", page_size=0)
    with pytest.raises(ValueError, match="quest: dense_layers must be >= 0"):
        spattn.methods.get("quest", dense_layers=-1)
    with pytest.raises(TypeError, match="quest: eval_selection must be a bool"):
        spattn.methods.get("quest", eval_selection="yes")


def test_call_errors_name_the_argument():
    q, k, v = make_qkv(1, 4, 2, 1, 50, 64, seed=9)
    cache = cache_of(k, v)
    m = spattn.methods.get("quest")
    with pytest.raises(ValueError, match=r"q must have shape \(B=1, Hq \(a multiple of Hkv=2\)"):
        m.select(q[:, :3], cache, layer=2)
    with pytest.raises(ValueError, match="q must have shape"):
        m(q[..., :32], cache, layer=2)
    with pytest.raises(ValueError, match="Nq == 1"):
        m.select(np.ones((1, 4, 2, 64), np.float32), cache, layer=2)
    with pytest.raises(TypeError, match="cache must be a spattn.KVCache"):
        m.select(q, k, layer=2)
    with pytest.raises(TypeError, match="takes no v"):
        m(q, cache, v, layer=2)
    with pytest.raises(TypeError, match="layer applies"):
        m(q, k, v, layer=2)
    with pytest.raises(ValueError, match="layer 7 holds no keys"):
        m(q, cache, layer=7)
    with pytest.raises(TypeError, match="layer must be an int"):
        m(q, cache, layer=2.0)
    with pytest.raises(TypeError, match="q must be a real floating-point array"):
        m(q.astype(np.int32), cache, layer=2)
    with pytest.raises(ValueError, match="kmin and kmax must have the same shape"):
        _core.estimate_quest(q, np.zeros((1, 2, 4, 64), np.float32), np.zeros((1, 2, 3, 64), np.float32), 50,
                             _core.QuestParams())
    with pytest.raises(ValueError, match="kv_len must lie in"):
        _core.estimate_quest(q, np.zeros((1, 2, 3, 64), np.float32), np.zeros((1, 2, 3, 64), np.float32), 50,
                             _core.QuestParams())


def test_nan_keys_give_nan_rows_not_a_crash():
    q, k, v = make_qkv(1, 2, 2, 1, 200, 64, seed=10)
    k[0, 0, 37] = np.nan
    out = spattn.methods.get("quest", token_budget=64)(q, k, v)
    assert np.isnan(out[0, 0]).all() and np.isfinite(out[0, 1]).all()  # the NaN page ranks first


def test_runs_as_the_decode_method_of_the_transformers_backend():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from spattn.integrations import hf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=4096, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(3, 96, (1, 100), generator=torch.Generator().manual_seed(1))
    ref = model.generate(ids, max_new_tokens=5, do_sample=False)
    # a budget covering the cache: the kernel path is dense, generation unchanged
    hf.use(model, method="dense", decode_method=spattn.methods.get("quest", token_budget=1024))
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), ref)
    assert hf.stats(model)[0]["calls"]["decode_method"] == 4
    hf.use(model, method="dense", decode_method=spattn.methods.get("quest", token_budget=32))
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 105) and hf.stats(model)[1]["calls"]["decode_method"] == 4
    hf.restore(model)
