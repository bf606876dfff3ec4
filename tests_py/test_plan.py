"""Compiled plans: spattn.plan(mask, ...) gives the same attention as the mask, lists full and
partial blocks as FlexAttention does, round-trips through BlockMask.from_kv_blocks, and is
rejected by calls of another shape or causality."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_probs


def random_mask(B, H, nq, nk, bq, bk, density, seed):
    rng = np.random.default_rng(seed)
    blocks = rng.random((B, H, -(-nq // bq), -(-nk // bk))) < density
    return spattn.BlockMask(blocks, bq, bk, nq, nk)


def flex_reference(mask, causal):
    """Per (b, h, q block): sorted kv blocks holding a visible key, split into full / partial,
    from the element mask (obviously right, small sizes only)."""
    elem = mask.to_dense(causal=causal)  # (B, H, Nq, Nk)
    vis = mask.to_dense(causal=False) if not causal else None
    B, H = mask.blocks.shape[:2]
    nqb, nkb = mask.blocks.shape[2:]
    full, partial = {}, {}
    off = mask.kv_len - mask.q_len
    for b in range(B):
        for h in range(H):
            for r in range(nqb):
                rows = slice(r * mask.block_q, min(mask.q_len, (r + 1) * mask.block_q))
                for c in range(nkb):
                    if not mask.blocks[b, h, r, c]:
                        continue
                    cols = slice(c * mask.block_k, min(mask.kv_len, (c + 1) * mask.block_k))
                    sub = elem[b, h, rows, cols]
                    if not sub.any():
                        continue
                    if causal:
                        i = np.arange(rows.start, rows.stop)[:, None]
                        j = np.arange(cols.start, cols.stop)[None, :]
                        is_full = bool(np.all(j <= i + off))
                    else:
                        is_full = bool(vis[b, h, rows, cols].all())
                    (full if is_full else partial).setdefault((b, h, r), []).append(c)
    return full, partial


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B, Hq, Hkv, nq, nk, D, bq, bk, H", [
    (1, 4, 2, 100, 100, 64, 16, 32, 4),
    (2, 4, 1, 37, 130, 80, 8, 16, 1),
    (1, 2, 2, 1, 300, 128, 64, 64, 2),
])
def test_plan_matches_mask_and_reference(causal, B, Hq, Hkv, nq, nk, D, bq, bk, H):
    q, k, v = make_qkv(B, Hq, Hkv, nq, nk, D, seed=5)
    mask = random_mask(B, H, nq, nk, bq, bk, 0.4, seed=nq)
    plan = spattn.plan(mask, q.shape, k.shape, causal=causal)
    out_plan, lse_plan = spattn.block_sparse_attention(q, k, v, plan, causal=causal, return_lse=True)
    out_mask = spattn.block_sparse_attention(q, k, v, mask, causal=causal)
    np.testing.assert_array_equal(out_plan, out_mask)
    # float64 reference restricted to the element mask
    allowed = mask.to_dense(causal=False)
    p, lse = ref_probs(q, k, causal=causal, allowed=allowed)
    G = Hq // Hkv
    ref = np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), G, axis=1))
    np.testing.assert_allclose(out_plan, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lse_plan, lse, rtol=RTOL, atol=ATOL)
    # reused: a second call gives the same result
    np.testing.assert_array_equal(spattn.block_sparse_attention(q, k, v, plan, causal=causal), out_plan)


@pytest.mark.parametrize("causal", [False, True])
def test_plan_lists_full_and_partial_blocks_like_flexattention(causal):
    mask = random_mask(2, 3, 70, 90, 16, 8, 0.5, seed=1)
    plan = spattn.plan(mask, (2, 3, 70, 64), (2, 1, 90, 64), causal=causal)
    full_ref, partial_ref = flex_reference(mask, causal)
    for full, ref in ((True, full_ref), (False, partial_ref)):
        num, idx = plan.kv_blocks(full=full)
        assert num.shape == (2, 3, 5) and idx.shape == (2, 3, 5, 12)
        for b in range(2):
            for h in range(3):
                for r in range(5):
                    got = list(idx[b, h, r, : num[b, h, r]])
                    assert got == ref.get((b, h, r), []), (full, b, h, r)
                    assert np.all(idx[b, h, r, num[b, h, r]:] == -1)
    assert plan.nnz == sum(len(x) for x in full_ref.values()) + sum(len(x) for x in partial_ref.values())
    if not causal:  # without a causal rule every listed block is full
        assert not plan.kv_blocks(full=False)[0].any()


def test_from_kv_blocks_round_trip():
    mask = random_mask(1, 2, 50, 50, 10, 10, 0.5, seed=3)
    plan = spattn.plan(mask, (1, 2, 50, 8), (1, 2, 50, 8), causal=False)
    num, idx = plan.kv_blocks(full=True)
    pnum, pidx = plan.kv_blocks(full=False)
    back = spattn.BlockMask.from_kv_blocks(pnum, np.where(pidx < 0, 0, pidx), 10, 10, 50, 50,
                                           full_kv_num_blocks=num, full_kv_indices=np.where(idx < 0, 0, idx))
    assert back == mask


def test_from_kv_blocks_rejects_bad_data():
    with pytest.raises(ValueError, match="kv_indices must lie in"):
        spattn.BlockMask.from_kv_blocks(np.ones((1, 1, 2), np.int32), np.full((1, 1, 2, 1), 9), 8, 8, 16, 16)
    with pytest.raises(ValueError, match=r"kv_num_blocks must have shape \(B, H, 2\)"):
        spattn.BlockMask.from_kv_blocks(np.ones((1, 1, 3), np.int32), np.zeros((1, 1, 3, 1), np.int32), 8, 8, 16, 16)
    with pytest.raises(TypeError, match="integer"):
        spattn.BlockMask.from_kv_blocks(np.ones((1, 1, 2)), np.zeros((1, 1, 2, 1)), 8, 8, 16, 16)


def test_plan_rejects_other_calls():
    q, k, v = make_qkv(1, 4, 2, 32, 40, 64)
    mask = spattn.BlockMask.full(1, 1, 32, 40, 16, 16)
    plan = spattn.plan(mask, q.shape, k.shape, causal=True)
    with pytest.raises(ValueError, match="causal=True"):
        spattn.block_sparse_attention(q, k, v, plan, causal=False)
    q2, k2, v2 = make_qkv(1, 4, 2, 32, 48, 64)
    with pytest.raises(ValueError, match="kv_len=40"):
        spattn.block_sparse_attention(q2, k2, v2, plan, causal=True)
    with pytest.raises(ValueError, match="kv_len=40"):
        spattn.plan(mask, q2.shape, k2.shape, causal=True)
    with pytest.raises(TypeError, match="BlockMask"):
        spattn.plan(np.ones((1, 1, 2, 3), bool), q.shape, k.shape)
    assert "nnz=" in repr(plan) and plan.nbytes > 0
