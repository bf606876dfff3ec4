"""DeltaLLM: temporal delta thresholding of the queries, with exact attention in a local window.

Qi, Gao, Ren and Chen, "DeltaLLM: A Training-Free Framework Exploiting Temporal Sparsity for
Efficient Edge LLM Inference", arXiv 2507.19608 (2025); see /shared/methods/stateful/deltallm.md.

NO OFFICIAL CODE EXISTS, and only the abstract and introduction of the paper could be read:
everything below the abstract's two components ("delta matrix construction" giving temporal
sparsity; "hybrid attention": full attention inside a local context window, delta approximation
outside it) is spattn's reading, in the delta-network line of the authors (DeltaRNN / Spartus).
UNVERIFIED choices, each one:

1. The delta is taken on the **queries**, consecutive query tokens being the time steps (not on
   the keys, nor on score rows).
2. Per (batch, head) a reference q_ref starts at **0** (or at ``q_ref`` passed in); for query t,
   ``delta = q_t - q_ref``; the elements with ``|delta| >= threshold`` update q_ref (the others are
   zeroed: this is the "temporal sparsity"), so out-of-window logits are ``q_ref_t . k_j``, which
   equals the incremental ``S_t = S_{t-1} + delta_sparse . K^T``.
3. The local window holds the last ``local_window`` keys of each query, itself included
   (``j > p - local_window`` for query position p): their logits are exact ``q_t . k_j``.
4. One softmax over the mixed exact / approximate logits (computed here exactly as the merge, by
   log-sum-exp, of window attention with q and causal attention of q_ref over the older keys: the
   two key sets are disjoint, so the merge is that single softmax).
5. Defaults ``threshold = 0.1`` (absolute, on the query elements as the model produces them,
   after RoPE) and ``local_window = 32`` are spattn's picks, not the paper's.
6. Causal only; the threshold is absolute and the same for every head and layer.

State across calls (decode): pass the previous call's ``last_info["q_ref"]`` as ``q_ref=`` to the
next call. ``last_info["temporal_sparsity"]`` is the share of query elements whose delta was
zeroed. Both branches run on spattn's kernels (window attention, prefix attention, merge_states).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..kernels import attention, merge_states, window_attention
from ..masks import BlockMask
from .base import Capabilities, Method, register


def delta_queries(q: np.ndarray, threshold: float, q_ref: Optional[np.ndarray] = None):
    """The held references of thresholded query deltas.

    Returns (q_hat (B, H, N, D) float32: the reference after query t, zeroed share of the delta
    elements, the last reference (B, H, D)).
    """
    B, H, N, D = q.shape
    ref = np.zeros((B, H, D), np.float32) if q_ref is None else q_ref.astype(np.float32, copy=True)
    out = np.empty_like(q, dtype=np.float32)
    zeroed = 0
    th = np.float32(threshold)
    for t in range(N):
        delta = q[:, :, t] - ref
        fire = np.abs(delta) >= th
        zeroed += int(fire.size - fire.sum())
        ref = np.where(fire, q[:, :, t], ref)
        out[:, :, t] = ref
    share = zeroed / max(q.size, 1)
    return out, share, ref


@register
class DeltaLLM(Method):
    """DeltaLLM (paper only, see the module docstring for every unverified choice): exact
    attention over the last ``local_window`` keys, and logits from a thresholded-delta query
    reference for the older keys, in one softmax.

    Parameters
    ----------
    threshold : float, default 0.1
        Query-delta elements with ``|delta| < threshold`` are zeroed (the reference keeps them).
    local_window : int, default 32
        Keys per query attended with exact logits (the query's own position included); >= 1.
    """

    name = "deltallm"
    aliases = ("delta-llm",)
    paper = ("DeltaLLM: A Training-Free Framework Exploiting Temporal Sparsity for Efficient Edge LLM Inference "
             "(Qi et al., 2025)")
    pattern = ("thresholded temporal query deltas outside an exact local window, one softmax "
               "(paper only, unverified reading)")
    extra_defaults = {"threshold": 0.1, "local_window": 32}
    capabilities = Capabilities(noncausal=False, mask_format="block", own_output=True)

    def _check_params(self) -> None:
        t = self.params["threshold"]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(f"threshold must be a real number, got {type(t).__name__}")
        if not (math.isfinite(float(t)) and float(t) >= 0):
            raise ValueError(f"threshold must be a finite number >= 0, got {t}")
        check_int(self.params["local_window"], "local_window", lo=1)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        """Every visible key is read (exactly or through the delta reference): the full map."""
        return BlockMask.full(q.shape[0], 1, q.shape[2], k.shape[2])

    def __call__(self, q, k, v, *, causal: bool = True, scale: Optional[float] = None, return_lse: bool = False,
                 q_ref=None):
        """Hybrid attention of q over (k, v), causal. `q_ref` (B, Hq, D): the reference carried from
        the previous call (default zeros); the new one is ``last_info["q_ref"]``."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        B, Hq, Nq, D = q.shape
        Nk = k.shape[2]
        if q_ref is not None:
            q_ref = as_float_array(q_ref, "q_ref")
            if q_ref.shape != (B, Hq, D):
                raise ValueError(f"q_ref must have shape (B, Hq, D) = {(B, Hq, D)}, got {q_ref.shape}")
        W = int(self.params["local_window"])
        q_hat, share, last = delta_queries(q, float(self.params["threshold"]), q_ref)
        out, lse = window_attention(q, k, v, sinks=0, left=W - 1, right=0, causal=True, scale=scale,
                                    return_lse=True)
        if Nk > W:
            # older keys j <= p - W: causal attention of q_hat over the first Nk - W keys (bottom-right
            # alignment shifts each query's limit by exactly W)
            out_f, lse_f = attention(q_hat, k, v, kv_len=Nk - W, causal=True, scale=scale, return_lse=True)
            out, lse = merge_states(out, lse, out_f, lse_f)
        self.last_info = {"mask": self._estimate(q, k, True, scale), "q_ref": last, "temporal_sparsity": share}
        out = np.ascontiguousarray(out, dtype=np.float32)
        return (out, np.ascontiguousarray(lse, dtype=np.float32)) if return_lse else out

    def readouts(self):
        return {"temporal_sparsity": self.last_info["temporal_sparsity"]} if "temporal_sparsity" in self.last_info \
            else {}
