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


class _SelectionCache:
    """TokenSelect's selection cache on one cache layer: the last fingerprint (B, Hq * D), the
    cached candidates per batch row and the counts of reused / computed selections."""

    def __init__(self):
        self.fingerprint = None
        self.middle = None
        self.reused = 0
        self.computed = 0

    def update(self, k_buffer, start: int, stop: int) -> None:  # the cached positions stay valid
        pass


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
    selection_cache : bool, default False
        The paper's selection cache (decode over a cache only): reuse the layer's last top-k
        candidates while the cosine similarity of the step's query fingerprint (the queries of
        all heads, flattened) with the cached one is >= ``similarity_threshold``; sinks and the
        local window are rebuilt from the current length. Off by default, as in the official
        release (``QUERY_CACHE = False``), whose version of it cannot run as written.
    similarity_threshold : float, default 0.9
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
    code, which the default follows (every step selects anew); ``selection_cache=True`` turns on
    spattn's reading of the paper (cosine similarity of the flattened step queries, per batch row).
    """

    name = "tokenselect"
    paper = "Wu et al., TokenSelect, 2024"
    pattern = "decode: per-head softmax of q.k over the middle keys, summed over heads, top-k + sinks + local"
    params_struct = _core.TokenSelectParams
    extra_defaults = {"layer_plan": None, "selection_cache": False, "similarity_threshold": 0.9}
    capabilities = Capabilities(mask_format="token", gqa_layouts=("grouped", "interleaved"))

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> TokenIndices:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        idx = _core.estimate_tokenselect(q, k, Nk, self.cparams)
        return TokenIndices(idx, 1, Nk, assume_sorted=True)

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.params["selection_cache"], (bool, np.bool_)):
            raise TypeError(f"tokenselect: selection_cache must be a bool, got {self.params['selection_cache']!r}")
        t = self.params["similarity_threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not -1.0 <= float(t) <= 1.0:
            raise ValueError(f"tokenselect: similarity_threshold must be a number in [-1, 1], got {t!r}")

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        kb, _, n = cache.buffers(layer)
        if not self.params["selection_cache"]:
            idx = _core.estimate_tokenselect(q, kb, n, self.cparams)
            return TokenIndices(idx, 1, n, assume_sorted=True)
        return self._select_with_cache(q, cache, layer)

    def _select_with_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        """The paper's selection cache: per layer and batch row, the last query fingerprint (the
        step's queries of all heads, flattened) and its top_k candidates; a step whose fingerprint
        has cosine similarity >= similarity_threshold with the cached one reuses those
        candidates, the sinks and the local window rebuilt for the current length."""
        kb, _, n = cache.buffers(layer)
        p = self.params
        st = cache.state(layer, ("tokenselect-cache",), _SelectionCache)
        B, Hq = q.shape[:2]
        if p["n_init"] + p["top_k"] + p["n_local"] >= n:  # dense: nothing selected, nothing cached
            return TokenIndices(_core.estimate_tokenselect(q, kb, n, self.cparams), 1, n, assume_sorted=True)
        fp = q.reshape(B, -1).astype(np.float64)
        if st.fingerprint is None or st.fingerprint.shape != fp.shape:
            st.fingerprint, st.middle = None, [None] * B
        reuse = np.zeros(B, bool)
        if st.fingerprint is not None:
            num = (fp * st.fingerprint).sum(1)
            den = np.maximum(np.linalg.norm(fp, axis=1) * np.linalg.norm(st.fingerprint, axis=1), 1e-8)
            reuse = num / den >= float(p["similarity_threshold"])
        else:
            st.fingerprint = fp.copy()
        mids = list(st.middle)
        if not reuse.all():
            idx = _core.estimate_tokenselect(q, kb, n, self.cparams)
            for b in np.flatnonzero(~reuse):
                row = idx[b, 0, 0]
                row = row[row >= 0]
                mids[b] = row[p["n_init"]:row.size - p["n_local"]]
                st.fingerprint[b] = fp[b]
        st.reused += int(reuse.sum())
        st.computed += int((~reuse).sum())
        st.middle = mids
        rows = [np.concatenate([np.arange(p["n_init"]), mids[b], np.arange(n - p["n_local"], n)]).astype(np.int32)
                for b in range(B)]
        width = max(r.size for r in rows)
        out = np.full((B, Hq, 1, width), -1, np.int32)
        for b in range(B):
            out[b, :, 0, :rows[b].size] = rows[b]
        self.last_info = {"reused": int(reuse.sum()), "computed": int((~reuse).sum())}
        return TokenIndices(out, 1, n, assume_sorted=True)


__all__ = ["TokenSelect"]
