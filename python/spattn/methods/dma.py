"""Dynamic Mask Attention (DMA): a value-derived per-key bias, top-w keys per query among the
causal keys, the bias also added to the logits.

Shi et al., "Trainable Dynamic Mask Sparse Attention", arXiv 2508.02124; written from the official
code, SmallDoges/flash-dmattn (``flash_sparse_attn``, HEAD f024c28):
``examples/modeling/modeling_doge.py`` ``DogeAttention.forward`` (the bias),
``flash_sparse_attn/utils/mask.py`` ``topk_mask`` / ``create_mask`` (the selection) and
``benchmarks/forward_equivalence.py`` ``dynamic_mask_attention_python`` (the attention).
Attention runs on the token-sparse kernel with the bias as its per-key logit bias
(:func:`spattn.token_sparse_attention` ``key_bias=``); no Nq x Nk buffer.
"""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from .._validation import as_causal, check_positive_int, check_qkv
from ..kernels import token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register


def _softplus(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.softplus (beta 1, threshold 20: x itself above 20)."""
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def prefix_topw(bias: np.ndarray, w: int, limits: np.ndarray) -> np.ndarray:
    """Per query, the top-`w` keys by `bias` among keys 0 .. limit (ascending, -1 padded).

    bias : (Nk,) one kv head's per-key bias; limits : (Nq,) ascending last visible key per query
    (-1: none). Incremental (the key set of a longer prefix is the shorter one's plus the new key,
    minus the weakest when more than w): one min-heap of w keys gives each key the prefix length
    at which it is evicted; query p keeps the keys j <= p not evicted by p. O(Nk log w) for the
    heap, O(Nq w) for the rows. Ties go to the lower key index (the later key is evicted first).
    """
    nk = bias.shape[0]
    evict = np.full(nk, np.iinfo(np.int64).max, np.int64)  # first prefix end (key position) without the key
    heap: list = []
    for j in range(nk):
        heapq.heappush(heap, (float(bias[j]), -j))
        if len(heap) > w:
            _, mj = heapq.heappop(heap)
            evict[-mj] = j
    K = max(1, min(w, nk))
    rows = np.full((limits.shape[0], K), -1, np.int32)
    for i, p in enumerate(limits):
        if p < 0:
            continue
        kept = np.flatnonzero(evict[:p + 1] > p)
        rows[i, :kept.size] = kept
    return rows


@register
class DMA(Method):
    """Dynamic Mask Attention, as the official ``DogeAttention`` + ``topk_mask``.

    1. Bias per key and kv head from the values (query-independent):
       ``dt = dt_proj(concat_h V)`` (B, Nk, Hkv), ``bias[b, h, j] = A_h softplus(dt[b, j, h])``.
    2. Selection: query i (position p = i + Nk - Nq, bottom-right aligned) keeps the top
       ``window_size`` keys by bias among its visible keys (all keys when not causal); a row with
       fewer visible keys keeps them all (so Nk <= window_size is dense). The selection of a
       longer prefix extends the shorter one's (decode is incremental: :func:`prefix_topw`).
    3. Attention ``softmax(q.k scale + bias)`` over the kept keys; the query heads of a GQA group
       share their kv head's bias and keys.

    Parameters
    ----------
    window_size : int, default 2048
        Keys kept per query (DogeConfig's default).
    A : array (Hkv,), optional
        Per-head scale of the bias. None: zeros, the constructor's value (so bias = 0 and the
        selection keeps the first ``window_size`` visible keys by the tie rule).
    dt_proj_weight : array (Hkv, Hkv * Dv), optional
        ``dt_proj`` (torch Linear layout, out x in). None: zeros.
    dt_proj_bias : array (Hkv,), optional
        Its bias (``config.attention_bias``, False in Doge). None: no bias.

    Notes
    -----
    Deviations: float32 (official bf16 / fp16 kernels); top-k ties go to the lower key index
    (``torch.topk`` leaves them unspecified); the optional ``block_size`` majority smoothing and
    the ``relu_mask`` variant are not provided; ``estimate`` without ``v`` uses bias = 0. Non-causal
    calls keep one top-w list for every query (group_size = Nq). Weights are inputs: the paper trains
    A and dt_proj end to end with the language model (no training here).
    """

    name = "dma"
    aliases = ("dynamic_mask_attention",)
    paper = "Shi et al., Trainable Dynamic Mask Sparse Attention (DMA), 2025"
    pattern = "per query: top-w keys by a value-derived per-key bias A*softplus(dt_proj(V)) among causal keys; bias added"
    extra_defaults = {"window_size": 2048, "A": None, "dt_proj_weight": None, "dt_proj_bias": None}
    capabilities = Capabilities(mask_format="token", value_inputs=True, own_output=True)

    def _check_params(self) -> None:
        self.params["window_size"] = check_positive_int(self.params["window_size"], "window_size")
        for name, ndim in (("A", 1), ("dt_proj_weight", 2), ("dt_proj_bias", 1)):
            val = self.params.get(name)
            if val is None:
                continue
            arr = np.asarray(val)
            if not np.issubdtype(arr.dtype, np.floating) or arr.ndim != ndim or not np.all(np.isfinite(arr)):
                raise ValueError(f"dma: {name} must be a finite float array with {ndim} dimension(s), got "
                                 f"dtype {arr.dtype}, shape {arr.shape}")
            self.params[name] = arr.astype(np.float32)

    def key_bias(self, v) -> np.ndarray:
        """The per-key bias (B, Hkv, Nk) float32 = A_h softplus(dt_proj(concat_h V))_h."""
        v = np.asarray(v, np.float32)
        B, Hkv, Nk, Dv = v.shape
        A, W, b = self.params["A"], self.params["dt_proj_weight"], self.params["dt_proj_bias"]
        if A is None:
            return np.zeros((B, Hkv, Nk), np.float32)
        if A.shape != (Hkv,):
            raise ValueError(f"dma: A must have shape (Hkv,) = ({Hkv},), got {A.shape}")
        if W is None:
            W = np.zeros((Hkv, Hkv * Dv), np.float32)
        if W.shape != (Hkv, Hkv * Dv):
            raise ValueError(f"dma: dt_proj_weight must have shape (Hkv, Hkv * Dv) = ({Hkv}, {Hkv * Dv}), "
                             f"got {W.shape}")
        if b is not None and b.shape != (Hkv,):
            raise ValueError(f"dma: dt_proj_bias must have shape (Hkv,) = ({Hkv},), got {b.shape}")
        x = v.transpose(0, 2, 1, 3).reshape(B, Nk, Hkv * Dv)  # value_states.transpose(1, 2).reshape(B, Nk, -1)
        dt = x.astype(np.float64) @ W.T.astype(np.float64) + (0 if b is None else b)
        return np.ascontiguousarray((A * _softplus(dt)).transpose(0, 2, 1), dtype=np.float32)

    def select(self, bias: np.ndarray, Hq: int, Nq: int, causal: bool) -> TokenIndices:
        """The kept keys of every query as TokenIndices (B, Hq, G, K) from the bias (B, Hkv, Nk)."""
        B, Hkv, Nk = bias.shape
        w = self.params["window_size"]
        if causal:
            limits, group = np.arange(Nq) + (Nk - Nq), 1
        else:
            limits, group = np.array([Nk - 1]), max(Nq, 1)
        rows = [[prefix_topw(bias[b, h], w, limits) for h in range(Hkv)] for b in range(B)]
        idx = np.repeat(np.asarray(rows, np.int32), Hq // Hkv, axis=1)  # a group shares its kv head's keys
        return TokenIndices(idx, group, Nk, assume_sorted=True)

    def _estimate(self, q, k, causal, scale, v=None) -> TokenIndices:
        bias = np.zeros(k.shape[:3], np.float32) if v is None else self.key_bias(v)
        return self.select(bias, q.shape[1], q.shape[2], causal)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Bias from v, top-w selection, then softmax(q.k scale + bias) over the kept keys."""
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        causal = as_causal(causal)
        mask = self.estimate(q, k, causal=causal, scale=scale, v=v)
        bias = self.key_bias(v)
        self.last_info = {"mask": mask}
        return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse,
                                      key_bias=bias if self.params["A"] is not None else None)


__all__ = ["DMA", "prefix_topw"]
