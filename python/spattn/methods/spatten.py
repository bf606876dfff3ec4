"""SpAtten: cascade token and head pruning across layers with importance carried forward (paper),
and the released LLM code's KV eviction (``variant="released"``).

Wang, Zhang and Han, "SpAtten: Efficient Sparse Attention Architecture with Cascade Token and
Head Pruning", arXiv 2012.09852 (HPCA 2021); see /shared/methods/stateful/spatten.md.

``variant="paper"`` (PAPER ONLY: the 2021 algorithm code is not released). Successive calls are
successive layers of one forward pass (``state.step`` counts them; a call with other shapes starts
a new pass). The state carries, per batch row, the cumulative token importance
``s_t += sum_heads sum_queries p[h, q, t]`` (exact softmax probabilities of the alive queries of
alive heads over the alive keys, column sums from spattn's ``block_attention_map`` statistics
pass: never an Nq x Nk buffer), the cumulative head importance ``s_h += sum_queries sum_features
|O_h|`` and the alive token and head sets, which only shrink. The first ``dense_layers`` calls
prune nothing (they only accumulate); every later call first keeps the
``ceil(token_keep * alive)`` most important alive tokens and the ``ceil(head_keep * alive_heads)``
most important alive heads (ties: lower index), then every query attends the alive keys (token-
sparse kernel, causal as asked) and pruned heads output 0 (their rows list no key). Then the
importances are updated from this call.

Unverified choices of the paper variant (no official code): the keep ratio is one number for every
pruning layer (the paper tunes it per layer; its GPT-2 workload shrinks 993 -> 921 -> 819 -> 614 ->
307 keys) and is a share of the tokens still alive, rounded up; ties go to the lower position;
queries are not removed from the call (pruned tokens' rows still attend the alive keys: the paper
drops them from Q too, which only removes rows) but only alive queries add to the importance;
generation-time accumulation across decode steps is not modelled (a new shape is a new pass). Out of
scope: local value pruning and progressive quantization, the accelerator's DRAM-traffic savings (they
change which bits are fetched, not which tokens are attended).

``variant="released"`` follows ``spatten_llm/kv_cache_token_pruning.py``
(``SpAttenKVCache.apply_token_pruning``): when ``Nk + num_coming > start_size + important_size +
recent_size``, each head keeps ``[0, start_size)``, the ``important_size`` candidates of
``[start_size, Nk - recent_size + num_coming)`` (clipped at Nk) with the largest score, and the
positions ``[Nk - recent_size + num_coming, Nk)`` (empty once num_coming >= recent_size: the
MT-Bench script passes the next prompt's length + 64); otherwise every key. When there are no
more candidates than ``important_size`` all are kept (the official ``torch.topk`` would fail). The score is the raw pre-softmax,
pre-mask logit summed over the queries, per head. Officially it is the *previous* forward call's
(usually the last decode step's) logits; on arrays spattn scores with the call's own queries, and
:func:`released_keep` / :meth:`SpAtten.evict_cache` take any score (e.g. a saved decode query's).
Official differences: ties (``torch.topk``) go to the lower index here; the official code assumes
B = 1 and MHA, spattn handles B > 1 and GQA (scores per query head; a compacted cache stores Hq
heads); official keys are cached un-rotated and re-rotated by cache position (StreamingLLM style):
spattn does not touch positions, the caller owns RoPE.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..cache import KVCache
from ..kernels import token_sparse_attention
from ..masks import TokenIndices
from ..state import Schedule
from ._stateful import StatefulMethod
from .base import Capabilities, register


def _check_share(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    if not (math.isfinite(x) and 0.0 < x <= 1.0):
        raise ValueError(f"{name} must lie in (0, 1], got {value}")
    return x


def released_keep(scores, *, start_size: int = 0, important_size: int = 150, recent_size: int = 150,
                  num_coming: int = 0) -> np.ndarray:
    """The released code's kept positions per head, int32 (..., K), sorted ascending.

    Parameters
    ----------
    scores : array_like (..., Nk)
        Per head the score of every cached key (official: the last forward call's raw logits summed
        over its queries).
    start_size, important_size, recent_size, num_coming : int
        As ``SpAttenKVCache`` (start kept, top important, recent window shrunk by the tokens about to
        come).
    """
    s = as_float_array(scores, "scores")
    if s.ndim < 1:
        raise ValueError(f"scores must have shape (..., Nk), got {s.shape}")
    start, imp, rec = (check_int(start_size, "start_size"), check_int(important_size, "important_size"),
                       check_int(recent_size, "recent_size"))
    coming = check_int(num_coming, "num_coming")
    n = s.shape[-1]
    if n + coming <= start + imp + rec:
        return np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int32), s.shape))
    hi = max(start, min(n, n - rec + coming))  # the recent slice [n - rec + coming, n) is empty past n
    top = start + np.argsort(-s[..., start:hi].astype(np.float64), axis=-1, kind="stable")[..., :imp]
    lead = s.shape[:-1]
    keep = np.concatenate([np.broadcast_to(np.arange(min(start, n)), lead + (min(start, n),)), top,
                           np.broadcast_to(np.arange(hi, n), lead + (n - hi,))], axis=-1)
    return np.sort(keep, axis=-1).astype(np.int32)


@register
class SpAtten(StatefulMethod):
    """SpAtten: cascade token / head pruning with importance carried across layers (``"paper"``),
    or the released KV eviction (``"released"``); see the module docstring.

    Parameters
    ----------
    variant : str, default "paper"
        "paper" (cascade pruning, stateful across calls = layers) or "released" (per-head KV eviction).
    dense_layers : int, default 1
        Paper: calls (layers) that prune nothing and only accumulate importance.
    token_keep : float, default 0.9
        Paper: share of the alive tokens kept at each later layer (rounded up; unverified default).
    head_keep : float, default 1.0
        Paper: share of the alive heads kept at each later layer (1.0: no head pruning).
    start_size, important_size, recent_size : int, default 0, 150, 150
        Released: kept sinks, top-scored tokens and recent window (the MT-Bench script's values).
    num_coming : int, default 0
        Released: tokens about to be appended (the recent window shrinks by it).

    State (``method.state``, paper): ``token_importance`` (B, Nk) and ``head_importance`` (B, Hq)
    float64, ``token_alive`` (B, Nk) and ``head_alive`` (B, Hq) bool.
    """

    name = "spatten"
    paper = ("SpAtten: Efficient Sparse Attention Architecture with Cascade Token and Head Pruning "
             "(Wang et al., 2021)")
    pattern = ("cascade token + head pruning by accumulated attention probabilities across layers (stateful); "
               "released: per-head KV eviction (sinks + top logit-sum + recent)")
    extra_defaults = {"variant": "paper", "dense_layers": 1, "token_keep": 0.9, "head_keep": 1.0, "start_size": 0,
                      "important_size": 150, "recent_size": 150, "num_coming": 0}
    capabilities = Capabilities(chunked=False, mask_format="token", own_output=True, stateful=True, cross_layer=True)

    def _check_params(self) -> None:
        p = self.params
        if p["variant"] not in ("paper", "released"):
            raise ValueError(f"variant must be 'paper' or 'released', got {p['variant']!r}")
        check_int(p["dense_layers"], "dense_layers")
        _check_share(p["token_keep"], "token_keep")
        _check_share(p["head_keep"], "head_keep")
        for f in ("start_size", "important_size", "recent_size", "num_coming"):
            check_int(p[f], f)

    def schedule(self) -> Schedule:
        return Schedule(dense_steps=int(self.params["dense_layers"]))

    def _ready_to_reuse(self) -> bool:
        return self.params["variant"] == "released" or "token_importance" in self.state

    # ------------------------------------------------------------------ paper: pieces
    def _column_mass(self, q, k, alive_tok, alive_head, causal, scale) -> np.ndarray:
        """Sum over alive heads and alive queries of the exact probabilities on the alive keys,
        (B, Nk) float64 (zero on pruned keys)."""
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        out = np.zeros((B, Nk))
        for b in range(B):
            idx = np.flatnonzero(alive_tok[b])
            if idx.size == 0 or not alive_head[b].any():
                continue
            ka = np.ascontiguousarray(k[b:b + 1, :, idx])
            qa = np.ascontiguousarray(q[b:b + 1, :, idx] if Nq == Nk else q[b:b + 1])
            mass, _ = _core.block_attention_map(qa, ka, qa.shape[2], 1, causal, scale, "sum")  # (1, Hq, 1, n)
            out[b, idx] = mass[0, alive_head[b], 0].astype(np.float64).sum(axis=0)
        return out

    def _prune(self, importance, alive, keep_share) -> np.ndarray:
        """The alive set after keeping ceil(keep_share * alive) most important alive entries."""
        new = np.zeros_like(alive)
        for b in range(alive.shape[0]):
            idx = np.flatnonzero(alive[b])
            n = max(1, math.ceil(keep_share * idx.size - 1e-9)) if idx.size else 0
            order = idx[np.argsort(-importance[b, idx], kind="stable")[:n]]
            new[b, order] = True
        return new

    @staticmethod
    def _indices(alive_tok, alive_head, Nq) -> TokenIndices:
        B, Nk = alive_tok.shape
        Hq = alive_head.shape[1]
        K = max(1, int(alive_tok.sum(axis=1).max()))
        idx = np.full((B, Hq, 1, K), -1, np.int32)
        for b in range(B):
            pos = np.flatnonzero(alive_tok[b]).astype(np.int32)
            idx[b, alive_head[b], 0, :pos.size] = pos
        return TokenIndices(idx, max(Nq, 1), Nk, assume_sorted=True)

    def _paper_next_sets(self, q, k, causal, scale, state_arrays):
        """(token_alive, head_alive) of a pruning call, from the carried importance when there is
        one, else from this input's own attention mass (all tokens and heads alive)."""
        B, Hq = q.shape[:2]
        Nk = k.shape[2]
        if state_arrays is not None:
            imp, alive = state_arrays["token_importance"], state_arrays["token_alive"]
            himp, halive = state_arrays["head_importance"], state_arrays["head_alive"]
        else:
            alive, halive = np.ones((B, Nk), bool), np.ones((B, Hq), bool)
            imp, himp = self._column_mass(q, k, alive, halive, causal, scale), None
        tok = self._prune(imp, alive, float(self.params["token_keep"]))
        head = halive if himp is None else self._prune(himp, halive, float(self.params["head_keep"]))
        return tok, head

    # ------------------------------------------------------------------ released: pieces
    def _released_indices(self, q, k, scale) -> TokenIndices:
        B, Hq, Nq, D = q.shape
        G = Hq // k.shape[1]
        sc = (1 / math.sqrt(D)) if scale is None else scale
        qs = q.astype(np.float64).sum(axis=2).reshape(B, k.shape[1], G, D)  # sum of the queries, per head
        scores = np.einsum("bkgd,bkjd->bkgj", qs, k.astype(np.float64)).reshape(B, Hq, -1) * sc
        keep = self.released_keep(scores)
        return TokenIndices(keep[:, :, None, :], max(Nq, 1), k.shape[2], assume_sorted=True)

    def released_keep(self, scores) -> np.ndarray:
        """:func:`released_keep` with this method's sizes."""
        p = self.params
        return released_keep(scores, start_size=p["start_size"], important_size=p["important_size"],
                             recent_size=p["recent_size"], num_coming=p["num_coming"])

    def evict_cache(self, cache: KVCache, layer: int, scores) -> np.ndarray:
        """Released flow: compact `layer` of `cache` to :meth:`released_keep` of `scores`
        (B, H, length) (H: the layer's heads or the query heads). Returns the kept lists."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a spattn.KVCache, got {type(cache).__name__}")
        scores = as_float_array(scores, "scores")
        n = cache.length(layer)
        if scores.ndim != 3 or scores.shape[2] != n:
            raise ValueError(f"scores must have shape (B, H, length={n}), got {scores.shape}")
        keep = self.released_keep(scores)
        if keep.shape[2] < n:
            cache.compact(layer, keep)
        return keep

    # ------------------------------------------------------------------ Method interface
    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        """The mask of the next pruning call (paper: from the carried importance, or this input's own
        attention mass when none is carried; released: the eviction of this call)."""
        if self.params["variant"] == "released":
            return self._released_indices(q, k, scale)
        carried = self.state.arrays if ("token_importance" in self.state and
                                        self.state.meta.get("shape") == self._sig(q, k, causal, scale)) else None
        tok, head = self._paper_next_sets(q, k, causal, scale, carried)
        return self._indices(tok, head, q.shape[2])

    @staticmethod
    def _sig(q, k, causal, scale):
        from ..state import shape_signature
        return shape_signature(q, k, k, causal, scale)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        """Run one layer: prune (after the dense layers), attend the alive keys, update the state."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        phase = self._begin_step(q, k, k, causal, scale)  # the signature ignores Dv, as _estimate's
        st = self.state
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if self.params["variant"] == "released":
            mask = self._released_indices(q, k, scale)
        else:
            carried = st.arrays if "token_importance" in st else None
            if phase == "dense":
                tok = np.ones((B, Nk), bool) if carried is None else st["token_alive"]
                head = np.ones((B, Hq), bool) if carried is None else st["head_alive"]
            else:
                tok, head = self._paper_next_sets(q, k, causal, scale, carried)
            mask = self._indices(tok, head, Nq)
        out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        if self.params["variant"] == "paper":
            imp = st["token_importance"] if "token_importance" in st else np.zeros((B, Nk))
            himp = st["head_importance"] if "head_importance" in st else np.zeros((B, Hq))
            imp = imp + self._column_mass(q, k, tok, head, causal, scale)
            rows = tok if Nq == Nk else np.ones((B, Nq), bool)
            himp = himp + np.where(head, np.einsum("bhqd,bq->bh", np.abs(out.astype(np.float64)), rows), 0.0)
            st["token_importance"], st["head_importance"] = imp, himp
            st["token_alive"], st["head_alive"] = tok, head
            self.last_info.update(alive_tokens=int(tok.sum(axis=1).max()), alive_heads=int(head.sum(axis=1).max()))
        self.last_info["mask"] = mask
        self._end_step()
        return (out, lse) if return_lse else out

    def readouts(self):
        r = super().readouts()
        r.update({k: self.last_info[k] for k in ("alive_tokens", "alive_heads") if k in self.last_info})
        return r
