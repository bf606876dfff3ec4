"""Sparse State Expansion (SSE): gated linear attention with one shared state and N routed
state partitions.

Pan et al., "Scaling Linear Attention with Sparse State Expansion" (arXiv 2507.16577); official
layer: BICLab/SpikingBrain2.0 ``flash-linear-attention_dev/fla/layers/sse.py`` (``SSEGLA``, its
``sse_linear_attention_varlen`` and ``sort_along_l``), GLA recurrence as
``fla/ops/gla/naive.py::naive_recurrent_gla``. The recurrence runs in C++
(``_core.sse_attention``: chunked, double precision inside a chunk, OpenMP over batch x head x
state); this module checks inputs and offers the official activations.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from . import _core
from ._validation import as_float_array, check_int

Result = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


def sse_activations(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: Optional[np.ndarray] = None, *,
                    k_softmax: bool = True, q_softmax: bool = False, gate_logit_normalizer: float = 16.0):
    """SSEGLA's feature maps on projected (pre-activation) inputs: q -> SiLU (softmax over the
    head dim with ``q_softmax``), k -> softmax over the head dim (``use_k_softmax``, the GLA
    default; SiLU otherwise), v -> SiLU, decay logits g -> logsigmoid(g) / 16. Returns
    (q, k, v, g) as float32 (g None stays None)."""
    def silu(x):
        return (x / (1.0 + np.exp(-x))).astype(np.float32)

    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    q, k, v = (as_float_array(x, n).astype(np.float64) for x, n in ((q, "q"), (k, "k"), (v, "v")))
    q = softmax(q) if q_softmax else silu(q)
    k = softmax(k) if k_softmax else silu(k)
    v = silu(v)
    if g is not None:
        g64 = as_float_array(g, "g").astype(np.float64)
        g = ((np.minimum(g64, 0) - np.log1p(np.exp(-np.abs(g64)))) / float(gate_logit_normalizer)).astype(np.float32)
    return q, k, v, g


def sse_attention(q1, k1, v, router_logits, *, g1=None, q2=None, k2=None, g2=None, top_k: int = 1,
                  scale: Optional[float] = None, emulq: bool = True, emulk: bool = True,
                  state: Optional[np.ndarray] = None, return_state: bool = False) -> Result:
    """SSE's state expansion (SSEGLA's ``sse_linear_attention_varlen``, before its output norm
    and projection), for activated inputs (see :func:`sse_activations`).

    * Shared state: the GLA recurrence S_t = diag(exp(g1_t)) S_{t-1} + k1_t v_t^T over every
      token, output scale * q1_t^T S_t.
    * Router: p_t = softmax(router_logits_t) over the N partitions, the top_k largest (lower
      index first on ties; the official torch.topk leaves ties unspecified). The same set is
      written and read (the varlen path needs num_writer == num_reader).
    * Partition n: the same recurrence over only the tokens routed to n, in order (a partition
      neither decays nor updates on other tokens), with q2 and k2 multiplied by p_t[n] (the read
      and write gates ``emulq`` / ``emulk``); its output is added to those tokens' rows.

    Parameters
    ----------
    q1, k1 : (B, H, L, dk) float32
    v : (B, H, L, dv)
    router_logits : (B, L, N)
        ``e_proj(x)``: one routing shared by every head.
    g1, g2 : (B, H, L, dk), optional
        Log-decays (<= 0) of the shared and the partition states; None: no decay (0).
    q2, k2 : (B, H, L, dk), optional
        The partition branch's query and key (official: q1 / k1 plus a LoRA term before the
        activation); None: q1 / k1.
    top_k : int, default 1
        Partitions per token (``num_writer`` = ``num_reader``; the layer default 1).
    scale : float, optional
        Multiplies q; default dk ** -0.5 (fla's GLA default).
    state : (B, 1 + N, H, dk, dv), optional
        Initial states (shared first), e.g. the returned state of an earlier chunk: a prefill
        split in chunks, or decode token by token, equals the whole call.
    return_state : bool
        Also return the final states (float64).

    Returns
    -------
    out (B, H, L, dv) float32, and the final state when ``return_state``.
    """
    q1, k1, v = as_float_array(q1, "q1"), as_float_array(k1, "k1"), as_float_array(v, "v")
    router = as_float_array(router_logits, "router_logits")
    if q1.ndim != 4:
        raise ValueError(f"q1 must be (B, H, L, dk), got shape {q1.shape}")
    B, H, L, dk = q1.shape
    if k1.shape != q1.shape:
        raise ValueError(f"k1 must have the shape of q1 {q1.shape}, got {k1.shape}")
    if v.ndim != 4 or v.shape[:3] != q1.shape[:3] or v.shape[3] < 1:
        raise ValueError(f"v must be (B, H, L, dv) = {q1.shape[:3]} + (dv,), got {v.shape}")
    if router.ndim != 3 or router.shape[:2] != (B, L) or router.shape[2] < 1:
        raise ValueError(f"router_logits must be (B, L, N) with B={B}, L={L}, got {router.shape}")
    N = router.shape[2]
    top_k = check_int(top_k, "top_k", lo=1)
    if top_k > N:
        raise ValueError(f"top_k must be <= the number of partitions N={N}, got {top_k}")
    zeros = None

    def opt(x, name, default):
        nonlocal zeros
        if x is None:
            if default is None:
                zeros = np.zeros_like(q1) if zeros is None else zeros
                return zeros
            return default
        x = as_float_array(x, name)
        if x.shape != q1.shape:
            raise ValueError(f"{name} must have the shape of q1 {q1.shape}, got {x.shape}")
        return x

    g1 = opt(g1, "g1", None)
    g2 = opt(g2, "g2", None)
    q2, k2 = opt(q2, "q2", q1), opt(k2, "k2", k1)
    for name, g in (("g1", g1), ("g2", g2)):
        if g is not zeros and not (g <= 0).all():
            raise ValueError(f"{name} must hold log-decays <= 0 (logsigmoid of the gate logits), "
                             f"got a maximum of {float(np.nanmax(g))}")
    for name, x in (("q1", q1), ("k1", k1), ("v", v), ("router_logits", router), ("q2", q2), ("k2", k2)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} must be finite")
    sc = float(dk ** -0.5 if scale is None else scale)
    if not np.isfinite(sc):
        raise ValueError(f"scale must be finite, got {scale!r}")
    st = None
    if state is not None:
        st = np.ascontiguousarray(np.asarray(state, dtype=np.float64))
        if st.shape != (B, 1 + N, H, dk, v.shape[3]):
            raise ValueError(f"state must be (B, 1 + N, H, dk, dv) = {(B, 1 + N, H, dk, v.shape[3])}, got {st.shape}")
    out, final = _core.sse_attention(q1, k1, v, g1, q2, k2, g2, router, top_k, sc, bool(emulq), bool(emulk), st)
    return (out, final) if return_state else out


__all__ = ["sse_activations", "sse_attention"]
