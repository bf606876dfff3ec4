"""What decode methods over a :class:`spattn.KVCache` share: the layer plan
(:class:`spattn.LayerPlan`: by default the first ``dense_layers`` layers dense, the others
sparse; any method takes ``layer_plan=`` for select / reuse layers), the checks of a query
against a cache layer, and the two calls ``select(q, cache, layer=i)`` and ``m(q, cache,
layer=i)`` (``m(q, k, v)`` on arrays stays the generic Method call). A method implements
``_select_cache(q, cache, layer)`` for a decode query (Nq == 1); the plan decides what is done
with it: attended (``"sparse"``), stored for the layers above while the layer attends every
key (``"select"``), or not computed (``"dense"``, ``"reuse"``: the stored positions of the
latest select layer, by query head)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._validation import as_causal, as_float_array, as_scale, check_int
from ..cache import KVCache
from ..kernels import attention, token_sparse_attention
from ..layer_plan import LayerPlan
from ..masks import TokenIndices


class CacheDecode:
    """Mixin placed before :class:`Method` in a decode method's bases."""

    #: the positions the last call over a cache attended (None: every key)
    last_selection: Optional[TokenIndices] = None

    @staticmethod
    def _dense_indices(B: int, Hq: int, Nq: int, Nk: int) -> TokenIndices:
        """Every key for one group of all Nq queries (prefill and dense layers run dense; the
        token-sparse kernel applies the causal rule)."""
        idx = np.broadcast_to(np.arange(Nk, dtype=np.int32), (B, Hq, 1 if Nq > 0 else 0, Nk))
        return TokenIndices(idx, max(Nq, 1), Nk, assume_sorted=True)

    def _default_plan(self) -> LayerPlan:
        return LayerPlan.first_dense(self.params["dense_layers"])

    def layer_plan(self) -> LayerPlan:
        """The plan in force: the ``layer_plan`` parameter, else the method's default (the first
        ``dense_layers`` layers dense, the others sparse)."""
        plan = self.params.get("layer_plan")
        return self._default_plan() if plan is None else LayerPlan.coerce(plan)

    def _check_params(self) -> None:
        super()._check_params()
        plan = self.params.get("layer_plan")
        if plan is not None:
            self.params["layer_plan"] = LayerPlan.coerce(plan)

    def is_dense_layer(self, layer: int) -> bool:
        """Whether `layer` attends every key under the layer plan (``"dense"`` or ``"select"``)."""
        return self.layer_plan().role(check_int(layer, "layer")) in ("dense", "select")

    def _selection_key(self):
        return ("selection", self.name)

    def _plan_step(self, q: np.ndarray, cache: KVCache, layer: int, **select_kw) -> Optional[TokenIndices]:
        """The positions a decode query attends on `layer` (None: every key), after doing what
        the plan asks (storing a select layer's selection); `select_kw` go to _select_cache."""
        role = self.layer_plan().role(layer)
        if role == "dense":
            return None
        if role == "reuse":
            idx = cache.stored_selection(self._selection_key(), layer)
            if idx.indices.shape[:2] != q.shape[:2]:
                raise ValueError(f"layer {layer} reuses a selection for (B, Hq) = {idx.indices.shape[:2]}, "
                                 f"but q has shape {q.shape}")
            return idx
        idx = self._select_cache(q, cache, layer, **select_kw)
        if role == "select":
            cache.store_selection(self._selection_key(), layer, idx)
            return None
        return idx

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

    def select(self, q, cache: KVCache, *, layer: int = 0, **select_kw) -> TokenIndices:
        """The key positions attended by q (B, Hq, 1, D) on `layer` of `cache` (after the step's
        append) under the layer plan: every key on a dense or select layer (a select layer also
        stores the method's selection for the reuse layers above), the stored positions on a
        reuse layer, else the method's selection. TokenIndices (B, Hq, 1, K), group_size 1.
        `select_kw`: a method's extra selection inputs (SeerAttention-R's gate inputs)."""
        q = self._check_cache_query(q, cache, layer)
        if q.shape[2] != 1:
            raise ValueError(f"select is a decode step: q must hold one query (Nq == 1), got shape {q.shape}")
        idx = self._plan_step(q, cache, layer, **select_kw)
        if idx is None:
            return self._dense_indices(q.shape[0], q.shape[1], 1, cache.length(layer))
        return idx

    def __call__(self, q, k, v=None, *, layer: Optional[int] = None, causal: bool = False,
                 scale: Optional[float] = None, return_lse: bool = False, **select_kw):
        """``m(q, cache, layer=i)``: attention of q over `layer` of a :class:`spattn.KVCache`
        (decode, Nq == 1: the positions the layer plan gives, see :meth:`select`; Nq > 1: dense,
        causal bottom-right when `causal`), reading the cache's buffers in place; ``m(q, k, v)``: the
        generic call on arrays (estimate, then the token-sparse kernel)."""
        if not isinstance(k, KVCache):
            if layer is not None:
                raise TypeError("layer applies to a call over a spattn.KVCache, not to arrays")
            return super().__call__(q, k, v, causal=causal, scale=scale, return_lse=return_lse, **select_kw)
        if v is not None:
            raise TypeError("m(q, cache, layer=i) takes no v: the values are the cache's")
        cache, layer = k, check_int(0 if layer is None else layer, "layer")
        causal, scale = as_causal(causal), as_scale(scale)
        q = self._check_cache_query(q, cache, layer)
        kb, vb, n = cache.buffers(layer)
        idx = None if q.shape[2] != 1 else self._plan_step(q, cache, layer, **select_kw)
        self.last_selection = idx
        if idx is None:
            return attention(q, kb, vb, kv_len=n, causal=causal, scale=scale, return_lse=return_lse)
        return token_sparse_attention(q, kb, vb, idx, kv_len=n, scale=scale, return_lse=return_lse)
