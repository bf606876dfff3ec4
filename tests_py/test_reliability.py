"""One test per finding of the reliability issue (issue 10) fixed so far: huge block sizes, 64-bit
window arithmetic, scales outside float32, the NaN contract (causal masks, merges, recall),
uninitialised statistics, argument types that were silently truthy, and memory of the mask
helpers. Each reference is exact (dense attention or float64)."""

import tracemalloc

import numpy as np
import pytest

import spattn
from conftest import make_qkv

BIG = 2**31 - 1


def test_block_sizes_far_beyond_the_sequence_run_like_one_block():
    q, k, v = make_qkv(1, 2, 1, 10, 10, 16)
    mask = spattn.BlockMask(np.ones((1, 1, 1, 1), bool), 2**28, 2**28, 10, 10)
    np.testing.assert_allclose(spattn.block_sparse_attention(q, k, v, mask, causal=True),
                               spattn.attention(q, k, v, causal=True), rtol=1e-6, atol=1e-6)
    q, k, _ = make_qkv(1, 1, 1, 100, 100, 16)
    m = spattn.BlockMask(np.ones((1, 1, 1, 1), bool), 65536, 65536, 100, 100)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, m), 1.0, rtol=1e-5)
    for name in ("flexprefill", "streaming"):
        blocks = spattn.methods.get(name, block_size=BIG).estimate(q, k, causal=True).blocks
        assert blocks.shape[2:] == (1, 1) and blocks.all()


@pytest.mark.parametrize("causal", [True, False])
def test_windows_and_sinks_up_to_int32_max_keep_everything(causal):
    q, k, _ = make_qkv(1, 1, 1, 100, 100, 16)
    assert spattn.methods.get("streaming", block_size=16, sink_tokens=BIG).estimate(q, k, causal=causal).blocks.all()
    m = spattn.methods.get("streaming", block_size=16, sink_tokens=0, local_tokens=BIG).estimate(q, k, causal=causal)
    vis = spattn.BlockMask.full(1, 1, 100, 100, 16, 16).to_dense(causal=causal)
    np.testing.assert_array_equal(m.to_dense(causal=causal), vis)


def test_flexprefill_budget_at_int32_max_falls_back_to_dense():
    w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=600, D=32, seed=0)
    assert spattn.methods.get("flexprefill", block_size=64, min_budget=BIG).estimate(w.q, w.k, causal=True).blocks.all()


@pytest.mark.parametrize("scale", [1e-46, 1e39])
def test_scales_outside_float32_are_rejected_not_substituted(scale):
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16)
    with pytest.raises(ValueError, match="scale must lie in the float32 range"):
        spattn.attention(q, k, v, scale=scale)


@pytest.mark.parametrize("bad", ["x", 1 + 2j, np.ones(2), True])
def test_scale_of_the_wrong_type_names_scale(bad):
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16)
    with pytest.raises(TypeError, match="scale must be a real number"):
        spattn.attention(q, k, v, scale=bad)


@pytest.mark.parametrize("bad", ["False", np.array([True, False]), 1, None])
def test_causal_must_be_a_bool(bad):
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16)
    with pytest.raises(TypeError, match="causal must be a bool"):
        spattn.attention(q, k, v, causal=bad)
    with pytest.raises(TypeError, match="causal must be a bool"):
        spattn.methods.get("streaming").estimate(q, k, causal=bad)
    with pytest.raises(TypeError, match="causal must be a bool"):
        spattn.metrics.recall(q, k, spattn.BlockMask.full(1, 1, 8, 8, 4, 4), causal=bad)


def nan_rows(out):
    return np.isnan(out).any(axis=-1)


