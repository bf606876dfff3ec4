"""Routing Transformer: content-based clusters by online k-means, attention inside each cluster.

Roy, Saffar, Vaswani, Grangier, "Efficient Content-Based Sparse Attention with Routing
Transformers", TACL 2021 (arXiv 2003.05997). Follows the PyTorch reference
lucidrains/routing-transformer 3f6c461 (routing_transformer/routing_transformer.py). Routing is
``_core.route_routing`` (cpp/src/estimators/routing.cpp), the attention ``_core.routing_attention``
(cpp/src/kernels/routing_attention.cpp); parameters in ``_core.RoutingParams``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..masks import TokenIndices
from .base import Capabilities, Method, register

SELF_ATTN_VALUE = -5e4  # the reference's TOKEN_SELF_ATTN_VALUE
SCATTER_EPS = 1e-5  # the reference's scatter_mean eps


def kmeans_tokens(q, k=None) -> np.ndarray:
    """The tokens the reference's ``Kmeans`` sees, per query head: (Hq, B * (Nq + Nk), D) float32.

    ``torch.cat((q, k), dim=2)`` then ``x.transpose(0, 1).view(h, -1, d)`` (batch-major, the queries
    of a batch row before its keys); with ``k=None`` (shared_qk) the queries only. Under GQA the
    keys of kv head h // (Hq / Hkv) join query head h.
    """
    q = as_float_array(q, "q")
    if q.ndim != 4:
        raise ValueError(f"q must have shape (B, Hq, Nq, D), got {q.shape}")
    if k is not None:
        k = as_float_array(k, "k")
        if k.ndim != 4 or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % max(k.shape[1], 1):
            raise ValueError(f"k must have shape (B={q.shape[0]}, Hkv dividing Hq={q.shape[1]}, Nk, "
                             f"D={q.shape[3]}), got {k.shape}")
        q = np.concatenate([q, np.repeat(k, q.shape[1] // k.shape[1], axis=1)], axis=2)
    B, H, L, D = q.shape
    return np.ascontiguousarray(q.transpose(1, 0, 2, 3).reshape(H, B * L, D))


def init_indices(num_samples: int, num_clusters: int, seed: int = 0) -> np.ndarray:
    """The tokens that seed the centroids (shared by every head, as the reference's ``means[:, indices]``):
    ``num_clusters`` distinct draws when there are enough samples (the reference's ``randperm``),
    with replacement otherwise (its ``randint``). numpy's generator, not torch's: the draws differ
    from the reference's for the same seed."""
    rng = np.random.default_rng(seed)
    if num_samples >= num_clusters:
        return rng.permutation(num_samples)[:num_clusters]
    return rng.integers(0, num_samples, num_clusters)


def fit_centroids(q, k=None, *, num_clusters: int, iters: int = 10, seed: int = 0) -> np.ndarray:
    """The reference's centroid initialisation (``Kmeans.init``): random tokens, then ``iters``
    ``kmeans_iter`` steps on the *raw* tokens (argmax of x . mu, members summed over the batch and
    L2-normalised, empty clusters keep their centroid, which may then be an unnormalised token).

    Parameters
    ----------
    q, k : array_like (B, Hq, Nq, D) and (B, Hkv, Nk, D); k None for shared_qk (queries only)
    num_clusters : int
    iters : int, default 10 (the reference's KMEAN_INIT_ITERS)
    seed : int
        Seed of :func:`init_indices`.

    Returns
    -------
    centroids : float32 array (Hq, num_clusters, D)
    """
    num_clusters = check_int(num_clusters, "num_clusters", 1)
    iters = check_int(iters, "iters", 0)
    return _fit_tokens(kmeans_tokens(q, k), num_clusters, iters, seed)


def ema_update(centroids, q, k=None, *, decay: float = 0.999, commitment: float = 1e-4) -> Tuple[np.ndarray, float]:
    """One training-time update of the reference (``Kmeans.forward(update_means=True)`` then
    ``Kmeans.update``): a ``kmeans_iter`` step on the L2-normalised tokens, then
    ``mu <- decay * mu + (1 - decay) * new``. Also returns the commitment loss the reference adds
    to the task loss, ``commitment * mean((x_hat - mu_bucket)^2)`` at the centroids before the
    update.

    Returns
    -------
    (new centroids (Hq, C, D) float32, commitment loss)
    """
    mu = as_float_array(centroids, "centroids")
    x = kmeans_tokens(q, k)
    if mu.ndim != 3 or mu.shape[0] != x.shape[0] or mu.shape[2] != x.shape[2]:
        raise ValueError(f"centroids must have shape (Hq={x.shape[0]}, C, D={x.shape[2]}), got {mu.shape}")
    if not (0.0 <= decay <= 1.0):
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    new, buckets = _core.routing_kmeans_step(x, mu, True)
    xn = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    routed = np.take_along_axis(mu, buckets[..., None].astype(np.int64), axis=1)
    loss = float(commitment * np.mean((xn.astype(np.float64) - routed) ** 2))
    out = (mu * np.float32(decay) + new * np.float32(1.0 - decay)).astype(np.float32)
    return out, loss


@dataclass
class RoutingFitResult:
    """What :meth:`Routing.fit` returns: the centroids and the commitment loss of every EMA step."""

    centroids: np.ndarray
    losses: List[float] = field(default_factory=list)


def _normalize(x: np.ndarray) -> np.ndarray:
    """F.normalize(x, dim=-1) in float32."""
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))).astype(np.float32)


