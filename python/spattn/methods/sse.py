"""Sparse State Expansion as a registry method: SSE's linear-attention recurrence in place of
softmax attention, on a layer's (q, k, v).

The layer-exact operation is :func:`spattn.linear.sse_attention` (inputs from the layer's own
projections); this method is what an attention-level harness can run on (q, k, v) alone.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._validation import as_causal, as_float_array, as_scale, check_int
from ..linear import sse_activations, sse_attention
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class SSE(Method):
    """Sparse State Expansion (Pan et al., arXiv 2507.16577; official SSEGLA in
    BICLab/SpikingBrain2.0 ``fla/layers/sse.py``): a gated linear-attention layer, not a mask
    over softmax attention. Every token writes to a shared dk x dv state and to the states of its
    top-k partitions (softmax router over ``num_partitions``), and reads from the same ones.

    On (q, k, v) alone the layer's learned parts are not there, so this method runs SSE with:
    the official feature maps on q, k, v (``activations``: SiLU / softmax over the head dim /
    SiLU), no decay (g = 0, i.e. logsigmoid(+inf)), the partition branch equal to the shared
    one (q2 = q, k2 = k: the official LoRA terms are learned), and a router that stands in for
    the learned ``e_proj``: logits = (keys averaged over the kv heads) @ W with W a fixed seeded
    Gaussian (``seed``). Pass ``router_logits``, ``g1``, ``q2``, ``k2``, ``g2`` to the call to
    use a trained layer's values. A model trained with softmax attention is not an SSE model:
    the output is the SSE recurrence's, not an approximation of softmax attention.

    Parameters
    ----------
    num_partitions : int, default 4
        ``num_sparse_partition`` (the layer default).
    top_k : int, default 1
        ``num_writer`` = ``num_reader`` (the layer default 1; the model config uses 2).
    activations : bool, default True
    seed : int, default 0

    Notes
    -----
    Causal prefill (Nq == Nk): decode needs the recurrent state carried across calls, which
    :func:`spattn.linear.sse_attention` returns (``return_state``) and takes (``state``).
    ``estimate`` returns the full causal mask: through the shared state every query reads every
    earlier key (``capabilities.own_output``: no kernel runs that mask). GQA: k and v are repeated
    over the query heads of their group.
    """

    name = "sse"
    paper = "Pan et al., Sparse State Expansion, 2025"
    pattern = "linear attention: shared state + top-k routed state partitions (no softmax)"
    params_struct = None
    extra_defaults = {"num_partitions": 4, "top_k": 1, "activations": True, "seed": 0}
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="none", own_output=True)

    def _check_params(self) -> None:
        self.params["num_partitions"] = check_int(self.params["num_partitions"], f"{self.name}: num_partitions", lo=1)
        self.params["top_k"] = check_int(self.params["top_k"], f"{self.name}: top_k", lo=1)
        if self.params["top_k"] > self.params["num_partitions"]:
            raise ValueError(f"{self.name}: top_k must be <= num_partitions={self.params['num_partitions']}, "
                             f"got {self.params['top_k']}")
        self.params["seed"] = check_int(self.params["seed"], f"{self.name}: seed")
        if not isinstance(self.params["activations"], (bool, np.bool_)):
            raise TypeError(f"{self.name}: activations must be a bool, got {self.params['activations']!r}")

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        return BlockMask.full(q.shape[0], 1, q.shape[2], k.shape[2], 64, 64)

    def router_logits(self, k: np.ndarray) -> np.ndarray:
        """The stand-in router's logits (B, L, N) for keys k (B, Hkv, L, D)."""
        W = np.random.default_rng(self.params["seed"]).standard_normal((k.shape[3], self.params["num_partitions"]))
        return (k.astype(np.float64).mean(axis=1) @ W / np.sqrt(k.shape[3])).astype(np.float32)

    def __call__(self, q, k, v, *, causal: bool = True, scale: Optional[float] = None, return_lse: bool = False,
                 router_logits=None, g1=None, q2=None, k2=None, g2=None):
        q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
        causal, scale = as_causal(causal), as_scale(scale)
        self.check_call(q, k, causal)
        if return_lse:
            raise ValueError(f"{self.name}: return_lse is not defined for a linear-attention recurrence (no softmax)")
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"v must have the (B, Hkv, Nk) of k {k.shape[:3]}, got {v.shape}")
        G = q.shape[1] // k.shape[1]
        router = self.router_logits(k) if router_logits is None else router_logits
        kq, vq = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
        if self.params["activations"]:  # q2 / k2, when given, are pre-activation too
            if q2 is not None:
                q2 = sse_activations(q2, kq, vq)[0]
            if k2 is not None:
                k2 = sse_activations(q, as_float_array(k2, "k2"), vq)[1]
            q, kq, vq, _ = sse_activations(q, kq, vq)
        out = sse_attention(q, kq, vq, router, g1=g1, q2=q2, k2=k2, g2=g2, top_k=self.params["top_k"], scale=scale)
        self.last_info = {"num_partitions": self.params["num_partitions"], "top_k": self.params["top_k"],
                          "mask": self._estimate(q, k, causal, scale)}
        return out


__all__ = ["SSE"]
