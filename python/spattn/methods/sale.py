"""SALE: int4-estimated block selection by Relative Attention Score.

Ji et al., "SALE: Low-bit Estimation for Efficient Sparse Attention in Long-context LLM
Prefilling", arXiv 2505.24179; the estimator is ``_core.estimate_sale``
(cpp/src/estimators/sale.cpp) with its parameters in ``_core.SaleParams``.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class Sale(Method):
    """SALE's prefill block mask, as the official int4 skipping kernel selects it.

    Follows BirdChristopher/SALE (HEAD 39d380c): ``flash_attn_func_int4_skip`` with the README
    settings (``block_q_size=64, block_k_size=32, local_window=128, block_seg_size=128,
    impl_version=2, quant_mode=3``), the quantisers of ``quant_triton.py`` and the selection of
    ``compute_attn_1rowblock_skipping_v2`` (flash_fwd_int4_sparse_kernel_v2.h):

    1. q and k are smoothed by their per-head means over the tokens; the exact pass uses the
       smoothed k (a per-row constant shift, softmax-invariant);
    2. both are quantised to int4 (round to nearest even, ``scale = max|x| / 7``) with the
       official scale groups: ``quant_mode=3`` a query scale per ``(pos // 16, pos % 8)`` and a
       key scale per ``((pos % block_k_size) // 2) % 4`` inside each key block; ``quant_mode=2``
       one scale per token. The query-mean term ``mean(q) . k_smooth`` is added back (mode 3:
       rounded on the integer grid, ``rint(qmk / (sq sk))``);
    3. per 64-query block, ``n_max`` key blocks reach the diagonal; block 0 (sink) and the last
       ``n_local`` blocks (at least ``local_window`` tokens, 4..7 blocks of 32) are exact, the
       blocks between are scanned in segments of ``block_seg_size`` tokens;
    4. the exact pass over local + sink gives each row's max ``m_i`` and sum ``l_i``; with
       ``impl_version=2`` (two-pass, README) the threshold ``T_i = m_i + ln(l_i tau) / scale``
       is computed once, before the scan (``quant_mode=3``; with ``quant_mode=2`` the official
       test reads the live row max and sum, so each segment's selected blocks, computed exactly,
       raise the bar for the next segment: reproduced);
    5. a segment block is kept iff some row's int4 estimate exceeds ``T_i`` at some key of the
       block, i.e. the Relative Attention Score ``exp(scale (s~ - m_i)) / l_i > tau``;
    6. the block-sparse kernel runs the kept blocks (causal inside the diagonal blocks).

    The int4 products run on integer SIMD (VNNI ``vpdpbusd`` where the CPU has it, else
    ``vpmaddubsw``/``vpmaddwd``; ``spattn.build_info()["simd_int4"]``). ``python -m spattn
    bench --sale-estimate`` times them against float32 products of the same tiles.

    Parameters
    ----------
    thresholds : float or sequence of float, default 0.004
        tau in [0, 1], one value or one per query head (the README example; the official
        calibration script fits one per head and layer). ``tau < 1e-5`` makes a head dense.
    block_k_size : int, default 32
        Key block (16, 32, 48 or 64). Query blocks are 64 (asserted officially).
    local_window : int, default 128
        Asserted 128 by the official code; the only value accepted.
    block_seg_size : int, default 128
        Scan segment in tokens (README 128; the function default is 256).
    quant_mode : int, default 3
        3: per-warp scale groups (README); 2: per-token scales.
    dense_len : int, default 1024
        Sequences of at most this many tokens run dense, as the official function (SDPA for
        ``q_len <= 1024``). Set 0 to select at any length.

    Notes
    -----
    Deviations from the official code: float32 where the official kernel keeps the threshold,
    the query-mean term and the dequantised row maximum in fp16 (and quantises fp16 inputs in
    fp16), so masks can differ at near-ties; only the valid query rows of the last partial query
    block vote (what the official kernel's padding rows contribute there, with ``sq = 0``, was not
    established); int4 values are held one per byte (the official packs two per byte), and any
    head dim is accepted (the official Triton quantiser needs a power of two). Causal prefill only (Nq == Nk), as the official
    quantiser asserts.
    """

    name = "sale"
    paper = "Ji et al., SALE, 2025"
    pattern = "int4-estimated 64x32 blocks by relative attention score vs local+sink softmax; sink + local exact"
    params_struct = _core.SaleParams
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        blocks = _core.estimate_sale(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, 64, self.params["block_k_size"], q.shape[2], k.shape[2])


__all__ = ["Sale"]
