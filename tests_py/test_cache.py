"""KVCache: appends of chunks and single tokens keep the keys and values in order, capacity
doubles (amortised, no copy per token), the kernels read the filled prefix of the buffers in
place (bit-identical to packed K/V, unaffected by what lies past the prefix), method state is
updated on append and equals a recomputation from scratch, and bad inputs raise errors that name
the argument."""

import math

import numpy as np
import pytest

import spattn
from spattn.methods.quest import QuestPages
from conftest import make_qkv


def test_appends_of_chunks_and_tokens_keep_keys_and_values_in_order():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 3, 123, 80))
    v = rng.standard_normal((2, 3, 123, 40))
    cache = spattn.KVCache(initial_capacity=5)
    pos = 0
    for n in (0, 1, 17, 1, 1, 64, 0, 39):
        cache.append(4, k[:, :, pos:pos + n], v[:, :, pos:pos + n])
        pos += n
        assert cache.length(4) == pos
    np.testing.assert_array_equal(cache.keys(4), k.astype(np.float32))
    np.testing.assert_array_equal(cache.values(4), v.astype(np.float32))
    assert cache.keys(4).dtype == np.float32 and cache.layers == [4] and 4 in cache
    assert cache.length(0) == 0 and cache.capacity(4) >= 123
    with pytest.raises(ValueError, match="read-only"):
        cache.keys(4)[0, 0, 0, 0] = 1.0
    cache.clear()
    assert cache.layers == [] and cache.length(4) == 0


def test_capacity_doubles_and_single_token_appends_copy_nothing():
    cache = spattn.KVCache(initial_capacity=1)
    one = np.ones((1, 2, 1, 16), np.float32)
    caps, bufs = [], []
    for t in range(1000):
        cache.append(0, one * t, one)
        caps.append(cache.capacity(0))
        bufs.append(cache.buffers(0)[0])
    lk = cache.layer(0)
    assert lk.reallocations == math.ceil(math.log2(1000)) == 10
    assert sorted(set(caps)) == [2 ** i for i in range(11)]
    for t in range(1, 1000):  # the buffer object changes only when the capacity does
        assert (bufs[t] is bufs[t - 1]) == (caps[t] == caps[t - 1])
    np.testing.assert_array_equal(cache.keys(0)[0, 1, :, 3], np.arange(1000, dtype=np.float32))
    # a long append grows straight to what it needs
    cache.append(0, np.zeros((1, 2, 5000, 16)), np.zeros((1, 2, 5000, 16)))
    assert cache.capacity(0) == 6000 and lk.reallocations == 11


@pytest.mark.parametrize("Nq, causal", [(1, False), (1, True), (7, True), (200, True), (200, False)])
def test_kernels_read_the_prefix_in_place_bit_identical_to_packed_kv(Nq, causal):
    q, k, v = make_qkv(2, 4, 2, Nq, 301, 64, Dv=48, seed=1)
    cache = spattn.KVCache(initial_capacity=16)
    cache.append(0, k[:, :, :100], v[:, :, :100])
    for t in range(100, 301):
        cache.append(0, k[:, :, t:t + 1], v[:, :, t:t + 1])
    kb, vb, n = cache.buffers(0)
    assert n == 301 and kb.shape[2] == 400 and kb.flags.c_contiguous and kb.dtype == np.float32
    kb[:, :, n:] = np.nan  # whatever lies past the prefix is never read
    vb[:, :, n:] = np.nan
    out, lse = spattn.attention(q, kb, vb, kv_len=n, causal=causal, return_lse=True)
    ref, ref_lse = spattn.attention(q, k, v, causal=causal, return_lse=True)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(lse, ref_lse)
    idx = spattn.TokenIndices(np.random.default_rng(2).integers(-1, 301, (2, 4, math.ceil(Nq / 4), 90)), 4, 301)
    out, lse = spattn.token_sparse_attention(q, kb, vb, idx, kv_len=n, causal=causal, return_lse=True)
    ref, ref_lse = spattn.token_sparse_attention(q, k, v, idx, causal=causal, return_lse=True)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(lse, ref_lse)


def test_prefix_kernels_check_kv_len():
    q, k, v = make_qkv(1, 2, 2, 1, 10, 16, seed=3)
    with pytest.raises(ValueError, match=r"kv_len must lie in \[0, capacity=10\]"):
        spattn.attention(q, k, v, kv_len=11)
    with pytest.raises(ValueError, match="kv_len must be >= 0"):
        spattn.attention(q, k, v, kv_len=-1)
    with pytest.raises(TypeError, match="kv_len must be an int"):
        spattn.attention(q, k, v, kv_len=3.0)
    idx = spattn.TokenIndices(np.zeros((1, 2, 1, 1), np.int32), 1, 10)
    with pytest.raises(ValueError, match="indices were made for kv_len=10, but k has Nk=8"):
        spattn.token_sparse_attention(q, k, v, idx, kv_len=8)


