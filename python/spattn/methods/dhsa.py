"""DHSA: dynamic hierarchical sparse attention (chunk-level scores upsampled to a token budget).

Xiong et al., "Long-Context Modeling with Dynamic Hierarchical Sparse Attention for On-Device
LLMs", 2025 (arXiv 2510.24606), following the official legacy code (xiongsiheng/DHSA,
legacy/utils/helper.py: ``_obtain_dhsa_mask`` as ``dhsa_sdpa`` calls it). The estimator is
``_core.estimate_dhsa`` (cpp/src/estimators/dhsa.cpp) with its parameters in ``_core.DhsaParams``;
attention runs on the token-sparse kernel (the instruction queries on the dense one).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from .. import _core
from .._validation import check_qkv
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register


@register
class DHSA(Method):
    """DHSA's token mask, as the official ``dhsa_sdpa`` / ``_obtain_dhsa_mask`` build it; one key
    list per block of ``block_size`` queries, shared by all heads.

    1. The last ``instruction_tokens`` queries (the prompt's trailing instruction) attend every
       key (dense); the others form query blocks of ``block_size`` (the last one padded).
    2. q and k are averaged over heads (k over the kv heads: the official mean after repeat_kv).
       Block representation: (sum of the block's rows) / block_size * sqrt(real rows)
       (``avgpool_norm``) or the plain padded mean (``length_norm=False``: ``avgpool``). Chunk
       representation from the chunk boundaries: mean over the chunk times sqrt(its length)
       (the "length-normalised aggregation", sum / sqrt(len)) or the mean.
    3. Chunk scores ``r_q . r_c`` (no scale, no softmax), upsampled: every key of a chunk gets
       its chunk's score.
    4. Per block, keys before the block's end (block-level causality); ``T = min(token_budget, N)``
       slots: the last ``local_tokens`` allowed keys, the top-scoring other allowed keys, padding
       with key N - 1; then dhsa_sdpa puts keys ``0 .. global_tokens - 1`` into the first
       ``global_tokens`` slots of the sorted list (replacing its smallest entries). The kernel
       applies token-level causality.

    ``estimate`` returns TokenIndices with ``group_size = block_size``; instruction groups list
    their whole causal prefix. ``last_info["blocks"]`` holds the per-block key lists
    (B, blocks, K) and ``last_info["q_len"]`` the number of sparse queries.

    Parameters
    ----------
    block_size : int, default 128
    chunk_size : int, default 32
        Fixed key chunks used when ``boundaries`` is None (the current official code's key blocks).
    token_budget : int, default 2048
        The official ``budget_prefill`` (LongBench scripts).
    local_tokens : int, default 128
    global_tokens : int, default 128
    instruction_tokens : int, default 64
        Trailing queries run dense (the official fallback when the prompt's instruction length is
        unknown). 0: none (the official code would instead run every query dense on 0).
    length_norm : bool, default True
    boundaries : array_like of int, optional
        Chunk boundaries ``0 = b_0 <= b_1 <= ... <= b_C = N``, shape (C + 1,) for every batch
        entry or (B, C + 1): the output of DHSA's trained boundary predictor
        (``predict_boundaries``), which is not ported. None: fixed chunks of ``chunk_size``.

    Notes
    -----
    Deviations from the official code: ties between keys of one chunk at the budget cut go to the
    lower positions (torch.topk picks among equal scores arbitrarily); each listed key counts once
    (the official gather counts the repeated entries of its slot list: the N - 1 padding, visible to
    no sparse query when instruction_tokens > 0, and the capped global keys, visible only to
    query block_size - 1 when block_size < global_tokens); sums in double; no sliding window (Gemma-2's
    local layers) and no max pooling. When ``N - instruction_tokens`` is not a multiple of
    ``block_size`` the query group holding both the last sparse queries and the first instruction
    queries lists the union of both rules (a superset for its sparse rows); ``__call__`` is exact
    (``capabilities.own_output``). With ``instruction_tokens > 0`` the mask rows are padded to N
    entries (the instruction groups hold whole prefixes). GQA: one mask for every head.
    Causal prefill only (Nq == Nk), as the official code.
    """

    name = "dhsa"
    paper = "Xiong et al., Long-Context Modeling with Dynamic Hierarchical Sparse Attention, 2025"
    pattern = "per query block: recent + global keys + top chunks by pooled score (token budget), shared by heads"
    params_struct = _core.DhsaParams
    extra_defaults = {"boundaries": None}
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="token", own_output=True)

    def _check_params(self) -> None:
        b = self.params["boundaries"]
        if b is None:
            return
        arr = np.asarray(b)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"dhsa: boundaries must be an integer array, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or arr.shape[-1] < 2:
            raise ValueError(f"dhsa: boundaries must have shape (C + 1,) or (B, C + 1) with C >= 1, got {arr.shape}")
        if arr.min() < 0 or arr.max() > np.iinfo(np.int32).max or np.any(np.diff(arr, axis=-1) < 0):
            raise ValueError("dhsa: boundaries must be non-decreasing int32 positions from 0 to N")
        self.params["boundaries"] = np.ascontiguousarray(arr, dtype=np.int32)

    def _boundaries(self, B: int) -> Optional[np.ndarray]:
        b = self.params["boundaries"]
        if b is None or b.ndim == 2:
            return b
        return np.ascontiguousarray(np.broadcast_to(b, (B, b.shape[0])))

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, N = q.shape[0], q.shape[1], q.shape[2]
        blocks, q_len = _core.estimate_dhsa(q, k, causal, self.cparams, self._boundaries(B))
        bs = self.params["block_size"]
        groups = math.ceil(N / bs)
        nb = blocks.shape[1]
        first_dense = q_len // bs  # groups from here on hold instruction queries (the first may be mixed)
        width = blocks.shape[2] if q_len == N else max(blocks.shape[2], min(N, groups * bs))
        rows = np.full((B, groups, width), -1, np.int32)
        rows[:, :nb, : blocks.shape[2]] = blocks
        for g in range(first_dense if q_len < N else groups, groups):
            end = min(N, (g + 1) * bs)
            if g < nb:  # mixed group: the sparse list plus every key the instruction rows see
                for b in range(B):
                    keys = np.union1d(blocks[b, g][blocks[b, g] >= 0], np.arange(end))
                    rows[b, g, : keys.size] = keys
            else:
                rows[:, g, :end] = np.arange(end, dtype=np.int32)
        mask = TokenIndices(np.broadcast_to(rows[:, None], (B, Hq, groups, width)), bs, N, assume_sorted=True)
        self.last_info = {"mask": mask, "blocks": blocks, "q_len": q_len}
        return mask

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Estimate, then the sparse queries on the token-sparse kernel with their block lists
        and the instruction queries on the dense kernel (as dhsa_sdpa)."""
        mask = self.estimate(q, k, causal=causal, scale=scale, q_gate=q_gate, k_gate=k_gate)
        q_len = self.last_info["q_len"]
        N = mask.kv_len
        if q_len == N:
            out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        elif q_len == 0:
            out, lse = attention(q, k, v, causal=causal, scale=scale, return_lse=True)
        else:
            q, k, v = check_qkv(q, k, v)
            B, Hq = q.shape[:2]
            blocks = self.last_info["blocks"]
            sparse = np.where(blocks < q_len, blocks, -1)  # keys past q_len are hidden from every sparse query
            idx = TokenIndices(np.broadcast_to(sparse[:, None], (B, Hq) + blocks.shape[1:]),
                               self.params["block_size"], q_len, assume_sorted=True)
            out_s, lse_s = token_sparse_attention(q[:, :, :q_len], k[:, :, :q_len], v[:, :, :q_len], idx,
                                                  causal=causal, scale=scale, return_lse=True)
            out_d, lse_d = attention(q[:, :, q_len:], k, v, causal=causal, scale=scale, return_lse=True)
            out = np.concatenate([out_s, out_d], axis=2)
            lse = np.concatenate([lse_s, lse_d], axis=2)
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        blocks = self.last_info["blocks"]
        return {"mean_keys_per_block": float((blocks >= 0).sum(-1).mean()) if blocks.size else 0.0}


__all__ = ["DHSA"]
