"""What decode methods over a :class:`spattn.KVCache` share: the layer plan (the first
``dense_layers`` layers dense), the checks of a query against a cache layer, and the two calls
``select(q, cache, layer=i)`` and ``m(q, cache, layer=i)`` (``m(q, k, v)`` on arrays stays the
generic Method call). A method implements ``_select_cache(q, cache, layer)`` for a sparse layer
and a decode query (Nq == 1)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._validation import as_causal, as_float_array, as_scale, check_int
from ..cache import KVCache
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices


class CacheDecode:
    """Mixin placed before :class:`Method` in a decode method's bases."""

    @staticmethod
    def _dense_indices(B: int, Hq: int, Nq: int, Nk: int) -> TokenIndices:
        """Every key for one group of all Nq queries (prefill and dense layers run dense; the
        token-sparse kernel applies the causal rule)."""
        idx = np.broadcast_to(np.arange(Nk, dtype=np.int32), (B, Hq, 1 if Nq > 0 else 0, Nk))
        return TokenIndices(idx, max(Nq, 1), Nk, assume_sorted=True)

    def is_dense_layer(self, layer: int) -> bool:
        """Whether `layer` runs dense under the layer plan (layers < dense_layers)."""
        return check_int(layer, "layer") < self.params["dense_layers"]

    def _check_cache_query(self, q, cache, layer: int) -> np.ndarray:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a spattn.KVCache, got {type(cache).__name__}")
        q = as_float_array(q, "q")
        kb, _, _ = cache.buffers(layer)
        if q.ndim != 4:
            raise ValueError(f"q must have shape (B, Hq, Nq, D), got {q.shape}")
        B, Hkv, _, D = kb.shape
        if q.shape[0] != B or q.shape[3] != D or q.shape[1] % Hkv != 0 or q.shape[1] == 0:
            raise ValueError(f"q must have shape (B={B}, Hq (a multiple of Hkv={Hkv}), Nq, D={D}) for layer {layer} "
                             f"of the cache, got {q.shape}")
        return q

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        raise TypeError(f"{type(self).__name__} must define _select_cache()")  # abstract

    def select(self, q, cache: KVCache, *, layer: int = 0) -> TokenIndices:
        """The key positions attended by q (B, Hq, 1, D) on `layer` of `cache` (after the step's
        append): every key on a dense layer, else the method's selection. TokenIndices
        (B, Hq, 1, K), group_size 1."""
        q = self._check_cache_query(q, cache, layer)
        if q.shape[2] != 1:
            raise ValueError(f"select is a decode step: q must hold one query (Nq == 1), got shape {q.shape}")
        if self.is_dense_layer(layer):
            return self._dense_indices(q.shape[0], q.shape[1], 1, cache.length(layer))
        return self._select_cache(q, cache, layer)

    def __call__(self, q, k, v=None, *, layer: Optional[int] = None, causal: bool = False,
                 scale: Optional[float] = None, return_lse: bool = False):
        """``m(q, cache, layer=i)``: attention of q over `layer` of a :class:`spattn.KVCache`
        (decode, Nq == 1: the selected tokens; dense layers and Nq > 1: dense, causal
        bottom-right when `causal`), reading the cache's buffers in place; ``m(q, k, v)``: the
        generic call on arrays (estimate, then the token-sparse kernel)."""
        if not isinstance(k, KVCache):
            if layer is not None:
                raise TypeError("layer applies to a call over a spattn.KVCache, not to arrays")
            return super().__call__(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
        if v is not None:
            raise TypeError("m(q, cache, layer=i) takes no v: the values are the cache's")
        cache, layer = k, check_int(0 if layer is None else layer, "layer")
        causal, scale = as_causal(causal), as_scale(scale)
        q = self._check_cache_query(q, cache, layer)
        kb, vb, n = cache.buffers(layer)
        if q.shape[2] != 1 or self.is_dense_layer(layer):
            return attention(q, kb, vb, kv_len=n, causal=causal, scale=scale, return_lse=return_lse)
        idx = self._select_cache(q, cache, layer)
        return token_sparse_attention(q, kb, vb, idx, kv_len=n, scale=scale, return_lse=return_lse)
