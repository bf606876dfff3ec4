"""XAttention: block selection by antidiagonal strided scores and a cumulative-mass threshold.

Xu et al., "XAttention: Block Sparse Attention with Antidiagonal Scoring", 2025; the estimator is
``_core.estimate_xattention`` with its parameters in ``_core.XAttentionParams``.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class XAttention(Method):
    """XAttention's prefill block mask, as the official ``xattn_estimate`` builds it.

    Follows mit-han-lab/x-attention (HEAD e379887): ``xattn_estimate`` and ``Xattention_prefill``
    (xattn/src/Xattention.py), ``find_blocks_chunked`` (xattn/src/utils.py) and the Triton path
    ``flat_group_gemm_fuse_reshape`` + ``softmax_fuse_block_sum`` (xattn/src/kernels.py):

    1. chunk size ``C = max(min(max(2048, P), 2**28 // P), 2048)``, ``P`` the next power of two
       of Nk (the ``Xattention_prefill`` default: 8k -> 8192, 32k -> 8192, 128k -> 2048);
    2. antidiagonal score of reshaped rows: query row i against key row j is
       ``scale / stride * sum_t q[i*S + S-1-t] . k[j*S + t]`` (zero rows past the end), causal on
       reshaped rows (``j <= i``, the whole diagonal S x S tile), softmax per row in float32;
       non-causal rows also see the zero keys that pad Nk to a multiple of C (as the official
       code: they take softmax mass, and blocks made of them can be selected, then sliced off);
    3. W = sums of the probabilities over ``(block_size/S)**2`` reshaped tiles;
    4. per block row, ``required = threshold * sum(W row)`` and a greedy over the blocks sorted
       by W, position p kept iff the cumulative mass before it is below ``required``
       (``find_blocks_chunked(mode="prefill")``). Causal: block column 0 and the diagonal are
       forced and their mass credited first; **in the first chunk** (block rows ``< C /
       block_size``, i.e. every row when Nk <= 16384) the chunk's identity block overwrites
       column 0, so only the diagonal is forced and credited one position late: the top other
       block is always kept and the m-th (m >= 1) iff ``W_diag + sum_{l < m-1} s_l < required``.
       Non-causal: nothing forced. Column 0 always ends up set (unselected slots are written onto
       it);
    5. causal: blocks right of the diagonal cleared; ``keep_sink`` sets the whole first
       query-block row (not column 0), ``keep_recent`` every diagonal block;
    6. the block-sparse kernel applies token-level causality inside the blocks.

    The antidiagonal sum is a Q.K^T of reshaped rows (query rows reversed inside their stride
    group, key rows forward, each S*D wide), so it runs on the exact block-map statistics pass of
    the tile engine (``block_attention_map``, the same softmax-then-block-sum as the official
    ``softmax_fuse_block_sum``); memory stays O(N) plus the (N/block_size)**2 block map.

    GQA as the official callers (``repeat_kv``): one mask per query head, query head h scored
    against kv head h // (Hq/Hkv); per-head thresholds are one per query head.

    Parameters
    ----------
    stride : int, default 8
        Antidiagonal stride S; must divide ``block_size``. The official functions have **no
        default** (the paper uses 8 or 16; its LongBench runs 8, RULER 16/8/4, the demo 16).
    threshold : float or sequence of float, default 0.9
        Cumulative mass tau in (0, 1], one value for every head or one per query head (the
        official per-layer x per-head profiles give one row per layer: use one method per layer).
        0.9 is the ``xattn_estimate`` default; ``Xattention_prefill`` defaults to 0.8.
    block_size : int, default 128
        Mask block (``Xattention_prefill`` asserts 128); must divide 2048.
    keep_sink, keep_recent : bool, default False
        The official post-processing flags (LongBench runs set both).

    Notes
    -----
    Deviations from the official code: float32 throughout (the official Triton path keeps W in
    the input dtype, bf16 in its runs; expect rare boundary flips against bf16 masks); a
    user-given ``scale`` replaces 1/sqrt(D) in the score (the official code always uses
    1/sqrt(D)); ties in the sort go to the lower block (only equal values tie, which get the same
    decision); the float32 torch path's bug for lengths that are an exact multiple of the chunk
    with several chunks (``causal_mask[..., -0:] = -inf``) is not reproduced (the Triton path,
    followed here, has none). The official chunked loop itself does not change the mask and is
    not copied (the chunk size still decides the first-chunk rule and the non-causal padding).

    Lengths: Nq == Nk, causal or not (the official reference case). The official code also runs
    with Nq < Nk, but aligns the causal diagonal on chunk-padded block counts, which is only right
    when Nk - Nq is a multiple of the chunk size. ``_core.estimate_xattention`` accepts Nq < Nk
    when Nk - Nq is a multiple of ``block_size`` and returns the rows of the Nk-token prefill mask
    for the last Nq queries (equal to the official mask whenever the official alignment is right;
    ``keep_sink`` still sets the first returned row, as the official code does). Other Nq != Nk
    are rejected, so ``capabilities.chunked`` (any Nq != Nk) and ``decode`` are False and this
    method runs prefill only; the Transformers backend runs chunked prefill and decode dense.
    """

    name = "xattention"
    paper = "Xu et al., XAttention, 2025"
    pattern = "antidiagonal strided block scores, cumulative threshold, forced sink column + diagonal"
    params_struct = _core.XAttentionParams
    capabilities = Capabilities(chunked=False, decode=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks = _core.estimate_xattention(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])
