"""MInference block-sparse: masks equal a numpy transcription of the official
``block_sparse_attention`` / ``_build_block_index`` (microsoft/MInference, HEAD fb56c91) step by
step (pad, reshape-mean, einsum, mask future blocks with -inf, topk, sort, the kernel's
``block_count = min(m + 1, top_k)``), and the method's output equals float64 attention
restricted to its mask."""

import math

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_probs


def official_mask(q, k, top_k=100, block=64):
    """The official pipeline in numpy (float64), per query head with repeat_kv, then the kernel's
    reading of the index list as a block mask over the real blocks."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    k = np.repeat(k, G, axis=1)
    pad = block - L % block  # HEAD: block_size_M - (L & (block_size_M - 1)), a whole block when L % block == 0
    qpad = np.concatenate([q, np.zeros((B, Hq, pad, D))], axis=2).astype(np.float64)
    kpad = np.concatenate([k, np.zeros((B, Hq, pad, D))], axis=2).astype(np.float64)
    Lp = L + pad
    qp = qpad.reshape(B, Hq, -1, block, D).mean(axis=-2)
    kp = kpad.reshape(B, Hq, -1, block, D).mean(axis=-2)
    score = np.einsum("bhmk,bhnk->bhmn", qp, kp)
    am, an = np.arange(qp.shape[2]) * block, np.arange(kp.shape[2]) * block
    score = np.where(am[:, None] >= an[None, :], score, -np.inf)
    kk = min(top_k, Lp // block)
    # torch.topk then sort: ties among -inf (future blocks) land after all finite ones
    order = np.argsort(-score, axis=-1, kind="stable")[..., :kk]
    index = np.sort(order, axis=-1)
    nb = math.ceil(L / block)
    mask = np.zeros((B, Hq, nb, nb), bool)
    for m in range(nb):
        count = min((m + 1) * block // block, kk)  # the kernel's block_count
        for b in range(B):
            for h in range(Hq):
                for c in index[b, h, m, :count]:
                    if c < nb:
                        mask[b, h, m, c] = True
    return mask


@pytest.mark.parametrize("B, Hq, Hkv, L, D, top_k", [
    (1, 4, 2, 64 * 9, 64, 4),        # L a multiple of the block: the official full padding block
    (1, 4, 1, 64 * 9 + 17, 80, 4),   # partial last block: padding rows count in its mean
    (2, 2, 2, 1000, 128, 7),
    (1, 2, 1, 300, 64, 100),         # top_k beyond the number of blocks: every row keeps 0..m
])
def test_mask_equals_official_pipeline(B, Hq, Hkv, L, D, top_k):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L)
    m = spattn.methods.get("minference_block_sparse", top_k=top_k)
    mask = m.estimate(w.q, w.k, causal=True)
    np.testing.assert_array_equal(mask.blocks, official_mask(w.q, w.k, top_k=top_k))


def test_early_rows_keep_every_block_and_nothing_is_forced():
    """Rows m < top_k keep 0..m (the kernel reads min(m + 1, top_k) sorted indices); later rows keep
    exactly top_k blocks, the diagonal and the sink only when they score among the best."""
    q, k, _ = make_qkv(1, 2, 2, 64 * 12, 64 * 12, 64, seed=2)
    mask = spattn.methods.get("minference_block_sparse", top_k=3).estimate(q, k, causal=True).blocks
    for m in range(3):
        assert mask[0, :, m, : m + 1].all() and not mask[0, :, m, m + 1:].any()
    assert (mask[0, :, 3:].sum(axis=-1) == 3).all()
    assert not mask[0, :, 3:, :].diagonal(offset=3, axis1=-2, axis2=-1).all()  # the diagonal is not forced


@pytest.mark.parametrize("Hq, Hkv, L, D", [(4, 2, 333, 64), (2, 1, 200, 128)])
def test_output_is_attention_restricted_to_the_mask(Hq, Hkv, L, D):
    q, k, v = make_qkv(1, Hq, Hkv, L, L, D, seed=4)
    m = spattn.methods.get("minference_block_sparse", top_k=2)
    mask = m.estimate(q, k, causal=True)
    out = m(q, k, v, causal=True)
    p, _ = ref_probs(q, k, causal=True, allowed=mask.to_dense(causal=False))
    ref = np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), Hq // Hkv, axis=1))
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_capabilities_reject_what_the_official_code_does_not_define():
    q, k, _ = make_qkv(1, 2, 2, 100, 100, 64)
    m = spattn.methods.get("minference_block_sparse")
    assert m.params == {"top_k": 100, "block_size": 64}
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, k, causal=False)
    q1, _, _ = make_qkv(1, 2, 2, 50, 100, 64)
    with pytest.raises(ValueError, match="Nq"):
        m.estimate(q1, k, causal=True)
    with pytest.raises(ValueError, match="minference_block_sparse: top_k must be >= 1"):
        spattn.methods.get("minference_block_sparse", top_k=0)
