"""Streaming: attention sinks + a local window (StreamingLLM; the A-shape of MInference).

Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024; the block
form is MInference's A-shape. The estimator is ``_core.estimate_streaming``.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class Streaming(Method):
    """Attention sinks + local window (StreamingLLM; the A-shape of MInference), as a BlockMask.

    Parameters
    ----------
    block_size : int, default 64
    sink_tokens : int, default 128
        Initial keys every query keeps (rounded up to whole blocks).
    local_tokens : int, default 1024
        Width of the window ending at each query's causal limit (centred when not causal);
        every block it touches is kept.
    """

    name = "streaming"
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024"
    pattern = "sink + local window (A-shape)"
    params_struct = _core.StreamingParams
    capabilities = Capabilities()

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks = _core.estimate_streaming(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])
