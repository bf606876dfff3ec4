"""Quest: query-aware page selection for decode over a KV cache.

Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference", ICML 2024;
the page scoring and selection are ``_core.estimate_quest`` (cpp/src/estimators/quest.cpp) with
the parameters of ``_core.QuestParams``; the per-page key min / max live on the
:class:`spattn.KVCache` (:class:`QuestPages`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _core
from .._validation import check_int
from ..cache import KVCache
from ..masks import TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register


class QuestPages:
    """Quest's page metadata of one cache layer: Kmin / Kmax (B, Hkv, page_capacity, D) float32,
    the element-wise min / max of the keys of each page of `page_size` tokens (pages aligned at
    position 0, the last one possibly partial). Registered on a :class:`spattn.KVCache`, it is
    updated on every append: only the pages holding the new rows are recomputed (the last,
    partial page and the new ones), from the keys in the cache; its buffers double like the
    cache's."""

    def __init__(self, page_size: int):
        self.page_size = check_int(page_size, "page_size", lo=1)
        self.kmin: Optional[np.ndarray] = None
        self.kmax: Optional[np.ndarray] = None
        self.num_pages = 0
        self.kv_len = 0

    def update(self, k_buffer: np.ndarray, start: int, stop: int) -> None:
        """Rows [start, stop) of `k_buffer` (B, Hkv, capacity, D) were written (start is the
        previous length, or 0 to build from scratch)."""
        P = self.page_size
        B, H, _, D = k_buffer.shape
        pages = -(-stop // P)
        if self.kmin is None or self.kmin.shape[2] < pages:
            cap = max(pages, 16 if self.kmin is None else 2 * self.kmin.shape[2])
            kmin, kmax = np.empty((B, H, cap, D), np.float32), np.empty((B, H, cap, D), np.float32)
            if self.kmin is not None and start > 0:
                keep = -(-start // P)
                kmin[:, :, :keep] = self.kmin[:, :, :keep]
                kmax[:, :, :keep] = self.kmax[:, :, :keep]
            self.kmin, self.kmax = kmin, kmax
        if stop > start:
            p0 = start // P
            seg = k_buffer[:, :, p0 * P:stop]
            cuts = np.arange(0, stop - p0 * P, P)
            np.minimum.reduceat(seg, cuts, axis=2, out=self.kmin[:, :, p0:pages])
            np.maximum.reduceat(seg, cuts, axis=2, out=self.kmax[:, :, p0:pages])
        self.num_pages, self.kv_len = pages, stop


@register
class Quest(CacheDecode, Method):
    """Quest's decode-time page selection, as the official code (mit-han-lab/Quest, HEAD 01c1623).

    Per query head (query head h reads kv head h // (Hq/Hkv); no sharing inside a GQA group, as
    both official paths), pages of ``page_size`` tokens aligned at position 0 are scored by the
    upper bound of q.k over the page, ``U[p] = sum_d max(q_d Kmax[p, d], q_d Kmin[p, d])``
    (``compute_max_possible``; unscaled), and the selected pages' tokens are attended by the
    token-sparse kernel. Two official selections:

    * kernel path (default; ``quest_init`` + ``InferenceController``): page budget
      ``token_budget // page_size``, capped at the number of pages; while the cache holds no more
      pages than that, attention is dense; otherwise the **last page** (holding the newest token)
      is always kept and the top ``budget - 1`` of the other pages are added;
    * eval path (``eval_selection=True``; ``evaluation/quest_attention.py``, behind the paper's
      accuracy tables): ``budget = min(kv_len, token_budget)``, the top
      ``min(max(3, budget // page_size), num_pages)`` pages among all, nothing forced (so it is
      not dense even when the budget exceeds the cache, e.g. kv_len 100: 6 of 7 pages).

    Layers ``0 .. dense_layers - 1`` run dense (official: 2). Prefill (Nq > 1) is dense, as in
    both official paths: :meth:`estimate` then returns every key for one group of all queries
    (the token-sparse kernel applies the causal rule).

    Decode over a cache: append the step's k / v to the :class:`spattn.KVCache` first (the
    official order: the current token's page is the last page), then ``select(q, cache,
    layer=i)`` / ``m(q, cache, layer=i)``. On plain arrays ``m(q, k, v)`` / ``estimate(q, k)``
    build the metadata from k for that call and select as a sparse layer (the layer plan applies
    to cache calls only); the transformers backend's ``decode_method`` goes this way, rebuilding
    the metadata (one pass over K) at every step.

    Parameters
    ----------
    page_size : int, default 16
        Tokens per page (the official scripts' ``--chunk_size 16`` / ``page_size=16``).
    token_budget : int, default 512
        The ``quest_init`` default (the eval scripts pass 512 to 4096).
    eval_selection : bool, default False
        Use the eval path's selection instead of the kernel path's.
    dense_layers : int, default 2
        Dense layers at the bottom of the model.
    statistical_topk : bool, default False
        Select by the statistical top-k threshold (:func:`spattn.statistical_topk`; Spark
        Transformer) instead of the exact top-k: a variable count per head. Not official.
    layer_plan : spattn.LayerPlan or dict, optional
        The role of each layer (default: the first ``dense_layers`` dense, the others sparse);
        e.g. ``LayerPlan.tidal()`` selects at two layers and reuses their positions elsewhere.

    Notes
    -----
    Deviations: ties between equal page scores go to the lower page index (the official
    torch.topk / RAFT select_k leave them unspecified); scores are float32 SIMD products
    ``q+ . Kmax + q- . Kmin`` of the float32 metadata (official: model dtype, fp16); with one page the kernel path runs dense
    (the official controller asserts two pages); a NaN score ranks first (as torch.topk).
    """

    name = "quest"
    paper = "Tang et al., Quest, ICML 2024"
    pattern = "decode: pages ranked by a min/max-key upper bound of q.k, top pages (+ last page) per query head"
    params_struct = _core.QuestParams
    extra_defaults = {"layer_plan": None}
    capabilities = Capabilities(mask_format="token")

    # ------------------------------------------------------------------ plain arrays
    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> TokenIndices:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        pages = QuestPages(self.params["page_size"])
        pages.update(k, 0, Nk)
        return self._select(q, pages, Nk)

    def _select(self, q: np.ndarray, pages: QuestPages, kv_len: int) -> TokenIndices:
        kmin, kmax = pages.kmin, pages.kmax
        if kmin is None:  # an empty cache: no pages
            kmin = kmax = np.zeros((q.shape[0], 1, 0, q.shape[3]), np.float32)
        idx = _core.estimate_quest(q, kmin, kmax, kv_len, self.cparams)
        self.last_info = {"kv_len": kv_len, "tokens": int(idx.shape[-1])}
        return TokenIndices(idx, 1, kv_len, assume_sorted=True)

    # ------------------------------------------------------------------ decode over a KVCache
    def pages(self, cache: KVCache, layer: int) -> QuestPages:
        """This method's page metadata on `layer` of `cache` (registered on first use)."""
        P = self.params["page_size"]
        return cache.state(layer, ("quest", P), lambda: QuestPages(P))

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        return self._select(q, self.pages(cache, layer), cache.length(layer))


__all__ = ["Quest", "QuestPages"]
