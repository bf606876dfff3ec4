"""AnchorAttention: difference-aware stripe-sparse prefill.

Zhang et al., "AnchorAttention: Difference-Aware Sparse Attention with Stripe Granularity",
EMNLP 2025 (arXiv 2505.23520), following the authors' ``anchorattn`` code. The estimator is
``_core.estimate_anchor_attention`` (cpp/src/estimators/anchor_attention.cpp) with its parameters in
``_core.AnchorAttentionParams``; attention runs on the token-sparse kernel.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .. import _core
from ..kernels import merge_states, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register


@register
class AnchorAttention(Method):
    """AnchorAttention's stripe mask, as the official ``anchorattn`` computes it.

    With ``G = block_size * step`` (the "big block", 2048 by default) and query ``i`` in big
    block ``g = i // G``:

    1. anchor ``a_i`` = the largest logit ``scale q_i . k_j`` over ``R(i)`` = the first ``G`` keys
       and the query's own big block ``[g G, i]`` (``anchorattn_step_1``);
    2. per big block, pooled queries ``qbar_r`` and pooled anchors ``abar_r`` (means over each
       sub-block of ``block_size`` queries); candidate key ``j`` becomes a stripe of the block
       when ``scale qbar_r . k_j + theta >= abar_r`` for some sub-block ``r``
       (``get_q_mask_triton`` / ``get_mask_block``);
    3. every query of the block attends ``R(i)`` plus the block's stripes (step 3 continues step
       1's online softmax).

    ``estimate`` returns TokenIndices with ``group_size = G``: per big block the key set
    ``[0, G)``, the stripes and the own block (the kernel applies the causal rule).
    ``last_info`` holds ``stripes`` (B, Hq, groups, S; the official ``true_coords``, -1 padded),
    ``counts`` (``true_counts``), ``anchors`` (B, Hq, N) and ``mask``.

    Parameters
    ----------
    block_size : int, default 128
    step : int, default 16
    theta : float, default 12
        The official ``difference``, in natural-log logit units (the official kernels multiply it
        by log2(e) to compare in log2 units; the same test). Larger = denser.
    official_candidates : bool, default True
        True: candidates ``[block_size, g G - block_size)`` as the official ``get_q_mask*`` and
        ``get_mask_block``. Two quirks follow and are reproduced: for ``g >= 1`` a stripe below
        ``G`` lies in ``R(i)`` too and the official step 3 adds it to the softmax a second time
        (``__call__`` does the same: ``capabilities.own_output``); keys
        ``[g G - block_size, g G)`` are never attended for ``g >= 2``. False: candidates
        ``[G, g G)`` (an older fused kernel of the same code): every key once, no gap.

    Notes
    -----
    Deviations from the official code: float32 throughout (the official kernels cast q, the
    pooled logits and anchors to bf16/fp16 before comparing); lengths that are not multiples of
    ``G`` are accepted (the official code asserts ``N % G == 0``): a partial last sub-block is
    pooled over its real rows, as ``get_mask_block`` pools a partial last big block over its real
    sub-blocks; any ``block_size, step >= 1`` (the official Triton kernels take block_size in
    {16, ..., 256} and step in {16, 32}). GQA: query head ``h`` reads kv head ``h // (Hq/Hkv)``
    (the official code runs after ``repeat_kv``); anchors and stripes are per query head.
    Causal prefill only (Nq == Nk), as the official code.
    """

    name = "anchor_attention"
    aliases = ("anchorattn",)
    paper = "Zhang et al., AnchorAttention: Difference-Aware Sparse Attention with Stripe Granularity, EMNLP 2025"
    pattern = "per 2048-query block: first 2048 keys + own block + difference-aware key stripes (token-level)"
    params_struct = _core.AnchorAttentionParams
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="token", own_output=True)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        idx, group_size, stripes, counts, anchors = _core.estimate_anchor_attention(q, k, causal, scale, self.cparams)
        mask = TokenIndices(idx, group_size, k.shape[2], assume_sorted=True)
        self.last_info = {"mask": mask, "stripes": stripes, "counts": counts, "anchors": anchors}
        return mask

    def repeated_keys(self) -> Optional[TokenIndices]:
        """The stripes of the last estimate that also lie in the first ``G`` keys: the official
        kernel adds them to the softmax a second time (None when there are none)."""
        mask, stripes = self.last_info["mask"], self.last_info["stripes"]
        init_end = min(self.params["block_size"] * self.params["step"], mask.kv_len)
        rep = np.where(stripes < init_end, stripes, -1)  # stripes ascend: the kept ones are a prefix
        if not (rep >= 0).any():
            return None
        width = int((rep >= 0).sum(axis=-1).max())
        return TokenIndices(rep[..., :width], mask.group_size, mask.kv_len, assume_sorted=True)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Estimate, run the token-sparse kernel on the mask and, as the official step 3, merge in
        the stripes counted a second time (see ``official_candidates``)."""
        mask = self.estimate(q, k, causal=causal, scale=scale, q_gate=q_gate, k_gate=k_gate)
        out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        rep = self.repeated_keys()
        if rep is not None:
            out_r, lse_r = token_sparse_attention(q, k, v, rep, causal=causal, scale=scale, return_lse=True)
            out, lse = merge_states(out, lse, out_r, lse_r)
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        return {"mean_stripes": float(np.mean(self.last_info["counts"]))}


__all__ = ["AnchorAttention"]
