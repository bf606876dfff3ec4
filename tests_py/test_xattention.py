"""XAttention: masks equal a float64 numpy transcription of the official pipeline
(mit-han-lab/x-attention HEAD e379887: ``xattn_estimate`` with the Triton path's masking,
``find_blocks_chunked(mode="prefill")`` line by line, the post-processing of ``xattn_estimate``
and the ``Xattention_prefill`` chunk-size rule), each quirk checked on its own, and the method's
output equals float64 attention restricted to its mask."""

import math

import numpy as np
import pytest

import spattn
from spattn import _core
from conftest import ATOL, RTOL, make_qkv, ref_probs


def chunk_size(k_len):
    """Xattention_prefill's default chunk size."""
    p = 1 << (k_len - 1).bit_length()
    return int(max(min(max(2048, p), 128 * 1024 * 2048 // p), 2048))


def find_blocks_chunked(W, current_index, threshold, causal):
    """utils.find_blocks_chunked(mode="prefill", decoding=False), transcribed to numpy float64."""
    B, H, n, nb = W.shape
    total = W.sum(-1, keepdims=True)
    thr = np.asarray(threshold, np.float64)
    required = total * (thr[None, :, None, None] if thr.ndim else thr)
    zeros = np.zeros((B, H, n, 1))
    if causal:
        mask = np.zeros(W.shape, bool)
        mask[..., 0] = True
        mask[..., current_index:current_index + n] = np.eye(n, dtype=bool)
        other = np.where(mask, 0.0, W)
        sorted_values = -np.sort(-other, axis=-1)
        sorted_values = np.concatenate([zeros, np.where(mask, W, 0.0).sum(-1, keepdims=True),
                                        sorted_values[..., :-2]], axis=-1)
        index = np.argsort(-np.where(mask, 100000 * (1 + W), W), axis=-1, kind="stable")
    else:
        mask = np.zeros(W.shape, bool)
        index = np.argsort(-W, axis=-1, kind="stable")
        sorted_values = np.take_along_axis(W, index, -1)
    cum = np.concatenate([zeros, sorted_values[..., :-1]], axis=-1).cumsum(-1)
    index = np.where(cum < required, index, 0)
    bi, hi, ri = np.indices(index.shape[:-1])
    mask[bi[..., None], hi[..., None], ri[..., None], index] = True
    if causal:
        mask[..., current_index + n:] = False
    return mask


def official_mask(q, k, stride, threshold=0.9, block=128, causal=True, keep_sink=False, keep_recent=False,
                  return_w=False):
    """xattn_estimate(select_mode="inverse", kdb=1, norm=1) in float64, kv heads repeated."""
    B, Hq, Lq, D = q.shape
    k = np.repeat(np.asarray(k, np.float64), Hq // k.shape[1], axis=1)  # repeat_kv
    Lk, S, C = k.shape[2], stride, chunk_size(k.shape[2])
    k_pad, q_pad = -(-Lk // C) * C - Lk, -(-Lq // C) * C - Lq
    kb, qb = (Lk + k_pad) // block, (Lq + q_pad) // block
    K = np.concatenate([k, np.zeros((B, Hq, k_pad, D))], axis=2)
    Q = np.concatenate([np.asarray(q, np.float64), np.zeros((B, Hq, q_pad, D))], axis=2)
    rK = np.concatenate([K[:, :, t::S] for t in range(S)], axis=-1)
    rQ = np.concatenate([Q[:, :, S - 1 - t::S] for t in range(S)], axis=-1)
    rcs, rbs = C // S, block // S
    nbpc = rcs // rbs
    real_rows = (Lk + k_pad) // S - k_pad // S  # softmax_fuse_block_sum's real_q_len
    masks, sums = [], []
    for ci in range((Lq + q_pad) // C):
        A = rQ[:, :, ci * rcs:(ci + 1) * rcs] @ np.swapaxes(rK, -1, -2) / math.sqrt(D) / S
        g = (kb - qb) * rbs + ci * rcs + np.arange(rcs)  # global reshaped rows (offs_q)
        if causal:
            A = np.where(np.arange(rK.shape[2])[None, :] <= g[:, None], A, -np.inf)
        P = np.exp(A - A.max(-1, keepdims=True))
        P /= P.sum(-1, keepdims=True)
        P = np.where((g < real_rows)[:, None], P, 0.0)  # padded query rows give nothing
        W = P.reshape(B, Hq, nbpc, rbs, -1, rbs).sum(-1).sum(-2)
        sums.append(W)
        masks.append(find_blocks_chunked(W, kb - qb + ci * nbpc, threshold, causal))
    mask = np.concatenate(masks, axis=-2)
    if causal:
        mask[:, :, -qb:, -qb:] &= np.tril(np.ones((qb, qb), bool))
    if keep_sink:
        mask[:, :, 0, :] = True
    if keep_recent:
        mask[:, :, -qb:, -qb:] |= np.eye(qb, dtype=bool)
    mask = mask[:, :, :math.ceil(Lq / block), :math.ceil(Lk / block)]
    return (mask, np.concatenate(sums, axis=-2)) if return_w else mask


SHAPES = [  # B, Hq, Hkv, L, D, stride: L not a multiple of the block or of the stride, GQA, head dims
    (1, 4, 2, 1000, 64, 8),
    (2, 2, 1, 777, 80, 16),
    (1, 3, 3, 300, 128, 4),
    (1, 2, 1, 128 * 6, 64, 8),   # a multiple of the block
    (1, 2, 2, 45, 64, 8),        # a single partial block
    (1, 8, 2, 2049, 64, 16),     # just past the smallest chunk: a second (padding) chunk
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("B, Hq, Hkv, L, D, S", SHAPES)
def test_mask_equals_official_pipeline(B, Hq, Hkv, L, D, S, causal):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L)
    got = spattn.methods.get("xattention", stride=S).estimate(w.q, w.k, causal=causal).blocks
    np.testing.assert_array_equal(got, official_mask(w.q, w.k, S, causal=causal))


@pytest.mark.parametrize("threshold", [0.5, 0.95, 1.0])
def test_mask_equals_official_pipeline_at_other_thresholds(threshold):
    q, k, _ = make_qkv(1, 4, 2, 900, 900, 64, seed=3)
    for causal in (True, False):
        got = spattn.methods.get("xattention", threshold=threshold).estimate(q, k, causal=causal).blocks
        np.testing.assert_array_equal(got, official_mask(q, k, 8, threshold=threshold, causal=causal))


def test_per_head_thresholds_one_per_query_head():
    q, k, _ = make_qkv(1, 4, 2, 700, 700, 64, seed=5)
    tau = [0.3, 0.6, 0.9, 1.0]
    m = spattn.methods.get("xattention", threshold=tau)
    assert m.params["threshold"] == pytest.approx(tau)
    np.testing.assert_array_equal(m.estimate(q, k, causal=True).blocks, official_mask(q, k, 8, threshold=tau))
    per_head = [spattn.methods.get("xattention", threshold=t).estimate(q, k, causal=True).blocks[:, h]
                for h, t in enumerate(tau)]
    np.testing.assert_array_equal(m.estimate(q, k, causal=True).blocks, np.stack(per_head, axis=1))
    with pytest.raises(ValueError, match="threshold must hold 1 value or one per query head"):
        spattn.methods.get("xattention", threshold=[0.9, 0.9, 0.9]).estimate(q, k, causal=True)


def test_first_chunk_credits_only_the_diagonal_and_always_takes_the_top_other_block():
    """Rows of the first chunk: the identity block overwrites column 0, so only the diagonal is
    forced; its mass is credited one slot late, so even a tiny threshold keeps the best other
    block (plus column 0, where the unselected slots land)."""
    q, k, _ = make_qkv(1, 2, 1, 1100, 1100, 64, seed=7)
    mask, W = official_mask(q, k, 8, threshold=1e-3, return_w=True)
    got = spattn.methods.get("xattention", threshold=1e-3).estimate(q, k, causal=True).blocks
    np.testing.assert_array_equal(got, mask)
    for h in range(2):
        for r in range(1, got.shape[2]):
            others = W[0, h, r, :r + 1].copy()
            others[r] = -1
            want = {0, r, int(np.argmax(others))}
            assert set(np.flatnonzero(got[0, h, r])) == want, (h, r)


def test_later_chunks_force_column_zero_and_the_diagonal():
    """Past the first chunk (Nk > 16384: chunk 8192, 64 block rows) column 0 and the diagonal are
    forced and credited first: a tiny threshold keeps exactly those two blocks."""
    L = 16384 + 200
    q, k, _ = make_qkv(1, 2, 1, L, L, 64, seed=8)
    got = spattn.methods.get("xattention", stride=16, threshold=1e-3).estimate(q, k, causal=True).blocks
    first = chunk_size(L) // 128
    assert first == 64
    for r in range(first, got.shape[2]):
        assert set(np.flatnonzero(got[0, 0, r])) == {0, r}
        assert set(np.flatnonzero(got[0, 1, r])) == {0, r}
    # first-chunk rows: the diagonal, column 0 and the top other block (which may be column 0)
    assert np.isin(got[0, :, 2:first].sum(-1), (2, 3)).all() and (got[0, :, 2:first].sum(-1) == 3).any()
    np.testing.assert_array_equal(got, official_mask(q, k, 16, threshold=1e-3))


def test_later_chunks_match_official_at_default_threshold():
    L = 16384 + 77
    q, k, _ = make_qkv(1, 2, 1, L, L, 64, seed=9)
    got = spattn.methods.get("xattention", stride=16).estimate(q, k, causal=True).blocks
    np.testing.assert_array_equal(got, official_mask(q, k, 16))


def test_column_zero_is_always_selected():
    q, k, _ = make_qkv(1, 2, 2, 1500, 1500, 64, seed=11)
    for causal in (True, False):
        got = spattn.methods.get("xattention", threshold=0.05).estimate(q, k, causal=causal).blocks
        assert got[..., 0].all(), causal


def test_noncausal_rows_see_the_zero_keys_that_pad_to_the_chunk():
    """Non-causal, the official code runs the softmax over the keys zero-padded to a multiple of the
    chunk: they take mass (and blocks made of them compete), which changes the selection."""
    q, k, _ = make_qkv(1, 2, 1, 700, 700, 64, seed=12)
    q *= 3
    got = spattn.methods.get("xattention").estimate(q, k, causal=False).blocks
    np.testing.assert_array_equal(got, official_mask(q, k, 8, causal=False))
    # the same selection without the padding keys (a 2048-token input of which only 700 are
    # real would be that): differs
    mask_no_pad, _ = _mask_without_padding(q, k)
    assert (mask_no_pad != got).any()


def _mask_without_padding(q, k, S=8, tau=0.9, block=128):
    B, Hq, L, D = q.shape
    k = np.repeat(k.astype(np.float64), Hq // k.shape[1], axis=1)
    pad = -L % block
    K = np.concatenate([k, np.zeros((B, Hq, pad, D))], axis=2)
    Q = np.concatenate([q.astype(np.float64), np.zeros((B, Hq, pad, D))], axis=2)
    rK = np.concatenate([K[:, :, t::S] for t in range(S)], axis=-1)[:, :, :math.ceil(L / S)]
    rQ = np.concatenate([Q[:, :, S - 1 - t::S] for t in range(S)], axis=-1)
    A = rQ @ np.swapaxes(rK, -1, -2) / math.sqrt(D) / S
    P = np.exp(A - A.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    P[:, :, math.ceil(L / S):] = 0
    P = np.concatenate([P, np.zeros(P.shape[:-1] + (rQ.shape[2] - rK.shape[2],))], axis=-1)
    n = rQ.shape[2] // (block // S)
    W = P.reshape(B, Hq, n, block // S, n, block // S).sum(-1).sum(-2)
    return find_blocks_chunked(W, 0, tau, False), W


def test_keep_sink_sets_the_first_row_and_keep_recent_the_diagonal():
    q, k, _ = make_qkv(1, 2, 1, 1000, 1000, 64, seed=13)
    for causal in (True, False):
        base = spattn.methods.get("xattention", threshold=0.2).estimate(q, k, causal=causal).blocks
        sink = spattn.methods.get("xattention", threshold=0.2, keep_sink=True).estimate(q, k, causal=causal).blocks
        recent = spattn.methods.get("xattention", threshold=0.2, keep_recent=True).estimate(q, k, causal=causal).blocks
        assert sink[:, :, 0].all()  # the whole first query-block row, future blocks included
        np.testing.assert_array_equal(sink[:, :, 1:], base[:, :, 1:])
        assert recent.diagonal(axis1=-2, axis2=-1).all()
        np.testing.assert_array_equal(sink, official_mask(q, k, 8, 0.2, causal=causal, keep_sink=True))
        np.testing.assert_array_equal(recent, official_mask(q, k, 8, 0.2, causal=causal, keep_recent=True))
        if causal:  # the diagonal is forced already
            np.testing.assert_array_equal(recent, base)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("Hq, Hkv, L, D, S", [(4, 2, 333, 64, 8), (2, 1, 260, 80, 16), (2, 2, 200, 128, 4)])
def test_output_is_attention_restricted_to_the_mask(Hq, Hkv, L, D, S, causal):
    q, k, v = make_qkv(1, Hq, Hkv, L, L, D, seed=4)
    m = spattn.methods.get("xattention", stride=S, threshold=0.5, block_size=64)
    mask = m.estimate(q, k, causal=causal)
    np.testing.assert_array_equal(mask.blocks, official_mask(q, k, S, 0.5, block=64, causal=causal))
    out = m(q, k, v, causal=causal)
    p, _ = ref_probs(q, k, causal=causal, allowed=mask.to_dense(causal=False))
    ref = np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), Hq // Hkv, axis=1))
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_chunked_prefill_rows_are_those_of_the_full_prefill():
    """_core accepts Nq < Nk with Nk - Nq a multiple of the block: the rows of the Nk-token prefill
    mask (the official result when Nk - Nq is a multiple of the chunk size)."""
    q, k, _ = make_qkv(1, 4, 2, 1000, 1000, 64, seed=14)
    p = _core.XAttentionParams()
    full = _core.estimate_xattention(q, k, True, None, p)
    for start in (128, 640):
        part = _core.estimate_xattention(np.ascontiguousarray(q[:, :, start:]), k, True, None, p)
        np.testing.assert_array_equal(part, full[:, :, start // 128:])
    with pytest.raises(ValueError, match="multiple of block_size"):
        _core.estimate_xattention(np.ascontiguousarray(q[:, :, 100:]), k, True, None, p)
    m = spattn.methods.get("xattention")
    with pytest.raises(ValueError, match="Nq"):
        m.estimate(q[:, :, 128:], k, causal=True)


def test_parameters_defaults_and_checks():
    m = spattn.methods.get("xattention")
    assert m.params == {"stride": 8, "threshold": 0.9, "block_size": 128, "keep_sink": False, "keep_recent": False}
    assert spattn.methods.capabilities("xattention").chunked is False
    for bad, match in [(dict(stride=3), "stride must divide block_size"), (dict(block_size=96), "divide 2048"),
                       (dict(threshold=0.0), "threshold must be in"), (dict(threshold=[0.5, 1.5]), "threshold"),
                       (dict(threshold=[]), "threshold must hold at least one value"), (dict(stride=0), "stride")]:
        with pytest.raises(ValueError, match=match):
            spattn.methods.get("xattention", **bad)
    for bad in ("x", None, True, [[0.5]]):
        with pytest.raises(TypeError, match="threshold must be a float or a sequence of floats"):
            spattn.methods.get("xattention", threshold=bad)
    assert spattn.methods.get("xattention", threshold=np.float32(0.5)).params["threshold"] == 0.5
    assert spattn.methods.get("xattention", threshold=np.array([0.5, 0.7])).params["threshold"] == [0.5, 0.7]
