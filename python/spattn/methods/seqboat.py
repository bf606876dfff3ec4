"""SMA / SeqBoat: a router activates tokens; the active tokens are packed, attend to each other with
local window attention (un-normalised ReLU^2, relative position bias by original distance) and are
scattered back scaled by their router probability.

Ren et al., "Sparse Modular Activation for Efficient Sequence Modeling", NeurIPS 2023; written from
the official code, renll/SeqBoat (HEAD 5a34aed) ``standalone_seqboat.py``: ``LatentConfigurator``
(router), ``SeqBoatLayer.forward`` (activation, ``compress_seq`` / ``extract``),
``element_attention`` / ``local_attention`` (window, ReLU^2, scaling) and
``FastRelativePositionalBias`` (the bias table). Attention runs on the token-sparse kernel with
``activation="relu2"`` and the table as its relative-position bias (``rel_bias=``), over per-query
lists of original key positions, so packing is implicit: nothing is copied, no Nq x Nk buffer.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._validation import as_causal, check_positive_int, check_qkv
from ..kernels import token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

ACTIVATIONS = ("relu2", "softmax")


@register
class SeqBoat(Method):
    """SeqBoat's attention unit (SMA), as ``SeqBoatLayer``.

    1. Router (``LatentConfigurator``): per token ``p = softmax(u / temperature)`` over 2 options,
       ``u = x W^T + b``; the token is active when option 1 wins (``max`` ties go to option 0) and
       its gate is ``g = max(p)`` (0 when inactive).
    2. Packing: when ``max_b(active count) / N < density_threshold`` the active tokens of each batch
       row are packed in order (``compress_seq``); otherwise positions stay and inactive keys are
       masked (the official uncompressed branch).
    3. Local attention in the packed index space: causal, packed query c sees packed keys
       c - w .. c; bidirectional, c - w .. c + w (``exact_windowsize``). Scores
       ``q.k / w`` (causal) or ``q.k / (2 w)`` (bidirectional) plus the relative bias
       ``rel_pos_bias[clip(j - i, -(P-1), P-1) + P - 1]`` by *original* positions i, j; weights
       ``relu(s)^2`` without normalisation (``attention_activation='relu2'``, the default) or the
       softmax of ``q.k / sqrt(D) + bias``.
    4. Output scattered back to original positions, times the gate (inactive tokens: 0).

    Parameters
    ----------
    window_size : int, default 256
        w, single-sided (``SeqBoatLayer`` default).
    activation : {"relu2", "softmax"}, default "relu2"
    router_weight : array (2, Hkv * D), optional
        The router's linear map. spattn has no hidden states: the router reads the keys, heads
        concatenated (a stand-in for the official input, the EMA output ``mx``, a model part).
        None: every token active with gate 1 (spattn default, no routing).
    router_bias : array (2,), optional
    router_temperature : float, optional
        ``exp(temp)``; None: its initial value ``init_temp_scale * sqrt(input width)`` with
        init_temp_scale = 1.
    rel_pos_bias : array (2P - 1,) or (Hq, 2P - 1), optional
        ``FastRelativePositionalBias`` table (P = max_positions, official 1024; offsets beyond
        P - 1 take the end entries, as the official padding). None: no bias.
    density_threshold : float, default 1.0
        Pack only below this density (standalone 1.0; the fairseq unit 0.9).

    Notes
    -----
    Deviations: the output is the attention output times the gate; the official multiplies
    ``h_proj(attn_out * r)`` by it (the GAU projections ``mx_proj`` / ``h_proj``, the EMA and the
    residual are model parts outside spattn). q and k are taken as given (the official builds
    them from one shared z with per-branch scale/offset). Float32. No decode (the standalone layer
    has no incremental state). ``scale``, when given, replaces the official scaling.
    """

    name = "seqboat"
    aliases = ("sma",)
    paper = "Ren et al., Sparse Modular Activation (SeqBoat), NeurIPS 2023"
    pattern = "router-activated tokens, packed; local window over the packed order with ReLU^2 weights and relative bias"
    extra_defaults = {"window_size": 256, "activation": "relu2", "router_weight": None, "router_bias": None,
                      "router_temperature": None, "rel_pos_bias": None, "density_threshold": 1.0}
    capabilities = Capabilities(chunked=False, decode=False, mask_format="token", own_output=True)

    def _check_params(self) -> None:
        p = self.params
        p["window_size"] = check_positive_int(p["window_size"], "window_size")
        if p["activation"] not in ACTIVATIONS:
            raise ValueError(f"seqboat: activation must be one of {ACTIVATIONS}, got {p['activation']!r}")
        for name, ndims in (("router_weight", (2,)), ("router_bias", (1,)), ("rel_pos_bias", (1, 2))):
            val = p.get(name)
            if val is None:
                continue
            arr = np.asarray(val)
            if not np.issubdtype(arr.dtype, np.floating) or arr.ndim not in ndims or not np.all(np.isfinite(arr)):
                raise ValueError(f"seqboat: {name} must be a finite float array with {ndims} dimension(s), got "
                                 f"dtype {arr.dtype}, shape {arr.shape}")
            p[name] = arr.astype(np.float32)
        if p["router_weight"] is not None and p["router_weight"].shape[0] != 2:
            raise ValueError(f"seqboat: router_weight must have shape (2, Hkv * D), got {p['router_weight'].shape}")
        if p["router_bias"] is not None and p["router_bias"].shape != (2,):
            raise ValueError(f"seqboat: router_bias must have shape (2,), got {p['router_bias'].shape}")
        if p["rel_pos_bias"] is not None and p["rel_pos_bias"].shape[-1] % 2 != 1:
            raise ValueError(f"seqboat: rel_pos_bias must have an odd last axis 2P - 1, got {p['rel_pos_bias'].shape}")
        for name in ("router_temperature", "density_threshold"):
            val = p[name]
            if val is None and name == "router_temperature":
                continue
            if isinstance(val, bool) or not isinstance(val, (int, float, np.floating)) or not (val > 0 and
                                                                                             np.isfinite(val)):
                raise ValueError(f"seqboat: {name} must be a finite float > 0, got {val!r}")
            p[name] = float(val)

    def route(self, k: np.ndarray):
        """(active (B, N) bool, gate (B, N) float32) of the router on the keys (see the class)."""
        B, Hkv, N, D = k.shape
        W = self.params["router_weight"]
        if W is None:
            return np.ones((B, N), bool), np.ones((B, N), np.float32)
        if W.shape != (2, Hkv * D):
            raise ValueError(f"seqboat: router_weight must have shape (2, Hkv * D) = (2, {Hkv * D}), got {W.shape}")
        x = k.transpose(0, 2, 1, 3).reshape(B, N, Hkv * D).astype(np.float64)
        u = x @ W.T.astype(np.float64)
        if self.params["router_bias"] is not None:
            u = u + self.params["router_bias"]
        temp = self.params["router_temperature"] or float(np.sqrt(Hkv * D))
        u = u / temp
        p = np.exp(u - u.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        active = p[..., 1] > p[..., 0]
        return active, np.where(active, p.max(-1), 0.0).astype(np.float32)

    def select(self, active: np.ndarray, Hq: int, causal: bool) -> TokenIndices:
        """Per query the original positions of the keys of its packed window (inactive: none)."""
        B, N = active.shape
        w = self.params["window_size"]
        K = max(1, min(N, w + 1 if causal else 2 * w + 1))
        rows = np.full((B, N, K), -1, np.int32)
        pack = active.sum(1).max() / max(N, 1) < self.params["density_threshold"]
        for b in range(B):
            pos = np.flatnonzero(active[b])
            for c, i in enumerate(pos):
                if pack:
                    keys = pos[max(0, c - w):(c + 1 if causal else min(pos.size, c + w + 1))]
                else:
                    lo, hi = np.searchsorted(pos, i - w), np.searchsorted(pos, i if causal else i + w, side="right")
                    keys = pos[lo:hi]
                rows[b, i, :keys.size] = keys
        idx = np.ascontiguousarray(np.broadcast_to(rows[:, None], (B, Hq, N, K)))
        return TokenIndices(idx, 1, N, assume_sorted=True)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"seqboat needs Nq == Nk; got Nq={q.shape[2]}, Nk={k.shape[2]}")
        active, gate = self.route(k)
        self.last_info = {"active": active, "gate": gate, "density": float(active.mean())}
        return self.select(active, q.shape[1], causal)

    def readouts(self):
        return {"active_fraction": self.last_info["density"]} if "density" in self.last_info else {}

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Route, attend the packed windows (ReLU^2 or softmax, relative bias), scatter back times the gate."""
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        causal = as_causal(causal)
        mask = self.estimate(q, k, causal=causal, scale=scale)
        gate = self.last_info["gate"]
        relu2 = self.params["activation"] == "relu2"
        if scale is None and relu2:
            w = self.params["window_size"]
            scale = 1.0 / (w if causal else 2 * w)
        out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True,
                                          rel_bias=self.params["rel_pos_bias"], activation=self.params["activation"])
        out *= gate[:, None, :, None]
        self.last_info["mask"] = mask
        return (out, lse) if return_lse else out


__all__ = ["SeqBoat", "ACTIVATIONS"]
