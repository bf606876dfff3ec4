"""TidalDecode: position-persistent sparse attention for decode.

Yang et al., "TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse
Attention", ICLR 2025; the selection is ``_core.estimate_tidaldecode``
(cpp/src/estimators/tidaldecode.cpp) with the parameters of ``_core.TidalDecodeParams``; the
layer roles are a :class:`spattn.LayerPlan` (``LayerPlan.tidal``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from ..cache import KVCache
from ..layer_plan import LayerPlan
from ..masks import TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register


@register
class TidalDecode(CacheDecode, Method):
    """TidalDecode's decode-time selection, as the official reference path computes it
    (DerrickYLJ/TidalDecode, HEAD d67a1bd, ``src/tidal_build/modify_llama.py``
    ``llama_tidal_attention_forward``; the mask hand-off of ``src/models/llama_tidaldecoding.py``):

    * layers below ``sparse_layer_start`` (2) attend every key;
    * at the token-selection layers (``sparse_layer_start`` and ``correction_layer``, 13 in the
      official scripts) the layer attends every key and, from the same exact logits, each query
      head h keeps its top ``min(N, top_k)`` positions (heads of a GQA group choose
      independently; nothing forced: no sink, no recent window);
    * every other layer attends, per query head h, the positions head h chose at the latest
      selection layer of the same step (the token-sparse kernel over the cache).

    The roles are ``LayerPlan.tidal(sparse_layer_start, correction_layer)``; pass
    ``layer_plan=`` for another one (a ``"sparse"`` layer selects and attends its own top-k).
    Decode over a cache runs the layers of a step in order: ``m(q, cache, layer=i)`` for i = 0,
    1, ... after the step's append (the selection is kept on the :class:`spattn.KVCache`). Prefill
    (Nq > 1) is dense, as official. On plain arrays ``m(q, k, v)`` / ``estimate(q, k)`` select and
    attend the top-k of that call (the layer plan applies to cache calls only).

    Parameters
    ----------
    top_k : int, default 256
        Tokens per query head (``enable_tidal`` default; the demo passes 128, LongBench 4096).
    sparse_layer_start : int, default 2
    correction_layer : int, default 13
        The official scripts' re-selection layer (the function default is 9); <= sparse_layer_start:
        no re-selection.
    statistical_topk : bool, default False
        Keep the positions above the statistical top-k threshold (:func:`spattn.statistical_topk`)
        instead of the exact top-k. Not official.
    layer_plan : spattn.LayerPlan or dict, optional
        Overrides the plan built from the two layer parameters.

    Notes
    -----
    Deviations: the logits are float32 SIMD products, unscaled (the 1/sqrt(D) factor does not
    change the order; official: model dtype); ties go to the lower position (torch.topk leaves them
    unspecified); a NaN logit ranks first (as torch.topk). The efficiency prototype of the official
    repository (page size 1, the newest token forced, H_q == H_kv, batch 1) is not reproduced.
    """

    name = "tidaldecode"
    paper = "Yang et al., TidalDecode, ICLR 2025"
    pattern = "decode: per-head top-k of exact q.k at two selection layers, positions reused by head in the others"
    params_struct = _core.TidalDecodeParams
    extra_defaults = {"layer_plan": None}
    capabilities = Capabilities(mask_format="token")

    def _default_plan(self) -> LayerPlan:
        return LayerPlan.tidal(self.params["sparse_layer_start"], self.params["correction_layer"])

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> TokenIndices:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        idx = _core.estimate_tidaldecode(q, k, Nk, self.cparams)
        return TokenIndices(idx, 1, Nk, assume_sorted=True)

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        kb, _, n = cache.buffers(layer)
        idx = _core.estimate_tidaldecode(q, kb, n, self.cparams)
        return TokenIndices(idx, 1, n, assume_sorted=True)


__all__ = ["TidalDecode"]