@pytest.mark.parametrize("kernel", ["dense", "block_sparse", "token_sparse"])
def test_nan_in_a_value_row_reaches_only_the_queries_that_see_it(kernel):
    """Causal: a NaN in v at key j makes rows i >= j (that see it) NaN and no others (0 * NaN in the
    P.V of a diagonal tile used to leak it)."""
    N, j = 300, 137
    q, k, v = make_qkv(1, 4, 2, N, N, 64, seed=3)
    v[0, 1, j, 5] = np.nan
    if kernel == "dense":
        out = spattn.attention(q, k, v, causal=True)
    elif kernel == "block_sparse":
        out = spattn.block_sparse_attention(q, k, v, spattn.BlockMask.full(1, 1, N, N, 32, 32), causal=True)
    else:
        idx = np.broadcast_to(np.arange(N, dtype=np.int32), (1, 4, N // 20, N))
        out = spattn.token_sparse_attention(q, k, v, spattn.TokenIndices(idx, 20, N, assume_sorted=True), causal=True)
    rows = nan_rows(out[0])  # (Hq, N)
    expected = np.zeros((4, N), bool)
    expected[2:, j:] = True  # query heads 2, 3 read kv head 1
    np.testing.assert_array_equal(rows, expected)


def test_merge_states_keeps_nan_and_accepts_a_single_state():
    o = np.ones((3, 4), np.float32)
    for bad in (np.nan, np.inf):
        out, lse = spattn.merge_states(o, np.array([bad, 0, 0], np.float32), o, np.zeros(3, np.float32))
        assert np.isnan(out[0]).all() and np.isnan(lse[0])
        np.testing.assert_allclose(out[1:], 1.0)
    out, lse = spattn.merge_states(np.ones(4, np.float32), np.float32(0.0), np.full(4, 3, np.float32), np.float32(0.0))
    assert lse.shape == () and np.isclose(lse, np.log(2)) and np.allclose(out, 2.0)


def test_block_map_without_keys_reports_empty_rows():
    q, _, _ = make_qkv(1, 1, 1, 10, 10, 8)
    k = np.zeros((1, 1, 0, 8), np.float32)
    _, lse = spattn._core.block_attention_map(q, k, 4, 4, False, None, "sum")
    assert np.all(lse == -np.inf)
    assert np.isnan(spattn.metrics.recall(q, k, spattn.BlockMask(np.zeros((1, 1, 3, 0), bool), 4, 4, 10, 0))).all()


def test_recall_is_nan_for_nan_rows_for_both_mask_formats():
    q, k, _ = make_qkv(1, 1, 1, 50, 50, 16)
    q[0, 0, 20, 0] = np.nan
    bm = spattn.BlockMask.full(1, 1, 50, 50, 16, 16)
    ti = spattn.TokenIndices(np.broadcast_to(np.arange(50, dtype=np.int32), (1, 1, 50, 50)), 1, 50, assume_sorted=True)
    assert np.isnan(spattn.metrics.recall(q, k, bm, causal=True)).all()
    assert np.isnan(spattn.metrics.recall(q, k, ti, causal=True)).all()


def test_block_mask_density_stays_within_a_few_mask_sizes():
    blocks = np.zeros((1, 1, 4096, 4096), bool)
    blocks[..., ::3] = True
    m = spattn.BlockMask(blocks, 16, 16, 65536, 65536)
    tracemalloc.start()
    d = m.density(causal=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * blocks.nbytes, peak  # an int64 copy of the mask alone would be 8x
    assert 0.3 < float(d[0, 0]) < 0.37


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("q_len, group", [(37, 5), (40, 8), (1, 1)])
def test_token_indices_density_matches_the_element_mask(causal, q_len, group):
    rng = np.random.default_rng(q_len)
    G = -(-q_len // group)
    idx = np.where(rng.random((2, 3, G, 12)) < 0.3, -1, rng.integers(0, 45, (2, 3, G, 12)))
    ti = spattn.TokenIndices(idx, group, 45)
    dense = ti.to_dense(q_len, causal=causal)
    vis = np.ones((q_len, 45), bool)
    if causal:
        vis = np.arange(45)[None, :] <= np.arange(q_len)[:, None] + (45 - q_len)
    np.testing.assert_allclose(ti.density(q_len=q_len, causal=causal), dense.sum(axis=(2, 3)) / vis.sum())


@pytest.mark.parametrize("field", ["compressed_width", "nb_features"])
def test_sea_sizes_beyond_any_paper_are_rejected_before_allocating(field):
    """Found by the fuzz tier: width or features of 2**31 - 1 sized buffers until the kernel's
    out-of-memory killer ended the process."""
    with pytest.raises(ValueError, match=f"sea: {field} must be <= 65536"):
        spattn.methods.get("sea", **{field: BIG})
