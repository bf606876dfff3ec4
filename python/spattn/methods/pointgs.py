"""PointGS: self-attention of each 3D point over its k nearest neighbours (paper only).

Xiang et al., "Point Attention-Aware Sparse View Synthesis with Gaussian Splatting", arXiv 2025.
**No official code was found**: the pattern follows the paper's description (each Gaussian point
interacts with its nearest neighbours in 3D). k, whether a point is its own neighbour and the
relative-position term are not verified against the paper's body (see the class notes).

The kNN index builder is here: :func:`knn_brute` (exact, chunked rows, no N x N buffer) and
:func:`knn_grid` (a uniform grid searched ring by ring until the k-th distance is certified),
which give identical indices, ties broken by the lower index; :func:`knn_indices` picks one by size.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .._validation import as_float_array, check_int
from ..masks import TokenIndices
from .base import Capabilities, Method, register

BRUTE_MAX = 4096        # knn_indices: brute force up to this many points, the grid above
_CHUNK = 512            # query rows per brute-force distance block


def _check_points(points, name: str = "points") -> np.ndarray:
    p = as_float_array(points, name)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} holds NaN or inf")
    return p.astype(np.float64)


def _sq_dist(p: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Squared distances (len(rows), len(cols)), summed coordinate by coordinate (so both
    builders compute bit-identical values for a pair)."""
    d = np.zeros((len(rows), len(cols)))
    for a in range(3):
        t = p[rows, a][:, None] - p[cols, a][None, :]
        d += t * t
    return d


