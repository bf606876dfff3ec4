"""PowerAttention: a static block pattern whose receptive field doubles with depth.

Chen et al., "PowerAttention: Exponentially Scaling of Receptive Fields for Effective Sparse
Attention", arXiv 2503.03588; the pattern is ``_core.estimate_powerattention``
(cpp/src/estimators/powerattention.cpp) with the parameters of ``_core.PowerAttentionParams``.
"""

from __future__ import annotations

import math

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class PowerAttention(Method):
    """PowerAttention's mask, as the paper's Algorithm 1 writes it (no official code was found):
    a key is kept for a query when it is causal and lies in the first block (sink), in one of the
    ``window_blocks`` newest blocks (the query's own included), or at a block distance that is a
    power of two (1, 2, 4, 8, ...). O(log N) blocks per query; the same for every head and
    layer, prefill and decode (bottom-right alignment when Nq < Nk).

    Parameters
    ----------
    block_size : int, default 256
    window_blocks : int, default 5
        The paper's Qwen2-7B setting: 5 local blocks, 1 sink block, and the power-of-two
        distances 8, 16, 32, ... beyond the window.

    Notes
    -----
    The query blocks of the mask follow the position blocks (block_q = block_size, or a divisor
    of it when Nk - Nq is not a multiple of it), so each row gets exactly its own key blocks.
    The paper trains the model with this mask (continued pre-training); on a model trained with
    dense attention it is a static baseline.
    """

    name = "powerattention"
    paper = "Chen et al., PowerAttention, 2025"
    pattern = "static: sink block + W local blocks + blocks at power-of-two distances"
    params_struct = _core.PowerAttentionParams
    capabilities = Capabilities(noncausal=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        B = self.params["block_size"]
        off = k.shape[2] - q.shape[2]
        bq = B if off % B == 0 else math.gcd(B, off % B)
        blocks = _core.estimate_powerattention(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bq, B, q.shape[2], k.shape[2])


__all__ = ["PowerAttention"]
