"""FlexPrefill: query-aware sparse prefill with Jensen-Shannon pattern switching.

Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient Long-Sequence
Inference", ICLR 2025; the estimator is ``_core.estimate_flexprefill`` (the official
``get_active_blocks``) with its parameters in ``_core.FlexPrefillParams``; this module runs the
attention of the official GQA-interleave option with the heads permuted around the kernel.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .. import _core
from .._validation import check_qkv
from ..kernels import block_sparse_attention
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class FlexPrefill(Method):
    """FlexPrefill: query-aware sparse prefill with Jensen-Shannon pattern switching.

    Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient
    Long-Sequence Inference", ICLR 2025; follows the official ``get_active_blocks``.

    Per (batch, head), from the last ``block_size`` queries: vertical (column) and slash
    (diagonal) attention statistics give budgets ``count(cumsum(sorted) <= gamma) + 1``, then
    ``// 128 + 1`` blocks (a literal 128, as in the official code), clamped to
    [min_budget, max_budget]. The sqrt Jensen-Shannon distance between the pooled estimate
    ``softmax(mean(last queries) . mean(K blocks))`` and the true block distribution of those
    queries decides the pattern: below ``tau`` the head is *query-aware* (min budgets for
    vertical/slash, plus the blocks of the flattened causal pooled-score matrix while its
    running sum stays <= gamma * n_blocks), otherwise *vertical-slash*. Key block 0 and the main
    diagonal are always kept. Short inputs (N <= max(2 * block_size, min_budget rounded up to
    blocks)) and decode (Nq = 1) fall back to dense, as in the official code.

    Parameters
    ----------
    gamma : float, default 0.9
        Coverage (paper: 0.9 for Yi/Qwen2, 0.95 for LLaMA-3.1/GLM-4; the official function has no default).
    tau : float, default 0.1
        sqrt-JS threshold (paper experiments: 0.1; the official function's default 0 disables query-aware heads).
    min_budget : int, default 1024
        Minimum budget in tokens (paper experiments: 1024; official function default: 1 token).
    max_budget : int or None, default None
        Maximum budget in tokens (None: unlimited, as in the paper's runs).
    block_size : int, default 128
    gqa_interleave : bool, default False
        Official option: query head h reads kv head h % Hkv (instead of spattn's h // (Hq/Hkv))
        both in the estimate and in the attention; the heads are permuted around the kernels.

    Notes
    -----
    Deviations from the official code, all deliberate: float32 where it uses bf16; ties in
    top-k and sorting broken towards the lower index (torch leaves them unspecified); batch > 1
    handled by looping (it asserts B == 1). As in the official
    code, the estimation uses scale 1/sqrt(D) whatever ``scale`` the attention uses, and an exact
    zero probability in the JS terms yields NaN, which keeps the head vertical-slash.
    Only causal prefill (Nq == Nk) and decode (Nq == 1) are defined.

    After ``estimate``, ``last_info`` holds per (B, Hq): ``pattern`` (array of
    "vertical_slash" / "query_aware" / "dense"), ``js`` (sqrt-JS distance, NaN for dense),
    ``n_vertical`` and ``n_slash`` (budgets in blocks).
    """

    name = "flexprefill"
    paper = "Lai et al., FlexPrefill: A Context-Aware Sparse Attention Mechanism, ICLR 2025"
    pattern = "query-aware | vertical-slash, chosen per head by JS divergence"
    params_struct = _core.FlexPrefillParams
    capabilities = Capabilities(noncausal=False, chunked=False, gqa_layouts=("grouped", "interleaved"))
    PATTERNS = ("vertical_slash", "query_aware", "dense")

    @staticmethod
    def _interleave_order(Hq: int, Hkv: int) -> np.ndarray:
        """order[j] = original query head placed at position j so that position j reads kv head
        j // (Hq/Hkv) in spattn's layout exactly when the original head h reads h % Hkv (the
        same permutation the C++ estimator applies for ``gqa_interleave``)."""
        G = Hq // Hkv
        j = np.arange(Hq)
        return (j % G) * Hkv + j // G

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        blocks, pattern, js, nv, ns = _core.estimate_flexprefill(q, k, True, self.cparams)
        self.last_info = {"pattern": np.array(self.PATTERNS, dtype=object)[pattern].astype(str),
                          "js": js, "n_vertical": nv, "n_slash": ns}
        bs = self.params["block_size"]
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])

    def readouts(self) -> Dict[str, Any]:
        """Heads per pattern of the last estimate, e.g. ``{"patterns": {"query_aware": 3, ...}}``."""
        if "pattern" not in self.last_info:
            return {}
        kinds, counts = np.unique(self.last_info["pattern"], return_counts=True)
        return {"patterns": {str(kd): int(c) for kd, c in zip(kinds, counts)}}

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        if not self.params["gqa_interleave"]:
            return super().__call__(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
        q, k, v = check_qkv(q, k, v)
        mask = self.estimate(q, k, causal=causal, scale=scale)
        order = self._interleave_order(q.shape[1], k.shape[1])
        inv = np.argsort(order)
        pm = BlockMask(np.ascontiguousarray(mask.blocks[:, order]), mask.block_q, mask.block_k, mask.q_len, mask.kv_len)
        out, lse = block_sparse_attention(np.ascontiguousarray(q[:, order]), k, v, pm, causal=causal, scale=scale,
                                          return_lse=True)
        out, lse = np.ascontiguousarray(out[:, inv]), np.ascontiguousarray(lse[:, inv])
        return (out, lse) if return_lse else out
