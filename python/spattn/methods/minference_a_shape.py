"""MInference A-shape: attention sinks + a token-level local window (StreamingLLM's pattern).

Jiang et al., "MInference 1.0", NeurIPS 2024 (A-shape); Xiao et al., "Efficient Streaming Language
Models with Attention Sinks", ICLR 2024. Parameters in ``_core.MInferenceAShapeParams``; the
pattern runs on :func:`spattn.kernels.window_attention`.
"""

from __future__ import annotations

from .. import _core
from ..masks import WindowMask
from .base import Capabilities, Method, register


@register
class MInferenceAShape(Method):
    """MInference's A-shape, token for token as the official ``streaming_forward`` computes it.

    Follows microsoft/MInference (HEAD fb56c91) minference/ops/streaming_kernel.py
    ``streaming_forward(q, k, v, n_init, n_local)``: the query at position p (bottom-right
    aligned, p = i + Nk - Nq) sees key j iff ``j <= p and (p - j < n_local or j < n_init)`` (a
    sliding window of n_local keys including its own, plus the first n_init keys; the official
    kernel adds the sinks with a complement window, so no key counts twice). Defaults are the
    official ``a_shape`` attention type's (minference/models_patch.py).

    Not the same mask as ``streaming`` (spattn's block form of the pattern: whole 64-key blocks),
    hence a method of its own; both are kept so the block and token forms can be compared.

    Parameters
    ----------
    n_init : int, default 128
    n_local : int, default 3968

    Notes
    -----
    GQA as the official callers: every query head reads its kv head (the pattern is the same for
    all heads). Decode (Nq = 1) and chunked prefill follow the same rule; the official code was
    compared on prefill only. Causal only, as official.
    """

    name = "minference_a_shape"
    paper = "Jiang et al., MInference 1.0, NeurIPS 2024 (A-shape; StreamingLLM sinks + window)"
    pattern = "token-level sinks + sliding window"
    params_struct = _core.MInferenceAShapeParams
    capabilities = Capabilities(noncausal=False, mask_format="window")

    def _estimate(self, q, k, causal, scale) -> WindowMask:
        p = self.params
        return WindowMask(q.shape[2], k.shape[2], sinks=p["n_init"], left=p["n_local"] - 1, right=None)
