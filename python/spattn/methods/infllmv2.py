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
from .._validation import check_int
from ..cache import KVCache
from ..masks import RowBlockIndices, TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register


class InfLLMv2Pools:
    """InfLLM-V2's compressed keys of one cache layer, as the model keeps them beside its decode
    cache: k1 (B, Hkv, capacity, D), the means of k[s j : s j + w] (w = kernel_size, s =
    kernel_stride), and k2 with 4w and 4s, for every complete window. Registered on a
    :class:`spattn.KVCache`, it is updated on every append: only the windows completed by the new
    rows are pooled (``_core.mean_pooled_keys``, the same sums as the full pooling); its buffers
    double like the cache's."""

    def __init__(self, kernel_size: int, kernel_stride: int, coarse: bool = True):
        self.levels = [(check_int(kernel_size, "kernel_size", lo=1), check_int(kernel_stride, "kernel_stride", lo=1))]
        if coarse:  # k2 (NOSA keeps k1 only)
            self.levels.append((4 * self.levels[0][0], 4 * self.levels[0][1]))
        self.buffers = [None] * len(self.levels)
        self.counts = [0] * len(self.levels)
        self.kv_len = 0

    def update(self, k_buffer: np.ndarray, start: int, stop: int) -> None:
        """Rows [start, stop) of `k_buffer` (B, Hkv, capacity, D) were written (start is the
        previous length, or 0 to build from scratch)."""
        if start == 0:
            self.counts = [0] * len(self.levels)
        for lvl, (w, s) in enumerate(self.levels):
            old, new = self.counts[lvl], (stop - w) // s + 1 if stop >= w else 0
            if new > old:
                pooled = _core.mean_pooled_keys(k_buffer[:, :, s * old:s * (new - 1) + w], w, s)
                buf = self.buffers[lvl]
                if buf is None or buf.shape[2] < new:
                    grown = np.empty(k_buffer.shape[:2] + (max(new, 16 if buf is None else 2 * buf.shape[2]),)
                                     + k_buffer.shape[3:], np.float32)
                    if buf is not None:
                        grown[:, :, :old] = buf[:, :, :old]
                    self.buffers[lvl] = buf = grown
                buf[:, :, old:new] = pooled
            self.counts[lvl] = new
        self.kv_len = stop

    def pooled(self, lvl: int, like: np.ndarray) -> np.ndarray:
        """Level `lvl`'s buffer (an empty one shaped after `like` before the first window)."""
        buf = self.buffers[lvl]
        return np.zeros(like.shape[:2] + (0,) + like.shape[3:], np.float32) if buf is None else buf


@register
class InfLLMv2(CacheDecode, Method):
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
    dense_layers : int, default 0
        Layers ``0 .. dense_layers - 1`` run dense in decode over a cache (the model: none).
    layer_plan : spattn.LayerPlan or dict, optional
        The role of each layer in decode over a cache (default: the first ``dense_layers`` dense).

    Decode over a :class:`spattn.KVCache`: append the step's k / v first, then
    ``m(q, cache, layer=i)`` / ``select(q, cache, layer=i)``; the compressed keys k1 / k2 live on
    the cache (:class:`InfLLMv2Pools`, pooled once per completed window as the model's decode
    buffers), and the selected blocks are attended as key positions by the token-sparse kernel
    (the runs are read in place). A call over a cache with Nq > 1 is dense (the generic decode
    path); prefill runs on arrays, ``m(q, k, v, causal=True)``.

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
    extra_defaults = {"dense_layers": 0, "layer_plan": None}
    capabilities = Capabilities(noncausal=False, mask_format="row_block")

    def _check_params(self) -> None:
        super()._check_params()
        self.params["dense_layers"] = check_int(self.params["dense_layers"], "dense_layers", lo=0)

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> RowBlockIndices:
        blocks = _core.estimate_infllmv2(q, k, causal, scale, self.cparams)
        dense = k.shape[2] < self.params["dense_len"]
        self.last_info = {"dense": dense, "blocks_per_row": int(blocks.shape[-1])}
        return RowBlockIndices(blocks, self.params["block_size"], k.shape[2], assume_sorted=True)

    # ------------------------------------------------------------------ decode over a KVCache
    def pools(self, cache: KVCache, layer: int) -> InfLLMv2Pools:
        """This method's compressed keys on `layer` of `cache` (registered on first use)."""
        w, s = self.params["kernel_size"], self.params["kernel_stride"]
        return cache.state(layer, ("infllmv2", w, s), lambda: InfLLMv2Pools(w, s))

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        kb, _, n = cache.buffers(layer)
        pools = self.pools(cache, layer)
        blocks = _core.estimate_infllmv2_pooled(q, pools.pooled(0, kb), pools.counts[0], pools.pooled(1, kb),
                                                pools.counts[1], n, None, self.cparams)
        self.last_info = {"dense": n < self.params["dense_len"], "blocks_per_row": int(blocks.shape[-1])}
        return self.block_positions(blocks, n, q.shape[1])

    def block_positions(self, blocks: np.ndarray, kv_len: int, Hq: int) -> TokenIndices:
        """Decode block lists (B, Hkv, 1, K) as the key positions of those blocks (see
        :func:`block_positions`)."""
        return block_positions(blocks, self.params["block_size"], kv_len, Hq)


def block_positions(blocks: np.ndarray, block_size: int, kv_len: int, Hq: int) -> TokenIndices:
    """Decode block lists (B, Hkv, 1, K) as the key positions of those blocks (B, Hq, 1,
    K * block_size), ascending, -1 padded, each kv head's list repeated for its query heads."""
    bs = block_size
    B, Hkv, _, K = blocks.shape
    pos = blocks[..., None].astype(np.int64) * bs + np.arange(bs)
    pos = np.where((blocks[..., None] >= 0) & (pos < kv_len), pos, -1).reshape(B, Hkv, 1, K * bs)
    pos = np.repeat(pos, Hq // Hkv, axis=1)
    keep = pos >= 0  # valid positions first, in order (blocks ascend)
    order = np.argsort(~keep, axis=-1, kind="stable")
    return TokenIndices(np.take_along_axis(pos, order, axis=-1), 1, kv_len, assume_sorted=True)


__all__ = ["InfLLMv2", "InfLLMv2Pools", "block_positions"]
