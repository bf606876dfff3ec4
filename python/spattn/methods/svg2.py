"""Sparse VideoGen2: k-means clusters of queries and keys, centroid top-p over cluster pairs.

Yang et al., "Sparse VideoGen2: Accelerate Video Generation with Sparse Attention via
Semantic-Aware Permutation", arXiv 2505.18875, 2025; the estimator is ``_core.estimate_svg2`` with
its parameters in ``_core.Svg2Params``, the kernel :func:`spattn.kernels.cluster_block_attention`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import _core
from .._validation import as_float_array
from ..masks import ClusteredMask
from .base import Capabilities, Method, register


@register
class SVG2(Method):
    """Sparse VideoGen2 (semantic-aware permutation), as the official Wan processor runs it.

    Follows svg-project/Sparse-VideoGen (5ce7b01): ``batch_kmeans_Euclid`` / ``_euclid_iter``,
    ``identify_dynamic_map`` / ``weighted_softmax``, ``permute_tensor_by_labels``,
    ``dynamic_block_sparse_fwd_torch`` and ``density_calculation`` (svg/kmeans_utils.py), and
    ``WanAttn_SAPAttn_Processor`` (svg/models/wan/attention.py):

    1. Euclidean k-means of the queries of every (batch, query head) into ``Cq`` clusters and of
       the keys of every (batch, kv head) into ``Ck`` clusters: assign to the nearest centroid
       (squared L2 as ``|x|^2 + |c|^2 - 2 x.c``, lowest index on ties), centroid = mean of its
       members (an empty cluster keeps its centroid); all heads of a tensor stop together when the
       largest centroid shift is below 1e-4 (the official batch), else after ``kmeans_iter_init``
       iterations from random tokens (picked with replacement) or ``kmeans_iter_step`` iterations
       warm-started from the previous call's centroids.
    2. Dynamic map: centroid scores ``C_q C_k^T / sqrt(D)``, the softmax over key clusters
       weighted by their sizes, sorted descending; keep the prefix up to and including the cluster
       where the cumulative probability first exceeds ``top_p_kmeans`` (top-1 always), plus the
       first ``int(min_kc_ratio * Ck)`` clusters.
    3. Attention of every query over the keys of its cluster's selected key clusters
       (variable-size blocks; the official code permutes q, k, v so that clusters are contiguous and
       runs a flashinfer fork; here the kernel gathers per tile and scatters the output back).

    ``estimate`` returns a :class:`spattn.ClusteredMask` (labels and map; its ``density`` is the
    official ``density_calculation`` when non-causal). ``last_info`` keeps the centroids, cluster
    sizes, iterations and whether the call was warm-started.

    State across calls (the official processor keeps one centroid cache per layer: use one
    instance per layer): after each call the returned centroids are cached; the next call
    warm-starts from them when (B, Hq, Hkv, D, Cq, Ck) match, and starts from random tokens
    otherwise (the cache is then replaced). :meth:`reset` clears the cache;
    :meth:`init_centroids` gives the initial centroids of the next call (``kmeans_iter_init``
    iterations), e.g. to replay an official run. A call on inputs identical to the previous call's
    (``estimate`` then ``__call__``) starts from that call's start again, so it gives the same
    estimate at the same cost (timings of repeated calls on one input measure that first call: a
    cold start runs ``kmeans_iter_init`` iterations, the official steady state ``kmeans_iter_step``).

    Parameters
    ----------
    num_q_centroids : int, default 300
        Query clusters per head (official Wan 720p); clamped to Nq.
    num_k_centroids : int, default 1000
        Key clusters per kv head; clamped to Nk.
    top_p_kmeans : float, default 0.9
        Cumulative weighted centroid probability kept per query cluster, in (0, 1].
    min_kc_ratio : float, default 0.10
        Share of the key clusters always kept (the most probable ones), in [0, 1].
    kmeans_iter_init : int, default 50
        k-means iterations of a cold start.
    kmeans_iter_step : int, default 2
        k-means iterations of a warm start.
    seed : int, default 0
        Seed of the random initial tokens.

    Notes
    -----
    Deviations from the official code: the random initial tokens come from spattn's seeded
    stream, not torch's RNG (replay an official init with :meth:`init_centroids`); a duplicated
    initial centroid ties with its twin, which the official GEMM breaks by float rounding and
    spattn by the lowest index; ties of the probability sort keep the lower cluster index first;
    cluster counts are clamped to the token counts. GQA (the official models have Hq == Hkv):
    keys are clustered once per kv head and shared by its query heads. A user ``scale`` replaces
    1/sqrt(D) in the centroid scores too. Causal attention (spattn extension; SVG2 is
    bidirectional): the same clusters and map, with the causal rule applied per element on
    original positions, so a query may see no selected key (out = 0, lse = -inf). Chunked and decode
    calls (Nq != Nk, Nq = 1: one query cluster) cluster every key again (warm-started from the
    cache while Ck is unchanged). The official dense fallback (first layers and denoising steps)
    is the caller's choice. Efficiency: a work item is one query cluster (at most 128 rows); the
    official regime (Wan 720p: about 75k tokens for Cq = 300, some 250 queries per cluster) keeps
    them full, while short inputs with the default Cq give clusters of a few rows.
    """

    name = "svg2"
    paper = ("Yang et al., Sparse VideoGen2: Accelerate Video Generation with Sparse Attention via Semantic-Aware "
             "Permutation (SVG2), 2025")
    pattern = ("per-head k-means of q and k; size-weighted centroid top-p over (query cluster, key cluster) "
               "variable-size blocks")
    params_struct = _core.Svg2Params
    capabilities = Capabilities(mask_format="clustered")

    def __init__(self, **params: Any):
        self._cache: Optional[Dict[str, Any]] = None
        self._pending: Optional[Tuple[np.ndarray, np.ndarray]] = None
        super().__init__(**params)

    def reset(self) -> "SVG2":
        """Forget the cached centroids: the next call starts from random tokens."""
        self._cache = None
        self._pending = None
        return self

    def init_centroids(self, q_centroids, k_centroids) -> "SVG2":
        """Initial centroids of the next call, run for ``kmeans_iter_init`` iterations.

        Parameters
        ----------
        q_centroids : array_like, shape (B, Hq, Cq, D)
        k_centroids : array_like, shape (B, Hkv, Ck, D)
            With Cq = min(num_q_centroids, Nq) and Ck = min(num_k_centroids, Nk) of that call
            (checked then, ValueError naming the argument).
        """
        qc, kc = as_float_array(q_centroids, "q_centroids"), as_float_array(k_centroids, "k_centroids")
        for name, x in (("q_centroids", qc), ("k_centroids", kc)):
            if x.ndim != 4:
                raise ValueError(f"{name} must have shape (B, H, C, D), got {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{name} holds NaN or inf")
        self._pending = (qc, kc)
        return self

    @property
    def centroids(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The cached (q_centroids, k_centroids) of the last call, or None."""
        return None if self._cache is None else (self._cache["q_centroids"], self._cache["k_centroids"])

    def _digest(self, q: np.ndarray, k: np.ndarray, causal: bool, scale) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((q.shape, k.shape, causal, scale, sorted(self.params.items()))).encode())
        h.update(q.reshape(-1).view(np.uint8))
        h.update(k.reshape(-1).view(np.uint8))
        return h.digest()

    def _estimate(self, q, k, causal, scale) -> ClusteredMask:
        digest = self._digest(q, k, causal, scale)
        B, Hq, Nq, D = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        key = (B, Hq, Hkv, D, min(self.params["num_q_centroids"], Nq), min(self.params["num_k_centroids"], Nk))
        cache = self._cache if self._cache is not None and self._cache["key"] == key else None
        if self._pending is not None:
            start = (*self._pending, False)
        elif cache is not None and cache["digest"] == digest:
            start = cache["start"]  # the same inputs again: the same start, the same estimate, the same cost
        elif cache is not None:
            start = (cache["q_centroids"], cache["k_centroids"], True)
        else:
            start = (None, None, False)
        r = _core.estimate_svg2(q, k, causal, scale, self.cparams, *start)
        self._pending = None
        self._cache = {"key": key, "q_centroids": r["q_centroids"], "k_centroids": r["k_centroids"],
                       "digest": digest, "start": start}
        self.last_info = {**r, "warm_start": bool(start[2])}
        return ClusteredMask(r["q_labels"], r["k_labels"], r["map"])

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        info = self.last_info
        return {"warm_start": bool(info["warm_start"]), "q_clusters": int(info["map"].shape[2]),
                "k_clusters": int(info["map"].shape[3]),
                "kmeans_iters_q": int(info["q_iters"].max(initial=0)),
                "kmeans_iters_k": int(info["k_iters"].max(initial=0)),
                "selected_k_clusters": float(info["map"].sum(-1).mean()) if info["map"].size else 0.0}
