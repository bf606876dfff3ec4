"""Streaming: attention sinks + a local window (StreamingLLM; the A-shape of MInference).

Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024; the block
form is MInference's A-shape. The estimator is ``_core.estimate_streaming``.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from .._validation import check_positive_int
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
    defaults = {"block_size": 64, "sink_tokens": 128, "local_tokens": 1024}
    capabilities = Capabilities()

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")
        for name in ("sink_tokens", "local_tokens"):
            val = self.params[name]
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
                raise ValueError(f"{name} must be an int >= 0, got {val!r}")

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        B, Hq, Nq, _ = q.shape
        p = self.params
        blocks = _core.estimate_streaming(B, Hq, k.shape[1], Nq, k.shape[2], causal,
                                          p["block_size"], p["sink_tokens"], p["local_tokens"])
        return BlockMask(blocks, p["block_size"], p["block_size"], Nq, k.shape[2])
