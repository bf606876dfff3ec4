"""NOSA: native and offloadable sparse attention (InfLLM-V2 selection with a locality constraint).

Huang et al., "NOSA: Native and Offloadable Sparse Attention", arXiv 2510.13602; the selection is
``_core.estimate_nosa`` (cpp/src/estimators/nosa.cpp) with the parameters of
``_core.NOSAParams``; attention runs on the row-block sparse kernel
(:func:`spattn.row_block_sparse_attention`), with the eviction scores as a per-key logit bias at
prefill.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import numpy as np

from .. import _core
from .._validation import as_causal, check_qkv
from ..cache import KVCache
from ..kernels import row_block_sparse_attention
from ..masks import RowBlockIndices, TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register
from .infllmv2 import InfLLMv2Pools, block_positions


def _softplus(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.softplus (beta 1, threshold 20: x itself above 20)."""
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


class NOSAPools(InfLLMv2Pools):
    """NOSA's decode state on one cache layer: the kernel_size / kernel_stride mean-pooled keys
    (k1 only; the lse runs over them) and the per-token eviction scores cis (B, Hkv, capacity),
    computed once per appended token from its values (cis of token t reads V[t] only)."""

    reads_values = True

    def __init__(self, kernel_size: int, kernel_stride: int, scores: Callable[[np.ndarray], np.ndarray]):
        super().__init__(kernel_size, kernel_stride, coarse=False)
        self.scores = scores
        self.cis: Optional[np.ndarray] = None

    def update(self, k_buffer: np.ndarray, start: int, stop: int, v_buffer: Optional[np.ndarray] = None) -> None:
        super().update(k_buffer, start, stop)
        if v_buffer is None:
            raise TypeError("NOSAPools.update needs the value buffer (the eviction scores read the values)")
        cap = k_buffer.shape[2]
        if self.cis is None or self.cis.shape[2] < cap:
            grown = np.zeros(k_buffer.shape[:2] + (cap,), np.float32)
            if self.cis is not None and start > 0:
                grown[:, :, :start] = self.cis[:, :, :start]
            self.cis = grown
        if stop > start:
            self.cis[:, :, start:stop] = self.scores(v_buffer[:, :, start:stop])


