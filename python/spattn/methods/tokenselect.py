"""TokenSelect: per-step token-level KV selection by per-head soft voting.

Wu et al., "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via
Dynamic Token-Level KV Cache Selection", 2024; the selection is ``_core.estimate_tokenselect``
(cpp/src/estimators/tokenselect.cpp) with the parameters of ``_core.TokenSelectParams``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from ..cache import KVCache
from ..masks import TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register


@register
class TokenSelect(CacheDecode, Method):
    """TokenSelect's decode-time selection, as the official code computes it (pzs19/TokenSelect,
    HEAD 8e1e97f, patcher/token_retrieval.py ``retrieval_indices`` / ``get_topk_tokens``, release
    configs):

    1. with N keys in the cache (the step's own included), every key is attended while
       ``n_init + top_k + n_local >= N``;
    2. otherwise the candidates ``[n_init, N - n_local)`` are scored per query head by the
       unscaled ``q_h . k_t``, softmax over the candidates, and the heads vote by summing their
       probabilities;
    3. optional max-pool smoothing of the votes (``kernel_size > 0``, stride 1, padding
       ``(k - 1) // 2``; an even kernel shortens the scores by one, as torch's does);
    4. the ``top_k`` best candidates, plus the ``n_init`` first and ``n_local`` newest keys: one
       ascending list shared by every head of the layer, attended by the token-sparse kernel.

    Every layer selects (``dense_layers`` 0, as official). Prefill (Nq > 1) runs dense here (the
    official code also selects per 512-token prefill chunk; not reproduced).

    Parameters
    ----------
    n_init, n_local, top_k : int, defaults 128, 512, 2048 (release configs)
    kernel_size : int, default 0 (off; the official config writes -1)
    gqa_interleave : bool, default False
        Score query head h against kv head h % Hkv, as the official Triton kernel does.
    dense_layers : int, default 0
    statistical_topk : bool, default False
        Select by the statistical top-k threshold (:func:`spattn.statistical_topk`; Spark
        Transformer) instead of the exact top-k: a variable count per head. Not official.
    layer_plan : spattn.LayerPlan or dict, optional
        The role of each layer (default: the first ``dense_layers`` dense, the others sparse);
        e.g. ``LayerPlan.tidal()`` selects at two layers and reuses their positions elsewhere.

    Notes
    -----
    Deviations: the official SGLang path stores keys without RoPE and rotates the query to
    position ``n_local`` before scoring (``QUERY_ROTATE``), then applies RoPE to the compacted
    key list inside FlashInfer (its length extrapolation); spattn receives post-RoPE q and k and
    scores and attends with them as they are. Scores in float32 (official bf16 output); ties to
    the lower position (torch.topk leaves them unspecified). The paper's selection cache (reuse
    the last top-k when the query fingerprint barely moved) is switched off in the official release
    code, which this follows: every step selects anew.
    """

    name = "tokenselect"
    paper = "Wu et al., TokenSelect, 2024"
    pattern = "decode: per-head softmax of q.k over the middle keys, summed over heads, top-k + sinks + local"
    params_struct = _core.TokenSelectParams
    extra_defaults = {"layer_plan": None}
    capabilities = Capabilities(mask_format="token", gqa_layouts=("grouped", "interleaved"))

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> TokenIndices:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        idx = _core.estimate_tokenselect(q, k, Nk, self.cparams)
        return TokenIndices(idx, 1, Nk, assume_sorted=True)

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        kb, _, n = cache.buffers(layer)
        idx = _core.estimate_tokenselect(q, kb, n, self.cparams)
        return TokenIndices(idx, 1, n, assume_sorted=True)


__all__ = ["TokenSelect"]
