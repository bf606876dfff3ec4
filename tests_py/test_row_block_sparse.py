"""RowBlockIndices (key blocks per query row) and the row-block sparse kernel against float64
references: the element mask built by loops, attention from conftest.ref_attention."""

import numpy as np
import pytest

import spattn
from conftest import SHAPES, assert_matches, causal_visible, make_qkv, ref_attention


def random_blocks(B, H, Nq, nkb, K, seed):
    rng = np.random.default_rng(seed)
    idx = np.full((B, H, Nq, K), -1, np.int64)
    for r in np.ndindex(B, H, Nq):
        n = int(rng.integers(0, min(K, nkb) + 1))
        idx[r][:n] = rng.choice(nkb, size=n, replace=False)  # unsorted: the constructor sorts
    return idx


def loop_mask(blocks, Nq, Nk, bs, causal):
    B, H, _, K = blocks.shape
    m = np.zeros((B, H, Nq, Nk), bool)
    for b, h, i in np.ndindex(B, H, Nq):
        for kb in blocks[b, h, i]:
            if kb >= 0:
                m[b, h, i, kb * bs:(kb + 1) * bs] = True
    if causal:
        m &= causal_visible(Nq, Nk)
    return m


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("per", ["kv_head", "query_head", "all"])
def test_row_block_kernel_matches_the_reference(shape, causal, per):
    B, Hq, Hkv, Nq, Nk, D = shape
    bs = 16
    H = {"kv_head": Hkv, "query_head": Hq, "all": 1}[per]
    nkb = -(-Nk // bs)
    idx = random_blocks(B, H, Nq, nkb, 5, seed=Nq + Nk)
    m = spattn.RowBlockIndices(idx, bs, Nk)
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=3)
    out, lse = spattn.row_block_sparse_attention(q, k, v, m, causal=causal, return_lse=True)
    allowed = loop_mask(m.blocks, Nq, Nk, bs, False)
    allowed = np.repeat(allowed, Hq // H, axis=1)
    ref_out, ref_lse = ref_attention(q, k, v, causal=causal, allowed=allowed)
    assert_matches(out, lse, ref_out, ref_lse)
    np.testing.assert_array_equal(spattn.sparse_attention(q, k, v, m, causal=causal), out)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_view_and_density_follow_loops(causal):
    B, H, Nq, Nk, bs = 2, 3, 37, 101, 8
    idx = random_blocks(B, H, Nq, -(-Nk // bs), 4, seed=1)
    m = spattn.RowBlockIndices(idx, bs, Nk)
    ref = loop_mask(idx, Nq, Nk, bs, causal)
    np.testing.assert_array_equal(m.to_dense(causal=causal), ref)
    nvis = causal_visible(Nq, Nk).sum() if causal else Nq * Nk
    np.testing.assert_allclose(m.density(causal=causal), ref.sum((2, 3)) / nvis)
    b = m.blocks
    assert np.all((b[..., 1:] > b[..., :-1]) | (b[..., 1:] < 0))  # strictly increasing, -1 last
    assert not np.any((b[..., :-1] < 0) & (b[..., 1:] >= 0))


def test_recall_of_row_blocks_is_the_mass_of_their_keys():
    q, k, _ = make_qkv(1, 4, 2, 50, 90, 64, seed=5)
    m = spattn.RowBlockIndices(random_blocks(1, 2, 50, 6, 3, seed=2), 16, 90)
    allowed = np.repeat(m.to_dense(), 2, axis=1)
    from conftest import ref_probs
    p, _ = ref_probs(q, k, causal=True)
    seen = causal_visible(50, 90).any(-1)
    ref = ((p * allowed).sum(-1) * seen).sum(-1) / seen.sum()
    np.testing.assert_allclose(spattn.metrics.recall(q, k, m, causal=True), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, err, match", [
    (np.zeros((1, 2, 5, 2), np.float32), TypeError, "integer"),
    (np.zeros((2, 5, 2), np.int32), ValueError, r"\(B, H, Nq, K\)"),
    (np.full((1, 2, 5, 2), 7, np.int32), ValueError, "ceil"),
    (np.full((1, 2, 5, 2), -2, np.int32), ValueError, r"\[-1"),
])
def test_bad_blocks_are_refused_naming_the_argument(bad, err, match):
    with pytest.raises(err, match=match):
        spattn.RowBlockIndices(bad, 16, 100)


def test_kernel_refuses_lists_of_another_shape():
    q, k, v = make_qkv(1, 4, 2, 5, 100, 64)
    m = spattn.RowBlockIndices(np.zeros((1, 3, 5, 1), np.int32), 16, 100)
    with pytest.raises(ValueError, match="Hkv=2"):
        spattn.row_block_sparse_attention(q, k, v, m)
    with pytest.raises(ValueError, match="kv_len"):
        spattn.row_block_sparse_attention(q, k[:, :, :90], v[:, :, :90], spattn.RowBlockIndices(np.zeros((1, 2, 5, 1), np.int32), 16, 100))
    with pytest.raises(TypeError, match="RowBlockIndices"):
        spattn.row_block_sparse_attention(q, k, v, np.zeros((1, 2, 5, 1), np.int32))


def test_row_overlap_is_the_share_of_blocks_kept_from_the_previous_row():
    idx = np.array([[[[0, 1, 2], [0, 2, 5], [-1, -1, -1], [7, -1, -1]]]])
    m = spattn.RowBlockIndices(idx, 4, 40)
    np.testing.assert_allclose(m.row_overlap(), [[(2 / 3 + 1 + 0) / 3]])
    big = random_blocks(1, 2, 1500, 20, 6, seed=4)
    m = spattn.RowBlockIndices(big, 8, 160)
    b = m.blocks
    ref = np.zeros((1, 2))
    for h in range(2):
        for i in range(1, 1500):
            cur = set(b[0, h, i][b[0, h, i] >= 0].tolist())
            prev = set(b[0, h, i - 1][b[0, h, i - 1] >= 0].tolist())
            ref[0, h] += len(cur & prev) / len(cur) if cur else 1.0
    np.testing.assert_allclose(m.row_overlap(), ref / 1499)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_tall_and_single_row_items_both_match(shared, causal):
    # The kernel picks the query positions per work item from the selections: runs of rows
    # with one shared list go in tall items (up to 64 rows, unions stay small); rows that all
    # select differently go one position per item. Both must equal the reference, with Nq
    # over several items and not a multiple of any item height, GQA stacked and D 80.
    B, Hq, Hkv, Nq, Nk, D, bs = 1, 4, 2, 203, 300, 80, 16
    nkb = -(-Nk // bs)
    if shared:
        base = random_blocks(B, Hkv, 1, nkb, 4, seed=7)
        idx = np.repeat(base, Nq, axis=2)
    else:
        idx = random_blocks(B, Hkv, Nq, nkb, 6, seed=8)
    m = spattn.RowBlockIndices(idx, bs, Nk)
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=4)
    out, lse = spattn.row_block_sparse_attention(q, k, v, m, causal=causal, return_lse=True)
    allowed = np.repeat(loop_mask(m.blocks, Nq, Nk, bs, False), Hq // Hkv, axis=1)
    ref_out, ref_lse = ref_attention(q, k, v, causal=causal, allowed=allowed)
    assert_matches(out, lse, ref_out, ref_lse)
