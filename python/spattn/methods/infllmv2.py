"""InfLLM-V2: dense-sparse switchable attention with parameter-free two-level key compression.

Zhao et al., "InfLLM-V2: Dense-Sparse Switchable Attention for Seamless Short-to-Long
Adaptation", arXiv 2509.24663 (MiniCPM4 / MiniCPM4.1); the selection is
``_core.estimate_infllmv2`` (cpp/src/estimators/infllmv2.cpp) with the parameters of
``_core.InfLLMv2Params``; the selected blocks run on the row-block sparse kernel
(:func:`spattn.row_block_sparse_attention`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from ..masks import RowBlockIndices
from .base import Capabilities, Method, register


@register
class InfLLMv2(Method):
    """InfLLM-V2's per-token block selection, as OpenBMB/infllmv2_cuda_impl (HEAD f908e73) and
    the MiniCPM4 model code compute it.

    Below ``dense_len`` keys the call is dense causal attention (every block up to the query's
    own). Otherwise, for each query token t (position t + Nk - Nq; decode: Nk - 1) and kv head:

    1. mean-pooled keys without parameters, ``k1_j = mean(K[s j : s j + w])`` (w =
       ``kernel_size``, s = ``kernel_stride``) and ``k2_j`` with 4w and 4s (``CompressK``;
       ``tests/test_stage1_compressed_lse.py::compress_tensor``);
    2. stage-1 scores per query head, ``exp(q.k1_j / sqrt(D) - lse)`` with lse the log-sum-exp
       of ``q.k2 / sqrt(D)`` over the visible k2 tokens (``tests/stage1/complse_online_softmax.py::
       compresssed_lse_online_softmax``), token j of kernel w, stride s visible iff
       t >= s j + w - 1; summed over the query heads of the group; NaN -> 0;
    3. block scores by max pooling (``csrc/max_pooling_1d.cuh``): block b takes the max over
       ``j in [r b - 1, r b + r)`` (r = block_size / kernel_stride), -inf when empty; blocks
       ``b < init_blocks`` or ``qb - local_blocks <= b <= qb`` (qb = t // block_size,
       local_blocks = window_size // block_size; note the ``<=``: local_blocks + 1 blocks)
       are forced (+inf);
    4. the top ``min(topk + local_blocks, nblocks)`` blocks (ties to the lower index), sorted,
       ids > qb -> -1, shared by the query heads of the group; attention over their keys,
       causal inside the blocks, one softmax.

    Parameters
    ----------
    kernel_size : int, default 32
    kernel_stride : int, default 16
    block_size : int, default 64
    init_blocks : int, default 1
    window_size : int, default 2048
        local_blocks = window_size // block_size (32).
    topk : int, default 64
        Each row keeps topk + local_blocks (96) blocks.
    dense_len : int, default 8192
        The switch length: dense attention while Nk < dense_len.

    Notes
    -----
    Deviations: scores in float32 (official: bf16 stage 1 and pooling), ties of equal block scores
    to the lower index (torch.topk on CUDA leaves them unspecified); for kernel_size != 2 *
    kernel_stride the visibility rule t >= s j + w - 1 is the general form of the official
    kernel's (which hard-wires w = 2 s); a query row that sees no k2 token (t < 4w - 1) gets
    lse = -inf and +inf scores on its visible k1 tokens, as the reference; chunked prefill
    (Nq < Nk) places the queries bottom-right (the model runs prefill from an empty cache). The
    model keeps k1 / k2 buffers in its decode cache; here each call pools them from k (no cache
    state), which selects the same blocks.
    """

    name = "infllmv2"
    aliases = ("infllm_v2",)
    paper = "Zhao et al., InfLLM-V2, 2025"
    pattern = ("per token: mean-pooled keys at two granularities, compressed-LSE scores, max-pooled blocks, "
               "init + local blocks forced, top blocks; dense below the switch length")
    params_struct = _core.InfLLMv2Params
    capabilities = Capabilities(noncausal=False, mask_format="row_block")

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> RowBlockIndices:
        blocks = _core.estimate_infllmv2(q, k, causal, scale, self.cparams)
        dense = k.shape[2] < self.params["dense_len"]
        self.last_info = {"dense": dense, "blocks_per_row": int(blocks.shape[-1])}
        return RowBlockIndices(blocks, self.params["block_size"], k.shape[2], assume_sorted=True)


__all__ = ["InfLLMv2"]
