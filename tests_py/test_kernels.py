"""Kernels through Python against float64 numpy references."""

import numpy as np
import pytest

import spattn
from conftest import assert_matches, make_qkv, ref_attention


@pytest.mark.parametrize("causal", [False, True])
def test_dense_matches_float64_reference(shape, causal):
    q, k, v = make_qkv(*shape, seed=1)
    out, lse = spattn.attention(q, k, v, causal=causal, return_lse=True)
    assert out.dtype == np.float32 and out.shape == q.shape[:3] + (v.shape[3],)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=causal))


def test_dense_custom_scale_and_value_dim():
    q, k, v = make_qkv(1, 4, 2, 70, 90, 64, Dv=32, seed=2)
    out, lse = spattn.attention(q, k, v, causal=True, scale=0.3, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=True, scale=0.3))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_block_sparse_matches_reference(shape, causal, shared):
    q, k, v = make_qkv(*shape, seed=3)
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    bq, bk = 32, 48
    rng = np.random.default_rng(4)
    blocks = rng.random((B, 1 if shared else Hq, -(-Nq // bq), -(-Nk // bk))) < 0.4
    mask = spattn.BlockMask(blocks, bq, bk, Nq, Nk)
    out, lse = spattn.block_sparse_attention(q, k, v, mask, causal=causal, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=causal, allowed=mask.to_dense()))


def test_block_sparse_full_mask_equals_dense():
    q, k, v = make_qkv(1, 8, 2, 333, 333, 128, seed=5)
    mask = spattn.BlockMask.full(1, 1, 333, 333, 64, 64)
    np.testing.assert_allclose(spattn.block_sparse_attention(q, k, v, mask, causal=True),
                               spattn.attention(q, k, v, causal=True), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("group_size", [1, 5, 64])
def test_token_sparse_matches_reference(shape, causal, group_size):
    q, k, v = make_qkv(*shape, seed=6)
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    G = -(-Nq // group_size)
    K = min(Nk, 40)
    rng = np.random.default_rng(7)
    idx = np.full((B, Hq, G, K), -1, np.int64)
    for pos in np.ndindex(B, Hq, G):
        n = rng.integers(0, K + 1)
        idx[pos][:n] = rng.choice(Nk, size=n, replace=False)
    ti = spattn.TokenIndices(idx, group_size, Nk)
    out, lse = spattn.token_sparse_attention(q, k, v, ti, causal=causal, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=causal, allowed=ti.to_dense(Nq)))


def test_decode_token_sparse_on_long_kv():
    q, k, v = make_qkv(1, 8, 2, 1, 5000, 128, seed=8)
    rng = np.random.default_rng(9)
    idx = np.sort(rng.choice(5000, size=(1, 8, 1, 700), replace=True), axis=-1)  # duplicates dropped
    ti = spattn.TokenIndices(idx, 1, 5000)
    out, lse = spattn.token_sparse_attention(q, k, v, ti, causal=True, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=True, allowed=ti.to_dense(1)))


def test_merge_states_of_split_kv_equals_dense():
    q, k, v = make_qkv(2, 4, 2, 50, 301, 64, seed=10)
    cut = 123
    oa, la = spattn.attention(q, k[:, :, :cut], v[:, :, :cut], return_lse=True)
    ob, lb = spattn.attention(q, k[:, :, cut:], v[:, :, cut:], return_lse=True)
    out, lse = spattn.merge_states(oa, la, ob, lb)
    ref_out, ref_lse = ref_attention(q, k, v)
    assert_matches(out, lse, ref_out, ref_lse)


def test_merge_states_handles_empty_rows():
    o = np.zeros((3, 4), np.float32)
    l = np.full(3, -np.inf, np.float32)
    ob = np.ones((3, 4), np.float32)
    lb = np.array([-np.inf, 0.0, 1.0], np.float32)
    out, lse = spattn.merge_states(o, l, ob, lb)
    assert np.all(out[0] == 0) and np.isneginf(lse[0])
    np.testing.assert_allclose(out[1:], 1.0)
    np.testing.assert_allclose(lse[1:], [0.0, 1.0])


def test_empty_rows_give_zero_output_and_neg_inf_lse():
    q, k, v = make_qkv(1, 2, 1, 10, 4, 64)
    out, lse = spattn.attention(q, k, v, causal=True, return_lse=True)
    assert np.all(out[:, :, :6] == 0) and np.all(np.isneginf(lse[:, :, :6]))
    assert np.all(np.isfinite(lse[:, :, 6:]))
    empty = spattn.BlockMask(np.zeros((1, 1, 1, 1), bool), 64, 64, 10, 4)
    out, lse = spattn.block_sparse_attention(q, k, v, empty, return_lse=True)
    assert np.all(out == 0) and np.all(np.isneginf(lse))


def test_float64_and_strided_inputs_are_converted():
    q, k, v = make_qkv(1, 4, 2, 64, 96, 64, seed=11)
    q64 = np.asfortranarray(q.astype(np.float64))
    kt = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # strided view
    assert not kt.flags.c_contiguous
    out = spattn.attention(q64, kt, v[..., ::1], causal=True)
    np.testing.assert_allclose(out, spattn.attention(q, k, v, causal=True), atol=1e-6)
    half = spattn.attention(q.astype(np.float16), k, v)
    assert half.dtype == np.float32


# Property test over random small shapes (hypothesis): dense and block-sparse agree with float64.
from hypothesis import given, settings, strategies as st


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), Hkv=st.integers(1, 2), G=st.sampled_from([1, 2, 4]), Nq=st.integers(1, 90),
       Nk=st.integers(1, 90), D=st.sampled_from([8, 64, 80]), causal=st.booleans(), seed=st.integers(0, 10**6))
def test_dense_and_block_sparse_property(B, Hkv, G, Nq, Nk, D, causal, seed):
    q, k, v = make_qkv(B, Hkv * G, Hkv, Nq, Nk, D, seed=seed)
    assert_matches(*spattn.attention(q, k, v, causal=causal, return_lse=True), *ref_attention(q, k, v, causal=causal))
    rng = np.random.default_rng(seed)
    bs = int(rng.integers(1, 40))
    mask = spattn.BlockMask(rng.random((B, 1, -(-Nq // bs), -(-Nk // bs))) < 0.5, bs, bs, Nq, Nk)
    got = spattn.block_sparse_attention(q, k, v, mask, causal=causal, return_lse=True)
    assert_matches(*got, *ref_attention(q, k, v, causal=causal, allowed=mask.to_dense()))


def test_nan_inputs_propagate_instead_of_silent_zeros():
    q, k, v = make_qkv(1, 2, 1, 8, 8, 64)
    q[0, 0, 3, 5] = np.nan
    out, lse = spattn.attention(q, k, v, causal=True, return_lse=True)
    assert np.isnan(out[0, 0, 3]).all() and np.isnan(lse[0, 0, 3])
    assert np.isfinite(np.delete(out[0, 0], 3, axis=0)).all() and np.isfinite(out[0, 1]).all()