def _take_k(d: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k candidates of smallest distance, ties to the lower index, sorted by (d, index)."""
    order = np.lexsort((np.broadcast_to(cand, d.shape), d), axis=-1) if d.ndim == 2 and d.size else None
    if order is None:
        return np.empty((d.shape[0], k), dtype=np.int64)
    return np.broadcast_to(cand, d.shape)[np.arange(d.shape[0])[:, None], order[:, :k]]


def knn_brute(points, k: int, *, include_self: bool = True) -> np.ndarray:
    """(N, k) int32 nearest neighbours by Euclidean distance, each row sorted by (distance, index).

    Exact brute force over row chunks (O(N^2) work, O(chunk * N) memory). Without
    ``include_self`` a point is never its own neighbour (coincident other points still are)."""
    p = _check_points(points)
    n = p.shape[0]
    k = check_int(k, "k", lo=1)
    avail = n if include_self else n - 1
    if k > avail:
        raise ValueError(f"k must be <= {avail} (the points available), got {k}")
    out = np.empty((n, k), dtype=np.int32)
    cols = np.arange(n)
    for a in range(0, n, _CHUNK):
        rows = np.arange(a, min(n, a + _CHUNK))
        d = _sq_dist(p, rows, cols)
        if not include_self:
            d[np.arange(len(rows)), rows] = np.inf
        out[rows] = _take_k(d, cols, k)
    return out


def knn_grid(points, k: int, *, include_self: bool = True, cell: Optional[float] = None) -> np.ndarray:
    """The same (N, k) indices as :func:`knn_brute`, from a uniform grid.

    Points are bucketed into cubic cells of side ``cell`` (default: about k points per cell for
    the bounding box). For the points of one cell, candidates come from the cells within Chebyshev
    ring r = 1, 2, ...; a point's result is final once its k-th distance is <= r * cell (every
    point outside the ring is farther than that), with ties at the boundary resolved by taking
    the ring one further. Identical to brute force, ties included."""
    p = _check_points(points)
    n = p.shape[0]
    k = check_int(k, "k", lo=1)
    avail = n if include_self else n - 1
    if k > avail:
        raise ValueError(f"k must be <= {avail} (the points available), got {k}")
    lo = p.min(axis=0)
    ext = np.maximum(p.max(axis=0) - lo, 1e-12)
    if cell is None:
        cell = float((np.prod(ext) * k / max(n, 1)) ** (1.0 / 3.0))
        cell = max(cell, float(ext.max()) / 256.0, 1e-12)
    cell = float(cell)
    if not (cell > 0 and math.isfinite(cell)):
        raise ValueError(f"cell must be a positive finite float, got {cell}")
    dims = np.maximum(np.floor(ext / cell).astype(np.int64) + 1, 1)
    c = np.minimum(np.floor((p - lo) / cell).astype(np.int64), dims - 1)
    key = (c[:, 0] * dims[1] + c[:, 1]) * dims[2] + c[:, 2]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    uniq, starts = np.unique(skey, return_index=True)
    ends = np.append(starts[1:], n)
    where = {int(u): (int(s), int(e)) for u, s, e in zip(uniq, starts, ends)}
    out = np.empty((n, k), dtype=np.int32)
    max_r = int(dims.max())
    for u, (s, e) in where.items():
        members = order[s:e]
        cz = u % dims[2]
        cy = (u // dims[2]) % dims[1]
        cx = u // (dims[1] * dims[2])
        todo = members
        r = 1
        while len(todo):
            xs = range(max(cx - r, 0), min(cx + r, dims[0] - 1) + 1)
            ys = range(max(cy - r, 0), min(cy + r, dims[1] - 1) + 1)
            zs = range(max(cz - r, 0), min(cz + r, dims[2] - 1) + 1)
            parts = []
            for x in xs:
                for y in ys:
                    for z in zs:
                        se = where.get(int((x * dims[1] + y) * dims[2] + z))
                        if se is not None:
                            parts.append(order[se[0]:se[1]])
            cand = np.sort(np.concatenate(parts))
            covers_all = r >= max_r
            if len(cand) >= k + (0 if include_self else 1) or covers_all:
                d = _sq_dist(p, todo, cand)
                if not include_self:
                    d[todo[:, None] == cand[None, :]] = np.inf
                kk = min(k, len(cand))
                top = _take_k(d, cand, kk)
                kth = np.sqrt(np.sort(d, axis=1)[:, kk - 1])
                done = covers_all | (kth < r * cell * (1.0 - 1e-9))
                out[todo[done]] = top[done]
                todo = todo[~done]
            r += 1
    return out


def knn_indices(points, k: int, *, include_self: bool = True, method: str = "auto") -> np.ndarray:
    """kNN indices (N, k) int32: ``method`` "brute", "grid" or "auto" (brute up to BRUTE_MAX points)."""
    if method not in ("auto", "brute", "grid"):
        raise ValueError(f"method must be 'auto', 'brute' or 'grid', got {method!r}")
    p = _check_points(points)
    if method == "brute" or (method == "auto" and p.shape[0] <= BRUTE_MAX):
        return knn_brute(p, k, include_self=include_self)
    return knn_grid(p, k, include_self=include_self)


def default_points(n: int) -> np.ndarray:
    """The documented default geometry: token t at the integer lattice point of its row-major
    position in a cube of side ceil(N^(1/3)) (x fastest), as float32 (N, 3)."""
    side = max(1, math.ceil(round(n ** (1.0 / 3.0), 9)))
    while side ** 3 < n:
        side += 1
    t = np.arange(n)
    return np.stack([t % side, (t // side) % side, t // (side * side)], axis=1).astype(np.float32)


@register
class PointGS(Method):
    """kNN point attention (PointGS's point interaction network): query i attends the keys of
    the ``k`` points nearest to point i in 3D (itself included by default), softmax over them.

    Parameters
    ----------
    k : int, default 16
        Neighbours per point (paper value unverified; 16 is the common Point-Transformer choice).
        Capped at N.
    include_self : bool, default True
    points : array (N, 3) or (B, N, 3), or None
        The point coordinates (``capabilities.geometry``). None: :func:`default_points` (a
        row-major integer lattice), so the method also runs on plain sequences.
    knn : {"auto", "brute", "grid"}, default "auto"

    Notes
    -----
    * Paper only: no official code. The relative-position term phi(p_i - p_j) of Point-Transformer-
      style attention is **not** applied: spattn's token-sparse kernel has no per-edge bias; the
      output is plain softmax attention over the kNN set.
    * Non-causal (an unordered set), prefill only (Nq == Nk: queries and keys are the same points).
    * The pattern is the same for every head (geometry, not q/k); indices are (B, Hq, N, k).
    """

    name = "pointgs"
    paper = "Xiang et al., PointGS (sparse-view Gaussian splatting), arXiv 2025 (paper only)"
    pattern = "each 3D point attends its k nearest neighbours (kNN: brute force or grid)"
    params_struct = None
    extra_defaults = {"k": 16, "include_self": True, "points": None, "knn": "auto"}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="token", geometry=True)

    def _check_params(self) -> None:
        p = self.params
        p["k"] = check_int(p["k"], f"{self.name}: k", lo=1)
        if not isinstance(p["include_self"], (bool, np.bool_)):
            raise TypeError(f"{self.name}: include_self must be a bool, got {type(p['include_self']).__name__}")
        if p["knn"] not in ("auto", "brute", "grid"):
            raise ValueError(f"{self.name}: knn must be 'auto', 'brute' or 'grid', got {p['knn']!r}")
        if p["points"] is not None:
            pts = as_float_array(p["points"], f"{self.name}: points")
            if pts.ndim not in (2, 3) or pts.shape[-1] != 3:
                raise ValueError(f"{self.name}: points must have shape (N, 3) or (B, N, 3), got {pts.shape}")
            if not np.all(np.isfinite(pts)):
                raise ValueError(f"{self.name}: points holds NaN or inf")
            p["points"] = pts

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, n = q.shape[:3]
        pts = self.params["points"]
        if pts is None:
            pts = default_points(n)
        if pts.shape[-2] != n or (pts.ndim == 3 and pts.shape[0] != B):
            want = f"(N, 3) = ({n}, 3) or (B, N, 3) = ({B}, {n}, 3)"
            raise ValueError(f"{self.name}: points must have shape {want}, got {pts.shape}")
        kk = min(self.params["k"], n if self.params["include_self"] else n - 1)
        if kk <= 0:  # one point without itself: nothing to attend
            return TokenIndices(np.full((B, Hq, n, 1), -1, np.int32), group_size=1, kv_len=n, assume_sorted=True)
        per_batch = pts if pts.ndim == 3 else pts[None]
        idx = np.stack([knn_indices(pb, kk, include_self=self.params["include_self"], method=self.params["knn"])
                        for pb in per_batch])
        idx = np.sort(idx, axis=-1).astype(np.int32)  # the kernel takes each row ascending
        idx = np.broadcast_to(idx[:, None], (len(per_batch), Hq, n, kk))
        if pts.ndim == 2:
            idx = np.broadcast_to(idx, (B, Hq, n, kk))
        self.last_info = {"neighbours": int(kk)}
        return TokenIndices(idx, group_size=1, kv_len=n, assume_sorted=True)

    def readouts(self):
        return dict(self.last_info)