def test_page_metadata_after_many_appends_equals_recomputation():
    rng = np.random.default_rng(4)
    k = rng.standard_normal((2, 3, 530, 80)).astype(np.float32)
    cache = spattn.KVCache(initial_capacity=4)
    cache.append(1, k[:, :, :5], k[:, :, :5])
    pages = cache.state(1, "quest16", lambda: QuestPages(16))  # registered late: catches up on 5 rows
    pos = 5
    for n in [1] * 40 + [33, 2, 100] + [1] * 27 + [300, 0, 1, 1, 1, 20]:
        cache.append(1, k[:, :, pos:pos + n], k[:, :, pos:pos + n])
        pos += n
        assert pages.kv_len == pos and pages.num_pages == -(-pos // 16)
    assert pos == 530
    fresh = QuestPages(16)
    fresh.update(k, 0, 530)
    np.testing.assert_array_equal(pages.kmin[:, :, :34], fresh.kmin[:, :, :34])
    np.testing.assert_array_equal(pages.kmax[:, :, :34], fresh.kmax[:, :, :34])
    pad = np.concatenate([k, np.full((2, 3, 14, 80), np.nan, np.float32)], axis=2).reshape(2, 3, 34, 16, 80)
    np.testing.assert_array_equal(fresh.kmin[:, :, :34], np.nanmin(pad, axis=3))
    np.testing.assert_array_equal(fresh.kmax[:, :, :34], np.nanmax(pad, axis=3))
    assert cache.state(1, "quest16", lambda: None) is pages  # one state per key


def test_append_accepts_any_float_dtype_and_torch():
    torch = pytest.importorskip("torch")
    cache = spattn.KVCache()
    cache.append(0, np.ones((1, 1, 2, 8), np.float16), np.ones((1, 1, 2, 8), np.float64))
    cache.append(0, torch.ones(1, 1, 3, 8, dtype=torch.bfloat16), torch.ones(1, 1, 3, 8))
    cache.append(0, np.ones((1, 8, 1, 1), np.float32).transpose(0, 3, 2, 1), np.ones((1, 1, 1, 8)))  # strided
    assert cache.length(0) == 6 and (cache.keys(0) == 1).all()


def test_bad_appends_name_the_argument():
    cache = spattn.KVCache()
    ok = np.ones((1, 2, 3, 8), np.float32)
    with pytest.raises(TypeError, match="k must be a real floating-point array"):
        cache.append(0, ok.astype(np.int64), ok)
    with pytest.raises(TypeError, match="v must be a real floating-point array"):
        cache.append(0, ok, ok.astype(bool))
    with pytest.raises(ValueError, match=r"k must have shape \(B, Hkv, n, D\)"):
        cache.append(0, ok[0], ok)
    with pytest.raises(ValueError, match=r"v must have shape \(B, Hkv, n, Dv\) = \(1, 2, 3, Dv\)"):
        cache.append(0, ok, ok[:, :1])
    with pytest.raises(ValueError, match="k must have B >= 1"):
        cache.append(0, np.ones((1, 0, 3, 8)), np.ones((1, 0, 3, 8)))
    with pytest.raises(TypeError, match="layer must be an int"):
        cache.append("0", ok, ok)
    with pytest.raises(ValueError, match="layer must be >= 0"):
        cache.append(-1, ok, ok)
    cache.append(0, ok, ok)
    with pytest.raises(ValueError, match=r"k must have shape \(B, Hkv, n, D\) = \(1, 2, n, 8\) as earlier appends"):
        cache.append(0, np.ones((1, 2, 1, 16)), np.ones((1, 2, 1, 8)))
    with pytest.raises(ValueError, match="v must have Dv = 8"):
        cache.append(0, np.ones((1, 2, 1, 8)), np.ones((1, 2, 1, 4)))
    with pytest.raises(ValueError, match="layer 1 holds no keys"):
        cache.keys(1)
    with pytest.raises(ValueError, match="initial_capacity must be >= 1"):
        spattn.KVCache(initial_capacity=0)
    assert cache.length(0) == 3  # failed appends changed nothing
    assert repr(cache) == "KVCache(layers={0: 3/256})"


def test_decode_calls_do_not_copy_the_cache():
    import tracemalloc

    rng = np.random.default_rng(5)
    cache = spattn.KVCache()
    k = rng.standard_normal((1, 4, 3000, 128)).astype(np.float32)
    cache.append(2, k, k)
    cache.append(2, k[:, :, :1], k[:, :, :1])  # capacity 6000: the filled prefix is not contiguous
    q = rng.standard_normal((1, 8, 1, 128)).astype(np.float32)
    kb, vb, n = cache.buffers(2)
    quest = spattn.methods.get("quest", token_budget=256)
    quest(q, cache, layer=2)  # registers the page metadata first
    tracemalloc.start()
    try:
        spattn.attention(q, kb, vb, kv_len=n)
        quest(q, cache, layer=2)
        cache.append(2, k[:, :, :1], k[:, :, :1])
        quest(q, cache, layer=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kb.nbytes == 12_288_000 and peak < 1_000_000, peak  # a copy of K alone would be 6 MB
