"""BlockMask and TokenIndices: density, element masks, algebra, normalisation."""

import numpy as np
import pytest

import spattn
from conftest import causal_visible


@pytest.mark.parametrize("nq, nk, bq, bk", [(100, 100, 16, 16), (37, 130, 8, 32), (130, 37, 64, 7), (1, 500, 64, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_density_counts_visible_pairs_exactly(nq, nk, bq, bk, causal):
    rng = np.random.default_rng(0)
    blocks = rng.random((2, 3, -(-nq // bq), -(-nk // bk))) < 0.5
    m = spattn.BlockMask(blocks, bq, bk, nq, nk)
    dense = m.to_dense(causal=causal)
    vis = causal_visible(nq, nk) if causal else np.ones((nq, nk), bool)
    expected = dense.sum(axis=(-1, -2)) / vis.sum()
    np.testing.assert_allclose(m.density(causal=causal), expected)


def test_or_and_broadcast_shared_heads():
    a = spattn.BlockMask(np.array([[[[1, 0], [0, 0]]]], bool), 4, 4, 8, 8)
    b = spattn.BlockMask(np.array([[[[0, 0], [0, 1]], [[0, 1], [0, 0]]]], bool), 4, 4, 8, 8)
    assert (a | b).blocks.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal((a | b).blocks[0, 1], [[1, 1], [0, 0]])
    np.testing.assert_array_equal((a & b).blocks, np.zeros((1, 2, 2, 2), bool))
    with pytest.raises(ValueError, match="differ"):
        a | spattn.BlockMask(np.ones((1, 1, 1, 1), bool), 8, 8, 8, 8)


def test_token_indices_sorted_deduplicated_padding_last():
    ti = spattn.TokenIndices(np.array([[[[5, -1, 2, 5, 0]]]]), 1, 10)
    np.testing.assert_array_equal(ti.indices[0, 0, 0], [0, 2, 5, -1, -1])
    assert ti.indices.dtype == np.int32


def test_token_indices_density_and_to_dense():
    rng = np.random.default_rng(1)
    idx = rng.integers(-1, 50, size=(1, 2, 4, 10))
    ti = spattn.TokenIndices(idx, 8, 50)
    for causal in (False, True):
        dense = ti.to_dense(30, causal=causal)
        vis = causal_visible(30, 50) if causal else np.ones((30, 50), bool)
        np.testing.assert_allclose(ti.density(q_len=30, causal=causal), dense.sum(axis=(-1, -2)) / vis.sum())


def test_plot_returns_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    m = spattn.BlockMask.full(1, 1, 100, 100, 16, 16)
    ax = m.plot(causal=True)
    assert "density" in ax.get_title()


def test_token_indices_assume_sorted_keeps_input_and_kernel_rejects_unsorted():
    import spattn as sp
    from conftest import make_qkv

    ti = sp.TokenIndices(np.array([[[[3, 1, -1]]]]), 1, 5, assume_sorted=True)
    np.testing.assert_array_equal(ti.indices[0, 0, 0], [3, 1, -1])
    q, k, v = make_qkv(1, 1, 1, 1, 5, 64)
    with pytest.raises(ValueError, match="strictly increasing"):
        sp.token_sparse_attention(q, k, v, ti)
    with pytest.raises(ValueError, match=r"\[-1, kv_len=5\)"):
        sp.TokenIndices(np.array([[[[7]]]]), 1, 5, assume_sorted=True)
