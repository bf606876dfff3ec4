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


# ---------------------------------------------------------------------------------------------
# Logits beyond float32, integers beyond int32, and what the extended fuzz tier found.

@pytest.mark.parametrize("kernel", ["dense", "block_sparse", "token_sparse", "recall_blocks", "recall_tokens"])
def test_large_scales_are_exact_while_the_logits_fit_float32(kernel):
    """scale = 1e30 with unit-size q, k: logits ~1e31 fit float32 and the max subtraction keeps the
    softmax exact (here one-hot on the largest logit), like float64 attention.

    Recall of a full mask used to come out inf (BlockMask) or 0.8 / 0 (TokenIndices): its first
    pass (a dense lse) and second pass (probabilities) formed the logits along different product
    paths, and one ulp of 1e31 is 1e24, so exp(s - lse) overflowed or vanished. Both passes now
    run on the same tiles (engine.hpp, item_logsumexp)."""
    q, k, v = make_qkv(1, 2, 1, 20, 30, 16, seed=5)
    ref_s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), np.repeat(k, 2, axis=1).astype(np.float64)) * 1e30
    if kernel.startswith("recall"):
        for group in (1, 3, 20):
            mask = spattn.BlockMask.full(1, 1, 20, 30, 8, group) if kernel == "recall_blocks" else \
                spattn.TokenIndices(np.broadcast_to(np.arange(30), (1, 2, -(-20 // group), 30)), group, 30)
            np.testing.assert_allclose(spattn.metrics.recall(q, k, mask, scale=1e30), 1.0, rtol=1e-5)
        return
    if kernel == "dense":
        out, lse = spattn.attention(q, k, v, scale=1e30, return_lse=True)
    elif kernel == "block_sparse":
        out, lse = spattn.block_sparse_attention(q, k, v, spattn.BlockMask.full(1, 1, 20, 30, 8, 8), scale=1e30,
                                                 return_lse=True)
    else:
        ti = spattn.TokenIndices(np.broadcast_to(np.arange(30), (1, 2, 20, 30)), 1, 30)
        out, lse = spattn.token_sparse_attention(q, k, v, ti, scale=1e30, return_lse=True)
    winner = np.argmax(ref_s, axis=-1)
    np.testing.assert_allclose(out[0], np.repeat(v, 2, axis=1)[0][np.arange(2)[:, None], winner[0]], rtol=1e-6)
    np.testing.assert_allclose(lse, ref_s.max(-1), rtol=1e-6)


LOGIT_OVERFLOW = r'''
import numpy as np, spattn
q = np.ones((1, 1, 3, 8), np.float32)
for k in (np.ones((1, 1, 5, 8), np.float32), -np.ones((1, 1, 5, 8), np.float32)):  # logits +8e38 / -8e38
    v = np.ones((1, 1, 5, 8), np.float32)
    calls = [lambda: spattn.attention(q, k, v, scale=1e38),
             lambda: spattn.block_sparse_attention(q, k, v, spattn.BlockMask.full(1, 1, 3, 5, 2, 2), scale=1e38),
             lambda: spattn.token_sparse_attention(q, k, v, spattn.TokenIndices(np.zeros((1, 1, 3, 1), int), 1, 5),
                                                   scale=1e38),
             lambda: spattn.metrics.recall(q, k, spattn.BlockMask.full(1, 1, 3, 5, 2, 2), scale=1e38),
             lambda: spattn.attention(q, k.astype(np.float16), v.astype(np.float16), scale=1e38)]  # K/V as stored
    for call in calls:
        try:
            call()
        except ValueError as exc:
            assert "scale * q.k overflows float32" in str(exc), exc
        else:
            raise AssertionError("no error")
q[0, 0, 1, 0] = np.nan  # NaN inputs keep the NaN contract: NaN row, no error
out = spattn.attention(q, np.ones((1, 1, 5, 8), np.float32), np.ones((1, 1, 5, 8), np.float32))
assert np.isnan(out[0, 0, 1]).all() and np.isfinite(out[0, 0, [0, 2]]).all()
print("ok")
'''


@pytest.mark.parametrize("level", spattn.build_info()["simd_available"])
def test_logits_beyond_float32_raise_naming_scale_at_every_simd_level(level):
    """scale = 1e38 with q.k = +-8 gives logits of +-8e38, beyond float32: every kernel and recall
    used to return all-NaN rows (or, for some inputs, rows of zeros); now a ValueError names scale.
    Each SIMD level in its own process (the level is chosen once per process)."""
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", LOGIT_OVERFLOW], env=dict(os.environ, SPATTN_SIMD=level),
                         capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


HUGE_INTS = [2**31, 2**40, 2**63, 2**70, np.int64(2**40), np.uint64(2**64 - 1)]


@pytest.mark.parametrize("value", HUGE_INTS, ids=str)
def test_integers_beyond_int32_are_rejected_naming_the_argument(value):
    """They used to reach pybind and fail with its generic "incompatible function arguments"
    (kernels, recall, plan), or raise OverflowError from numpy (density)."""
    ones = np.ones((1, 1, 1, 1), bool)
    idx = np.zeros((1, 1, 1, 2), np.int64)
    cases = {
        "block_q": lambda: spattn.BlockMask(ones, value, 4, 3, 3),
        "block_k": lambda: spattn.BlockMask.full(1, 1, 3, 3, 4, value),
        "q_len": lambda: spattn.BlockMask(ones, 2**31 - 1, 4, value, 3),
        "kv_len": lambda: spattn.BlockMask.from_kv_blocks(np.ones((1, 1, 1), int), np.zeros((1, 1, 1, 1), int), 4, 4, 3,
                                                          value),
        "group_size": lambda: spattn.TokenIndices(idx, value, 3),
        r"q_shape\[0\]": lambda: spattn.plan(spattn.BlockMask.full(1, 1, 3, 3, 2, 2), (value, 1, 3, 8), (1, 1, 3, 8)),
        r"k_shape\[3\]": lambda: spattn.plan(spattn.BlockMask.full(1, 1, 3, 3, 2, 2), (1, 1, 3, 8), (1, 1, 3, value)),
    }
    for name, call in cases.items():
        with pytest.raises(ValueError, match=f"{name} must be <= 2\\*\\*31 - 1"):
            call()
    with pytest.raises(ValueError, match="q_len must be <="):
        spattn.TokenIndices(idx, 1, 3).density(q_len=value)
    with pytest.raises(TypeError, match="streaming: block_size must be an int"):
        spattn.methods.get("streaming", block_size=value)


def test_plan_shapes_must_be_ints_not_truncated_floats():
    mask = spattn.BlockMask.full(1, 1, 3, 3, 2, 2)
    with pytest.raises(TypeError, match=r"q_shape\[1\] must be an int"):
        spattn.plan(mask, (1, 1.7, 3, 8), (1, 1, 3, 8))  # int() used to truncate it to 1


def test_scale_beyond_float64_is_a_value_error():
    q, k, v = make_qkv(1, 1, 1, 4, 4, 8)
    with pytest.raises(ValueError, match="scale must lie in the float32 range"):
        spattn.attention(q, k, v, scale=2**1100)  # float() used to raise OverflowError


def test_token_indices_density_at_int32_max_q_len_needs_no_q_len_buffer():
    """The causal total used np.arange(q_len): 16 GB at q_len = 2**31 - 1. Now a closed form."""
    ti = spattn.TokenIndices(np.array([[[[0, 5, -1]]]]), 2**31 - 1, 10)
    tracemalloc.start()
    d = ti.density(q_len=2**31 - 1, causal=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak
    # rows i see min(i + off + 1, 10) keys with off = 10 - q_len: only the last 10 rows see any;
    # key 0 is seen by the last 10 rows, key 5 by the last 5
    np.testing.assert_allclose(d, [[(10 + 5) / 55]])


@pytest.mark.parametrize("helper", ["density", "to_dense"])
def test_mask_helpers_take_causal_as_a_bool_only(helper):
    """The string "False" was silently truthy in the mask helpers."""
    bm = spattn.BlockMask.full(1, 1, 8, 8, 4, 4)
    ti = spattn.TokenIndices(np.zeros((1, 1, 8, 1), int), 1, 8)
    with pytest.raises(TypeError, match="causal must be a bool"):
        getattr(bm, helper)(causal="False")
    with pytest.raises(TypeError, match="causal must be a bool"):
        getattr(ti, helper)(8, causal="False") if helper == "to_dense" else ti.density(causal="False")


def test_to_dense_with_block_and_group_sizes_far_beyond_the_sequence_stays_small():
    """Found by the fuzz tier: to_dense repeated every block block_q (group group_size) times
    before cutting to the sequence, so block_q = 2**31 - 1 on 10 queries allocated until the
    out-of-memory killer ended the process."""
    bm = spattn.BlockMask(np.ones((1, 1, 1, 1), bool), BIG, BIG, 10, 12)
    ti = spattn.TokenIndices(np.array([[[[3, 7, -1]]]]), BIG, 12)
    tracemalloc.start()
    dense_b = bm.to_dense(causal=True)
    dense_t = ti.to_dense(10, causal=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak
    np.testing.assert_array_equal(dense_b[0, 0], np.arange(12)[None, :] <= np.arange(10)[:, None] + 2)
    expected = np.zeros((10, 12), bool)
    expected[:, [3, 7]] = True
    np.testing.assert_array_equal(dense_t[0, 0], expected)


def test_oracle_mask_from_logits_beyond_float32_is_an_error_not_an_empty_mask():
    """oracle_topk reads the exact block map: with logits of 8e38 it came back NaN and the oracle
    silently selected nothing (density 0). The statistics passes now check the logit range too."""
    q = np.ones((1, 1, 64, 8), np.float32)
    with pytest.raises(ValueError, match="scale \\* q.k overflows float32"):
        spattn.methods.get("oracle_topk").estimate(q, q, causal=True, scale=1e38)
    assert spattn.methods.get("oracle_topk").estimate(q, q, causal=True, scale=1e30).density(causal=True).item() > 0
