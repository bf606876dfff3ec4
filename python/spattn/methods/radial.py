"""Radial Attention: a static spatiotemporal block mask whose window halves as the frame distance
doubles (video diffusion).

Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
Generation", arXiv 2506.19852; the mask is ``_core.estimate_radial``
(cpp/src/estimators/radial.cpp) with the parameters of ``_core.RadialParams``.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class Radial(Method):
    """Radial Attention's mask, as the official code builds it (mit-han-lab/radial-attention,
    HEAD 72788d4, ``radial_attn/attn_mask.py`` ``gen_log_mask_shrinked`` with
    ``get_window_width``, ``get_diagonal_split_mask`` and ``shrinkMaskStrict``): for query frame i
    and key frame j the tokens within a band |c - r| <= w of each other, w = T for neighbouring
    frames and halving as the distance doubles (times ``decay_factor``, at least ``block_size``),
    far frame pairs subsampled (kept when the distance is a multiple of 128 / (P / 2^g)), Wan's
    first frame an attention sink; each pair's token mask reduced to 128 x 128 tiles by the
    official density rule (a tile is kept when > 60% of its non-empty columns are > 1/3 full), the
    tiles OR-ed into one block mask shared by every head. Tokens past ``video_tokens`` (text) and
    a last partial video block attend and are attended densely (the official text branch, here in
    the same softmax instead of an LSE merge: the same result).

    Bidirectional (non-causal) self-attention over (B, H, N, D) with the video tokens frame-major
    first: ``frames`` must divide ``video_tokens`` (default: the whole sequence).

    Parameters
    ----------
    frames : int, default 1
    video_tokens : int, default 0 (the whole sequence)
    decay_factor : float, default 1.0
        The RadialAttention default; the official Wan script passes 0.2, HunyuanVideo's 0.95.
    wan : bool, default True
        Wan's rule (first frame a sink); False: HunyuanVideo's.
    block_size : int, default 128

    Notes
    -----
    Not reproduced: the dense first layers / denoising steps of the official scripts (a
    per-call method has no step counter; see the stateful-methods issue) and HunyuanVideo's text
    padding mask. A frame pair whose tiles reach past the sequence's blocks is cut there (the
    official caller sizes its mask so that this does not happen).
    """

    name = "radial"
    paper = "Li et al., Radial Attention, 2025"
    pattern = "static video mask: per frame pair a band halving with the frame distance, far pairs subsampled"
    params_struct = _core.RadialParams
    capabilities = Capabilities(causal=False, chunked=False, decode=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks = _core.estimate_radial(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])


__all__ = ["Radial"]
