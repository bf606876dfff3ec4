"""DLGSANet's SparseGSA: transposed (channel) attention with ReLU in place of softmax.

Li et al., "DLGSANet: Lightweight Dynamic Local and Global Self-Attention Networks for Image
Super-Resolution", ICCV 2023 (arXiv 2301.02031); official code NeonLeexiang/DLGSANet
``basicsr/archs/dlgsanet_arch.py`` (``SparseAttention._forward``, ``forward``, ``grids``,
``grids_inverse``). This is **channel attention, not token sparsity**: per head a D x D map
A = ReLU(t * q_hat^T k_hat) over all tokens (q, k L2-normalised along the tokens), out = v A^T;
the "sparsity" is the zeros ReLU puts into A. At test time the official model splits the image
into overlapping tlc_kernel x tlc_kernel windows (TLC), runs the attention per window and
averages the overlaps.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..masks import BlockMask
from .base import Capabilities, Method, register
from .svga import default_grid


def tlc_windows(h: int, w: int, kernel: int) -> List[Tuple[int, int, int, int]]:
    """The official TLC ``grids`` windows (i, j, k1, k2) of an h x w map: k1 = min(h, kernel),
    k2 = min(w, kernel), steps ceil((h - k1) / (rows - 1)) with rows = (h - 1) // k1 + 1 (the same
    for columns), the last window of a line snapped to the border."""
    k1, k2 = min(h, kernel), min(w, kernel)
    nr, nc = (h - 1) // k1 + 1, (w - 1) // k2 + 1
    step_j = k2 if nc == 1 else int(np.ceil((w - k2) / (nc - 1) - 1e-8))
    step_i = k1 if nr == 1 else int(np.ceil((h - k1) / (nr - 1) - 1e-8))
    out = []
    i, last_i = 0, False
    while i < h and not last_i:
        if i + k1 >= h:
            i, last_i = h - k1, True
        j, last_j = 0, False
        while j < w and not last_j:
            if j + k2 >= w:
                j, last_j = w - k2, True
            out.append((i, j, k1, k2))
            j += step_j
        i += step_i
    return out


def _channel_relu_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """(.., N, D) inputs, tokens on axis -2: ReLU(t * normalize(q)^T normalize(k)) applied to v."""
    qn = q / np.maximum(np.linalg.norm(q, axis=-2, keepdims=True), 1e-12)   # F.normalize(dim=-1), eps 1e-12
    kn = k / np.maximum(np.linalg.norm(k, axis=-2, keepdims=True), 1e-12)
    a = np.maximum(np.swapaxes(qn, -1, -2) @ kn * temp, 0.0)               # (.., D, D)
    return v @ np.swapaxes(a, -1, -2), a


@register
class SparseGSA(Method):
    """DLGSANet SparseGSA: ReLU channel attention (Restormer MDTA with softmax replaced by ReLU).

    For each query head (its kv head under GQA), with tokens on a row-major H x W grid:
    q_hat, k_hat = q, k divided by their L2 norm over the tokens; A = ReLU(t_h * q_hat^T k_hat)
    (D x D, no normalisation after the ReLU); out = v A^T (N x D). Needs Dv == D.

    Parameters
    ----------
    temperature : float or sequence of Hq floats, default 1.0
        The learned per-head temperature (initialised to 1 in the official model).
    tlc : bool, default True
        The official test-time split (TLC, ``tlc_flag=True`` in eval): overlapping windows of
        ``tlc_kernel`` x ``tlc_kernel`` tokens of the grid, attention per window, overlaps
        averaged. A grid within one window runs whole (the training path).
    tlc_kernel : int, default 48
    grid : (H, W) or None
        The token grid (H * W == N); None: the default grid of :mod:`spattn.methods.svga`.

    Notes
    -----
    * Not token sparsity (``capabilities.channel_attention``): every key is read, ``estimate``
      returns the full BlockMask and ``scale`` is not used (the temperature plays its role);
      ``last_info["relu_zero_fraction"]`` is the fraction of A entries ReLU zeroed.
    * Non-causal, prefill only (q and k are normalised over the same tokens).
    * The qkv 1x1 + depthwise 3x3 convolutions and the output projection belong to the model.
    * Computed in float64 numpy: the D x D products are over the token axis, a shape the
      attention kernels do not have.
    """

    name = "sparse_gsa"
    aliases = ("dlgsanet",)
    paper = "Li et al., DLGSANet (SparseGSA), ICCV 2023"
    pattern = "channel (transposed) attention with ReLU instead of softmax; TLC test-time windows"
    params_struct = None
    extra_defaults = {"temperature": 1.0, "tlc": True, "tlc_kernel": 48, "grid": None}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="none", own_output=True,
                                channel_attention=True)

    def _check_params(self) -> None:
        p = self.params
        t = p["temperature"]
        if isinstance(t, (bool, np.bool_)):
            raise TypeError(f"{self.name}: temperature must be a float or a sequence of floats, got bool")
        if isinstance(t, (int, float, np.integer, np.floating)):
            if not np.isfinite(float(t)):
                raise ValueError(f"{self.name}: temperature must be finite, got {t}")
            p["temperature"] = float(t)
        else:
            arr = as_float_array(t, f"{self.name}: temperature")
            if arr.ndim != 1 or not np.all(np.isfinite(arr)):
                raise ValueError(f"{self.name}: temperature must be a float or a 1D sequence of finite floats "
                                 f"(one per query head), got shape {arr.shape}")
            p["temperature"] = tuple(float(x) for x in arr)
        if not isinstance(p["tlc"], (bool, np.bool_)):
            raise TypeError(f"{self.name}: tlc must be a bool, got {type(p['tlc']).__name__}")
        p["tlc_kernel"] = check_int(p["tlc_kernel"], f"{self.name}: tlc_kernel", lo=1)
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

    def _temperature(self, hq: int) -> np.ndarray:
        t = self.params["temperature"]
        if isinstance(t, tuple):
            if len(t) != hq:
                raise ValueError(f"{self.name}: temperature holds {len(t)} values, but Hq={hq}")
            return np.asarray(t, np.float64)[:, None, None]
        return np.full((hq, 1, 1), t)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        self.grid_of(q.shape[2])
        return BlockMask.full(q.shape[0], 1, q.shape[2], k.shape[2], 64, 64)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        if return_lse:
            raise ValueError(f"{self.name}: return_lse is undefined (ReLU channel attention has no softmax)")
        if v.shape[3] != q.shape[3]:
            raise ValueError(f"{self.name}: channel attention needs Dv == D, got v of D={v.shape[3]} and q of "
                             f"D={q.shape[3]}")
        B, Hq, n, D = q.shape
        G = Hq // k.shape[1]
        H, W = self.grid_of(n)
        temp = self._temperature(Hq)
        q64 = q.astype(np.float64).reshape(B, Hq, H, W, D)
        k64 = np.repeat(k, G, axis=1).astype(np.float64).reshape(B, Hq, H, W, D)
        v64 = np.repeat(v, G, axis=1).astype(np.float64).reshape(B, Hq, H, W, D)
        wins = tlc_windows(H, W, self.params["tlc_kernel"]) if self.params["tlc"] else [(0, 0, H, W)]
        out = np.zeros((B, Hq, H, W, D))
        count = np.zeros((H, W, 1))
        zeros = total = 0
        for (i, j, k1, k2) in wins:
            sl = (slice(None), slice(None), slice(i, i + k1), slice(j, j + k2))
            part, a = _channel_relu_attention(q64[sl].reshape(B, Hq, k1 * k2, D), k64[sl].reshape(B, Hq, k1 * k2, D),
                                              v64[sl].reshape(B, Hq, k1 * k2, D), temp)
            out[sl] += part.reshape(B, Hq, k1, k2, D)
            count[i:i + k1, j:j + k2] += 1.0
            zeros += int(np.count_nonzero(a == 0))
            total += a.size
        self.last_info = {"windows": len(wins), "relu_zero_fraction": zeros / max(total, 1)}
        return np.ascontiguousarray((out / count).reshape(B, Hq, n, D), dtype=np.float32)

    def readouts(self):
        return dict(self.last_info)