@register
class NOSA(CacheDecode, Method):
    """NOSA's block selection, as thunlp/NOSA's proxy model (HEAD 94d5f75,
    ``benchmarks/Efficiency/proxy_modeling_nosa.py::compressed_attention``, ``cis_pooling.py``).

    Per query token t (qb = t // block_size) and kv head:

    1. query-aware block scores: InfLLM-V2's stage 1 with k = v = the mean-pooled keys
       (``kernel_size`` / ``kernel_stride``; so the lse runs over those keys), group-summed,
       max-pooled to blocks with the init and local blocks (``qb - local_blocks <= b <= qb``)
       forced to +inf (see :class:`spattn.methods.infllmv2.InfLLMv2`);
    2. query-agnostic block scores from the per-token eviction scores
       ``cis[t, h] = A_h softplus(delta(concat_h V[t, h, :]))_h``: means over the same complete
       windows (``nosa_mean_pooling``), the same max pooling and forcing, blocks past qb -inf;
    3. locality constraint: the top ``min(init_blocks + local_blocks + select_blocks, nblocks)``
       query-aware blocks get +inf in the query-agnostic score, and its top ``min(topk,
       nblocks)`` blocks (ties to the lower index), sorted, ids > qb -> -1, are attended, shared
       by the query heads of the group.

    Attention: at prefill (Nq > 1) softmax(q.k / sqrt(D) + cis) over the selected keys (the
    proxy's two passes with V scaled by e^cis and a value of e^cis for the denominator); at decode
    (Nq == 1) plain attention over them, as the proxy's decode branch.

    Parameters
    ----------
    kernel_size, kernel_stride, block_size, init_blocks : int, default 32, 16, 64, 1
    window_size : int, default 1024
        local_blocks = window_size // block_size (16).
    topk : int, default 64
        Blocks in all (not + local as InfLLM-V2).
    select_blocks : int, default 16
        Query-aware blocks kept beyond init + local.
    dense_len : int, default 0
        Dense below this many keys (the proxy model: always sparse).
    A : array (Hkv,), optional
        The eviction head's scale; None: zeros (the official initialisation, so cis = 0).
    delta_weight, delta_bias : arrays (Hkv, Hkv * Dv) and (Hkv,), optional
        The eviction head's linear layer ``delta``; None: zeros.

    Decode over a :class:`spattn.KVCache` (``m(q, cache, layer=i)`` / ``select(q, cache,
    layer=i)`` after appending the step's k / v): the pooled keys and the per-token eviction
    scores live on the cache (:class:`NOSAPools`, updated per append), the selection is
    ``_core.estimate_nosa_pooled`` (equal to the selection on arrays) and the selected blocks are
    attended without the bias (the proxy's decode branch) by the token-sparse kernel, in place.
    ``dense_layers`` / ``layer_plan`` as the other decode methods.

    The locality the constraint is meant to raise (the blocks a step keeps from the previous
    one) is ``mask.row_overlap()`` of the selection.

    Notes
    -----
    Deviations: float32 scores (official bf16), ties to the lower index (torch.topk on CUDA);
    ``estimate`` without ``v`` uses cis = 0; kernel_size / kernel_stride other than 32 / 16 are
    accepted (the official pooling asserts them). The HF NOSA model code and the NOSI inference
    package were not available: whether the trained model uses the bias at decode is not
    confirmed (the proxy's decode branch does not).
    """

    name = "nosa"
    paper = "Huang et al., NOSA, 2025"
    pattern = ("per token: InfLLM-V2 query-aware blocks (init + local + select) united with the blocks of highest "
               "query-agnostic eviction score, top-k in all")
    params_struct = _core.NOSAParams
    extra_defaults = {"A": None, "delta_weight": None, "delta_bias": None, "dense_layers": 0, "layer_plan": None}
    capabilities = Capabilities(noncausal=False, mask_format="row_block", value_inputs=True)

    def _check_params(self) -> None:
        super()._check_params()
        for name, ndim in (("A", 1), ("delta_weight", 2), ("delta_bias", 1)):
            val = self.params.get(name)
            if val is None:
                continue
            arr = np.asarray(val)
            if not np.issubdtype(arr.dtype, np.floating) or arr.ndim != ndim or not np.all(np.isfinite(arr)):
                raise ValueError(f"nosa: {name} must be a finite float array with {ndim} dimension(s), got "
                                 f"dtype {arr.dtype}, shape {arr.shape}")
            self.params[name] = arr.astype(np.float32)

    def eviction_scores(self, v) -> np.ndarray:
        """cis (B, Hkv, Nk) float32 = A_h softplus(delta(concat_h V[t, h, :]))_h per token t."""
        v = np.asarray(v, np.float32)
        B, Hkv, Nk, Dv = v.shape
        A, W, bias = self.params["A"], self.params["delta_weight"], self.params["delta_bias"]
        if A is None:
            return np.zeros((B, Hkv, Nk), np.float32)
        if A.shape != (Hkv,):
            raise ValueError(f"nosa: A must have shape (Hkv,) = ({Hkv},), got {A.shape}")
        if W is None:
            W = np.zeros((Hkv, Hkv * Dv), np.float32)
        if W.shape != (Hkv, Hkv * Dv):
            raise ValueError(f"nosa: delta_weight must have shape (Hkv, Hkv * Dv) = ({Hkv}, {Hkv * Dv}), got {W.shape}")
        if bias is not None and bias.shape != (Hkv,):
            raise ValueError(f"nosa: delta_bias must have shape (Hkv,) = ({Hkv},), got {bias.shape}")
        x = v.transpose(0, 2, 1, 3).reshape(B, Nk, Hkv * Dv)  # value_states.transpose(1, 2).flatten(2, 3)
        dt = x @ W.T + (0 if bias is None else bias)
        return np.ascontiguousarray((A * _softplus(dt)).transpose(0, 2, 1), dtype=np.float32)

    def _estimate(self, q, k, causal, scale, v=None) -> RowBlockIndices:
        cis = np.zeros(k.shape[:3], np.float32) if v is None else self.eviction_scores(v)
        blocks = _core.estimate_nosa(q, k, cis, causal, scale, self.cparams)
        self.last_info = {"dense": k.shape[2] < self.params["dense_len"], "blocks_per_row": int(blocks.shape[-1])}
        return RowBlockIndices(blocks, self.params["block_size"], k.shape[2], assume_sorted=True)

    # ------------------------------------------------------------------ decode over a KVCache
    def _weights_key(self) -> str:
        h = hashlib.sha1()
        for name in ("A", "delta_weight", "delta_bias"):
            val = self.params.get(name)
            h.update(b"-" if val is None else np.ascontiguousarray(val, np.float32).tobytes() + str(val.shape).encode())
        return h.hexdigest()

    def pools(self, cache: KVCache, layer: int) -> NOSAPools:
        """This method's decode state on `layer` of `cache` (registered on first use; keyed by
        the pooling and the eviction head's weights)."""
        w, s = self.params["kernel_size"], self.params["kernel_stride"]
        return cache.state(layer, ("nosa", w, s, self._weights_key()), lambda: NOSAPools(w, s, self.eviction_scores))

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        kb, _, n = cache.buffers(layer)
        pools = self.pools(cache, layer)
        blocks = _core.estimate_nosa_pooled(q, pools.pooled(0, kb), pools.counts[0], pools.cis, n, None, self.cparams)
        self.last_info = {"dense": n < self.params["dense_len"], "blocks_per_row": int(blocks.shape[-1])}
        return block_positions(blocks, self.params["block_size"], n, q.shape[1])

    def __call__(self, q, k, v=None, *, layer: Optional[int] = None, causal: bool = False,
                 scale: Optional[float] = None, return_lse: bool = False, q_gate=None, k_gate=None):
        """Select (with the eviction scores of v), then attend the selected blocks: with cis as a
        per-key logit bias at prefill, without at decode (Nq == 1). ``m(q, cache, layer=i)``:
        decode over a :class:`spattn.KVCache` (see the class)."""
        if isinstance(k, KVCache):
            return CacheDecode.__call__(self, q, k, v, layer=layer, causal=causal, scale=scale, return_lse=return_lse)
        if layer is not None:
            raise TypeError("layer applies to a call over a spattn.KVCache, not to arrays")
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        mask = self.estimate(q, k, causal=as_causal(causal), scale=scale, v=v)
        bias = self.eviction_scores(v) if q.shape[2] > 1 and self.params["A"] is not None else None
        self.last_info["mask"] = mask  # what the transformers backend reads after a value-input call
        return row_block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse,
                                          key_bias=bias)


__all__ = ["NOSA"]