@register
class Routing(Method):
    """Routing Transformer attention at inference, as lucidrains/routing-transformer computes it.

    Follows routing_transformer/routing_transformer.py at 3f6c461 (``Kmeans``, ``kmeans_iter``,
    ``dists_and_buckets``, ``distribution``, ``KmeansAttention.forward``, ``scatter_mean``):

    1. Routing: ``x = F.normalize(q)``, ``F.normalize(k)``; cosine similarity to the head's
       centroids ``mu`` (Hq, C, D) (used as given).
    2. Balanced assignment: every cluster takes the ``wq = min(window_size, Nq)`` queries and the
       ``wk = min(window_size, Nk)`` keys of largest similarity (top-k over the sequence, separately
       for queries and keys); a token may be taken by several clusters or by none.
    3. Inside each cluster: softmax of ``q . [mem_key; k] * scale`` over its optional memory keys and
       its keys, causal rule on original positions (memory keys always visible), then ``@ [mem_value; v]``.
       With ``shared_qk`` only queries are routed, the keys are ``F.normalize(k)`` at the cluster's
       query positions and the self match gets the logit -5e4 (after scaling).
    4. ``scatter_mean``: a query's output is the sum of the outputs of the clusters that took it
       divided by (their count + 1e-5); 0 for queries no cluster took.

    Centroids: ``centroids`` (Hq, C, D) when given (e.g. from :meth:`fit` or a trained model's
    ``kmeans.means``); otherwise every call fits them on its own q and k as the reference's first
    forward does (:func:`fit_centroids`: random tokens (seeded), ``kmeans_init_iters`` Lloyd steps),
    with ``C = num_clusters`` or, when 0, ``max(1, Nk // window_size)`` (the reference's fixed
    ``max_seq_len // window_size`` with max_seq_len = Nk). :meth:`fit` keeps centroids fitted on
    captured samples; :func:`ema_update` is the training update.

    ``estimate`` returns :class:`TokenIndices` (group_size 1): per query the union of the keys of
    the clusters that took it (causal rule applied). The output is **not** one softmax over that
    union but the mean of the per-cluster softmaxes (``capabilities.own_output``): the mask is the
    support the output reads, for density and recall. ``__call__`` runs the clusters on
    :func:`spattn._core.routing_attention` (tile engine; memory O(C * W) beyond the inputs, never
    Nq x Nk); ``last_info`` keeps ``q_idx``, ``k_idx`` (B, Hq, C, w), ``centroids`` and ``mask``.

    Parameters
    ----------
    window_size : int, default 128
        W, the tokens each cluster takes (the reference README's setting).
    num_clusters : int, default 0
        C when no centroids are given; 0 = max(1, Nk // window_size) per call.
    kmeans_init_iters : int, default 10
        Lloyd steps of the initialisation (KMEAN_INIT_ITERS).
    shared_qk : bool, default False
        The reference's shared query-key attention (needs Nq == Nk).
    seed : int, default 0
        Seed of the initial tokens.
    ema_decay : float, default 0.999
        Decay of :meth:`fit`'s EMA steps.
    commitment : float, default 1e-4
        Weight of the commitment loss :meth:`fit` reports.
    centroids : array (Hq, C, D), optional
        Fixed centroids.
    mem_key, mem_value : arrays (Hq, C, M, D) and (Hq, C, M, Dv), optional
        The reference's learned memory key/values per (head, cluster) (``num_mem_kv``).

    Notes
    -----
    Deviations and choices: (1) memory keys are learned parameters of the reference (it forces one
    per cluster when causal and not shared_qk); without given ones there are none, and a causal
    cluster row with no visible key contributes 0 to its query's mean (still counted). The
    reference cannot reach that case; with its memory removed, torch's softmax over a row filled
    with -finfo.max would spread the weight uniformly over future keys, which is not replicated.
    (2) Ties in the top-k go to the lower position (torch.topk leaves them unspecified); NaN ranks
    first as in torch.topk. (3) The initial tokens are drawn with numpy, not torch. (4) The causal
    rule is spattn's bottom-right alignment (key j visible to query i iff j <= i + Nk - Nq); the
    reference compares raw indices, the same when Nq == Nk. (5) GQA (the reference has none): the
    centroids are per query head, and the keys of kv head h // (Hq / Hkv) are routed per query
    head. (6) ``scale`` replaces the reference's fixed D**-0.5. (7) No row log-sum-exp exists
    (``return_lse=True`` raises). Padding masks, dropout and local-attention heads of the reference
    layer are not part of this method.
    """

    name = "routing"
    aliases = ("routing_transformer",)
    paper = "Roy et al., Efficient Content-Based Sparse Attention with Routing Transformers, TACL 2021"
    pattern = ("content clusters: online k-means on normalised q/k, top-W queries and keys per cluster, "
               "outputs averaged over a token's clusters")
    params_struct = _core.RoutingParams
    extra_defaults = {"centroids": None, "mem_key": None, "mem_value": None}
    capabilities = Capabilities(mask_format="token", fittable=True, own_output=True)
    learned_param = "centroids"

    def _check_params(self) -> None:
        p = self.params
        for name, nd in (("centroids", 3), ("mem_key", 4), ("mem_value", 4)):
            if p[name] is None:
                continue
            arr = as_float_array(p[name], name)
            if arr.ndim != nd or 0 in arr.shape[:2] or arr.shape[-1] == 0:
                raise ValueError(f"{name} must be a {nd}-d array {'(Hq, C, D)' if nd == 3 else '(Hq, C, M, D)'} "
                                 f"with Hq, C, D >= 1, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} holds NaN or inf")
            p[name] = arr
        if (p["mem_key"] is None) != (p["mem_value"] is None):
            raise ValueError("mem_key and mem_value must be given together")
        if p["mem_key"] is not None:
            mk, mv = p["mem_key"], p["mem_value"]
            if mk.shape[:3] != mv.shape[:3]:
                raise ValueError(f"mem_value must have shape (Hq, C, M, Dv) matching mem_key {mk.shape[:3]}, "
                                 f"got {mv.shape}")
        c = p["centroids"]
        if c is not None and p["num_clusters"] not in (0, c.shape[1]):
            raise ValueError(f"num_clusters={p['num_clusters']} disagrees with centroids of {c.shape[1]} clusters")
        if c is not None and p["mem_key"] is not None and p["mem_key"].shape[:2] != c.shape[:2]:
            raise ValueError(f"mem_key must have (Hq, C) = {c.shape[:2]} of the centroids, got {p['mem_key'].shape}")

    # ------------------------------------------------------------------ routing
    def clusters_for(self, N: int) -> int:
        """C for a call with Nk = N keys when no centroids are given."""
        p = self.params
        return p["num_clusters"] if p["num_clusters"] > 0 else max(1, N // p["window_size"])

    def _centroids(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        p = self.params
        c = p["centroids"]
        if c is None:
            return fit_centroids(q, None if p["shared_qk"] else k, num_clusters=self.clusters_for(k.shape[2]),
                                 iters=p["kmeans_init_iters"], seed=p["seed"])
        if c.shape[0] != q.shape[1] or c.shape[2] != q.shape[3]:
            raise ValueError(f"centroids must have shape (Hq={q.shape[1]}, C, D={q.shape[3]}), got {c.shape}")
        return c

    def _route(self, q: np.ndarray, k: np.ndarray, causal: bool):
        if self.params["shared_qk"] and q.shape[2] != k.shape[2]:
            raise ValueError(f"routing with shared_qk needs Nq == Nk; got Nq={q.shape[2]}, Nk={k.shape[2]}")
        mu = self._centroids(q, k)
        q_idx, k_idx = _core.route_routing(q, k, mu, causal, self.cparams)
        self.last_info = {"q_idx": q_idx, "k_idx": k_idx, "centroids": mu}
        return q_idx, k_idx

    def _mask(self, q_idx, k_idx, Nq: int, Nk: int, causal: bool) -> TokenIndices:
        idx = _core.routing_token_indices(q_idx, k_idx, Nq, Nk, causal)
        mask = TokenIndices(idx, 1, Nk, assume_sorted=True)
        self.last_info["mask"] = mask
        return mask

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        q_idx, k_idx = self._route(q, k, causal)
        return self._mask(q_idx, k_idx, q.shape[2], k.shape[2], causal)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Route (q, k), then run every cluster and average each query's cluster outputs
        (see the class docstring). ``return_lse=True`` raises ValueError: the output is a mean of
        softmaxes and has no single log-sum-exp."""
        self._refuse_gate_inputs(q_gate, k_gate)
        if return_lse:
            raise ValueError("routing: return_lse=True is not available; the output is a mean of per-cluster "
                             "softmaxes, with no single log-sum-exp")
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        q_idx, k_idx = self._route(q, k, causal)
        p = self.params
        mk, mv = p["mem_key"], p["mem_value"]
        if mk is not None:
            C = q_idx.shape[2]
            if mk.shape[0] != q.shape[1] or mk.shape[1] != C or mk.shape[3] != q.shape[3] or mv.shape[3] != v.shape[3]:
                raise ValueError(f"mem_key/mem_value must have shape (Hq={q.shape[1]}, C={C}, M, D={q.shape[3]}) / "
                                 f"(.., Dv={v.shape[3]}), got {mk.shape} / {mv.shape}")
        kk = _normalize(k) if p["shared_qk"] else k
        out = _core.routing_attention(q, kk, v, q_idx, k_idx, mk, mv, p["shared_qk"], causal, scale)
        self._mask(q_idx, k_idx, q.shape[2], k.shape[2], causal)
        return out

    # ------------------------------------------------------------------ learned state
    def fit(self, samples: Sequence, *, steps: int = 0, progress: bool = False, **kwargs: Any) -> RoutingFitResult:
        """Fit the centroids on captured (q, k) samples and keep them as ``params["centroids"]``.

        The tokens of every sample (:func:`kmeans_tokens`, samples in order) initialise them as the
        reference's first forward does (:func:`fit_centroids` with ``num_clusters`` or
        ``max(1, max Nk // window_size)`` clusters, ``kmeans_init_iters`` steps, ``seed``); then
        ``steps`` training updates (:func:`ema_update`, ``ema_decay``), cycling through the
        samples, each reporting its commitment loss.
        """
        if kwargs:
            raise TypeError(f"routing.fit: unknown option(s) {sorted(kwargs)}; known: steps, progress")
        steps = check_int(steps, "steps", 0)
        items = [tuple(s)[:2] for s in samples]
        if not items:
            raise ValueError("samples must hold at least one (q, k) item")
        p = self.params
        shared = p["shared_qk"]
        pairs = [check_qkv(qq, kk)[:2] for qq, kk in items]
        C = p["num_clusters"] if p["num_clusters"] > 0 else max(1, max(kk.shape[2] for _, kk in pairs) // p["window_size"])
        x = np.concatenate([kmeans_tokens(qq, None if shared else kk) for qq, kk in pairs], axis=1)
        mu = _fit_tokens(x, C, p["kmeans_init_iters"], p["seed"])
        losses: List[float] = []
        for step in range(steps):
            qq, kk = pairs[step % len(pairs)]
            mu, loss = ema_update(mu, qq, None if shared else kk, decay=p["ema_decay"], commitment=p["commitment"])
            losses.append(loss)
        self.set_params(centroids=mu, num_clusters=0 if p["num_clusters"] == 0 else C)
        return RoutingFitResult(mu, losses)

    def readouts(self) -> Dict[str, Any]:
        if "q_idx" not in self.last_info:
            return {}
        q_idx = self.last_info["q_idx"]
        Nq = self.last_info["mask"].indices.shape[2] if "mask" in self.last_info else None
        out: Dict[str, Any] = {"clusters": int(q_idx.shape[2]), "window": int(q_idx.shape[3])}
        if Nq:
            counts = np.zeros((q_idx.shape[0], q_idx.shape[1], Nq))
            np.add.at(counts, (np.arange(q_idx.shape[0])[:, None, None, None],
                               np.arange(q_idx.shape[1])[None, :, None, None], q_idx), 1)
            out["unrouted_queries"] = float(np.mean(counts == 0))
        return out


def _fit_tokens(x: np.ndarray, num_clusters: int, iters: int, seed: int) -> np.ndarray:
    """fit_centroids on tokens already laid out as (H, n, D)."""
    if x.shape[1] == 0:
        raise ValueError("fitting centroids needs at least one token (Nq + Nk >= 1)")
    means = np.ascontiguousarray(x[:, init_indices(x.shape[1], num_clusters, seed)])
    for _ in range(iters):
        means, _ = _core.routing_kmeans_step(x, means, False)
    return means
