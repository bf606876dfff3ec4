"""MobileViG's Sparse Vision Graph Attention (SVGA): a static cyclic axial graph.

Munir, Avery, Marculescu, "MobileViG: Graph-Based Sparse Attention for Mobile Vision
Applications", CVPRW 2023 (arXiv 2307.00395); official code SLDGroup/MobileViG
``models/mobilevig.py`` (``MRConv4d.forward``, ``Grapher``). Each node of an H x W grid links to
the nodes K, 2K, ... steps before it, cyclically, along its column and its row; the official
aggregation is max-relative: xj(i) = max(0, max over neighbours n of x(i) - x(n)), channel by
channel (the zero is the self edge). Softmax attention over the same neighbourhood is a spattn
variant (not in the paper), run by the token-sparse kernel.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..kernels import token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

AGGREGATIONS = ("max_relative", "softmax")


def default_grid(n: int) -> Tuple[int, int]:
    """The documented default grid of N tokens: H = the largest divisor of N with H <= sqrt(N),
    W = N / H (row-major; a prime N gives 1 x N)."""
    h = max(1, math.isqrt(max(n, 1)))
    while n % h:
        h -= 1
    return h, max(n, 1) // h


def svga_pattern(H: int, W: int, K: int = 2) -> np.ndarray:
    """(H*W, deg) int32 neighbour lists of the SVGA graph, each row ascending, self included.

    Node n = h*W + w links to ((h - i) mod H, w) for i = K, 2K, ... < H and to
    (h, (w - i) mod W) for i = K, 2K, ... < W (the official ``torch.cat`` rolls), plus itself:
    deg = 1 + len(range(K, H, K)) + len(range(K, W, K)); the entries are distinct."""
    H, W, K = check_int(H, "H", lo=1), check_int(W, "W", lo=1), check_int(K, "K", lo=1)
    h, w = np.divmod(np.arange(H * W), W)
    cols = [h * W + w]
    cols += [((h - i) % H) * W + w for i in range(K, H, K)]
    cols += [h * W + (w - i) % W for i in range(K, W, K)]
    return np.sort(np.stack(cols, axis=1), axis=1).astype(np.int32)


def svga_max_relative(x, K: int = 2) -> np.ndarray:
    """The official MRConv4d aggregation on a (B, C, H, W) map: max(0, max over the graph
    neighbours of x - x_neighbour), per channel; returns xj of x's shape (float32). The model then
    applies Conv1x1(concat[x, xj]), BN and GELU (its weights are not part of the pattern)."""
    x = as_float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {x.shape}")
    K = check_int(K, "K", lo=1)
    xj = np.zeros_like(x)
    H, W = x.shape[2], x.shape[3]
    for i in range(K, H, K):
        np.maximum(xj, x - np.roll(x, i, axis=2), out=xj)
    for i in range(K, W, K):
        np.maximum(xj, x - np.roll(x, i, axis=3), out=xj)
    return xj


@register
class SVGA(Method):
    """MobileViG SVGA on a row-major H x W token grid: the static cyclic graph (hops K, 2K, ...
    along columns and rows) as TokenIndices, with the official max-relative aggregation or, as a
    spattn variant, softmax attention over the same neighbourhood.

    Parameters
    ----------
    K : int, default 2
        The hop (2 in every released model).
    grid : (H, W) or None
        The token grid (H * W must equal N); None: :func:`default_grid`.
    aggregation : {"max_relative", "softmax"}, default "max_relative"
        "max_relative" (official MRConv4d): out[i] = max(0, max_{n in N(i)} v[i] - v[n]) channel by
        channel, where v is the values of the query head's kv head (q and k are not read; Dv
        need not equal D). "softmax" (spattn variant, not in the paper): softmax(q k^T * scale)
        over the neighbourhood, i.e. the mask run by the token-sparse kernel.

    Notes
    -----
    * Non-causal (a 2D image), prefill only (Nq == Nk, one grid).
    * The max-relative output is the aggregation ``xj`` alone; the concat with x and the 1x1
      convolution that follow belong to the model (:func:`svga_max_relative` works on the
      official (B, C, H, W) layout).
    """

    name = "svga"
    aliases = ("mobilevig",)
    paper = "Munir et al., MobileViG (SVGA), CVPRW 2023"
    pattern = "static cyclic axial graph: hops K, 2K, ... along rows and columns (+ self)"
    params_struct = None
    extra_defaults = {"K": 2, "grid": None, "aggregation": "max_relative"}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="token", own_output=True)

    def _check_params(self) -> None:
        p = self.params
        p["K"] = check_int(p["K"], f"{self.name}: K", lo=1)
        if p["aggregation"] not in AGGREGATIONS:
            raise ValueError(f"{self.name}: aggregation must be one of {AGGREGATIONS}, got {p['aggregation']!r}")
        if p["grid"] is not None:
            g = p["grid"]
            if not isinstance(g, (tuple, list)) or len(g) != 2:
                raise TypeError(f"{self.name}: grid must be a pair (H, W) or None, got {g!r}"[:200])
            p["grid"] = (check_int(g[0], f"{self.name}: grid[0]", lo=1), check_int(g[1], f"{self.name}: grid[1]", lo=1))

    def grid_of(self, n: int) -> Tuple[int, int]:
        g = self.params["grid"]
        if g is None:
            return default_grid(n)
        if g[0] * g[1] != n:
            raise ValueError(f"{self.name}: grid {g} holds {g[0] * g[1]} tokens, but N={n}")
        return g

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, n = q.shape[:3]
        H, W = self.grid_of(n)
        idx = svga_pattern(H, W, self.params["K"])
        return TokenIndices(np.broadcast_to(idx, (B, Hq) + idx.shape), group_size=1, kv_len=n, assume_sorted=True)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        mask = self._estimate(q, k, causal, scale)
        self.last_info = {"mask": mask, "aggregation": self.params["aggregation"]}
        if self.params["aggregation"] == "softmax":
            return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
        if return_lse:
            raise ValueError(f"{self.name}: return_lse needs aggregation='softmax' (max-relative has no softmax)")
        n = q.shape[2]
        H, W = self.grid_of(n)
        G = q.shape[1] // k.shape[1]
        x = np.swapaxes(v, 2, 3).reshape(v.shape[0], v.shape[1], v.shape[3], H, W)   # (B, Hkv, Dv, H, W)
        xj = svga_max_relative(x.reshape(-1, v.shape[3], H, W), self.params["K"])
        out = np.swapaxes(xj.reshape(v.shape[0], v.shape[1], v.shape[3], n), 2, 3)
        return np.ascontiguousarray(np.repeat(out, G, axis=1), dtype=np.float32)
