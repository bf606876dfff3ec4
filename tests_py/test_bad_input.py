"""Bad input gets a clear ValueError/TypeError naming the argument, never a crash."""

import numpy as np
import pytest

import spattn
from conftest import make_qkv

q, k, v = make_qkv(1, 4, 2, 32, 40, 64)


@pytest.mark.parametrize("args, exc, msg", [
    ((q[0], k, v), ValueError, "q must have 4 dimensions"),
    ((q, k[0], v), ValueError, "k must have 4 dimensions"),
    ((q, k, v[0]), ValueError, "v must have 4 dimensions"),
    ((q, np.concatenate([k, k]), v), ValueError, "k batch"),
    ((q, k[..., :32], v), ValueError, "head dim"),
    ((q, k, v[:, :, :10]), ValueError, "v must have shape"),
    ((q, k[:, :1].repeat(3, axis=1), v[:, :1].repeat(3, axis=1)), ValueError, "multiple of kv heads"),
    ((q.astype(np.int32), k, v), TypeError, "q must be a real floating-point"),
    ((q, k.astype(bool), v), TypeError, "k must be a real floating-point"),
    ((q, k, v.astype(np.complex64)), TypeError, "v must be a real floating-point"),
])
def test_attention_rejects(args, exc, msg):
    with pytest.raises(exc, match=msg):
        spattn.attention(*args)


def test_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        spattn.attention(q, k, v, scale=-1.0)


def test_block_mask_shape_mismatch():
    with pytest.raises(ValueError, match="blocks must have shape"):
        spattn.BlockMask(np.ones((1, 1, 3, 3), bool), 16, 16, 32, 40)
    wrong_len = spattn.BlockMask.full(1, 1, 32, 64, 16, 16)
    with pytest.raises(ValueError, match="kv_len=64"):
        spattn.block_sparse_attention(q, k, v, wrong_len)
    wrong_heads = spattn.BlockMask.full(1, 2, 32, 40, 16, 16)
    with pytest.raises(ValueError, match="H in"):
        spattn.block_sparse_attention(q, k, v, wrong_heads)
    with pytest.raises(TypeError, match="mask must be a spattn.BlockMask"):
        spattn.block_sparse_attention(q, k, v, np.ones((1, 1, 2, 3), bool))


@pytest.mark.parametrize("bad", [0, -4])
def test_non_positive_block_sizes(bad):
    with pytest.raises(ValueError, match="block_q must be >= 1"):
        spattn.BlockMask(np.ones((1, 1, 1, 1), bool), bad, 16, 8, 8)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        spattn.TokenIndices(np.zeros((1, 1, 1, 1), np.int32), bad, 8)


def test_block_mask_rejects_float_blocks():
    with pytest.raises(TypeError, match="blocks must be a bool or integer"):
        spattn.BlockMask(np.ones((1, 1, 2, 3), np.float32), 16, 16, 32, 40)


def test_token_indices_out_of_range_and_shape():
    with pytest.raises(ValueError, match=r"\[-1, kv_len=40\)"):
        spattn.TokenIndices(np.full((1, 4, 32, 2), 40), 1, 40)
    with pytest.raises(ValueError, match=r"\[-1, kv_len=40\)"):
        spattn.TokenIndices(np.full((1, 4, 32, 2), -2), 1, 40)
    with pytest.raises(TypeError, match="integer"):
        spattn.TokenIndices(np.zeros((1, 4, 32, 2), np.float32), 1, 40)
    ti = spattn.TokenIndices(np.zeros((1, 4, 16, 2), np.int32), 1, 40)  # G must be 32
    with pytest.raises(ValueError, match=r"\(1, 4, 32, K\)"):
        spattn.token_sparse_attention(q, k, v, ti)


def test_merge_states_shape_errors():
    o = np.zeros((2, 3, 4), np.float32)
    l = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="same shape"):
        spattn.merge_states(o, l, o[:1], l)
    with pytest.raises(ValueError, match="lse_a and lse_b"):
        spattn.merge_states(o, l[:, :2], o, l)


def test_method_parameter_errors():
    with pytest.raises(ValueError, match="unknown method"):
        spattn.methods.get("nope")
    with pytest.raises(TypeError, match="unknown parameter"):
        spattn.methods.get("streaming", window=3)
    with pytest.raises(ValueError, match="gamma"):
        spattn.methods.get("oracle_topk", gamma=1.5)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        spattn.methods.get("oracle_topk", block_size=0)
