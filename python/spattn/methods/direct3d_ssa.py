"""Direct3D-S2 SSA: spatial sparse attention over sparse voxels (compressed, selected-block and
shifted-window branches, gated).

Wu et al., "Direct3D-S2: Gigascale 3D Generation Made Easy with Spatial Sparse Attention",
arXiv 2505.17412. Follows DreamTechAI/Direct3D-S2 (``SpatialSparseAttention.forward`` in
``modules/sparse/attention/spatial_sparse_attention/module/spatial_sparse_attention.py``,
``get_block_score`` in ``ops/compressed_attention.py``, ``spatial_selection_attention`` in
``ops/selection_attention.py``, ``sparse_window_attention`` in ``ops/window_attention.py`` with
``calc_window_partition`` in ``attention/windowed_attn.py``, defaults of ``models/transformers/sparse_dit.py``).
No new attention loop: the compressed branch is the dense kernel over the compressed cells, the
block scores are the exact probability map of ``_core.block_attention_map`` (1 x 1 blocks over the
cells), the selected blocks and the windows run on the cluster block-sparse kernel
(:func:`spattn.kernels.cluster_block_attention`, variable-size key clusters).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..kernels import attention, cluster_block_attention
from ..masks import ClusteredMask
from .base import Capabilities, Method, register

WEIGHT_KEYS = ("intra_block_pe", "gate_weight")
_SCORE_FLOATS = 1 << 24  # probabilities per map call (rows x cells x Hq): bounds the score buffers (~64 MiB)


def default_coords(n: int) -> np.ndarray:
    """The default voxel layout of ``n`` tokens: the first n points of a dense R^3 cube
    (R = ceil(n^(1/3))) in raster order, token t at (t // R^2, (t // R) % R, t % R); int64 (n, 3)."""
    n = check_int(n, "n")
    side = 1
    while side ** 3 < n:
        side += 1
    t = np.arange(n, dtype=np.int64)
    return np.stack([t // (side * side), (t // side) % side, t % side], axis=1)


def sort_block(coords, block_size: int) -> np.ndarray:
    """The token order of the official ``sort_block``: lexicographic by (x // b, y // b, z // b,
    x % b, y % b, z % b). Returns the permutation (int64, (M,)) that sorts ``coords`` (M, 3).
    The estimator does not need it (blocks are labels here), it is for inputs in official order."""
    c = _check_coords_array(coords, None, "coords")
    if c.ndim != 2:
        raise ValueError(f"coords must have shape (M, 3), got {c.shape}")
    b = check_int(block_size, "block_size", lo=1)
    blk, inb = c // b, c % b
    return np.lexsort((inb[:, 2], inb[:, 1], inb[:, 0], blk[:, 2], blk[:, 1], blk[:, 0])).astype(np.int64)


def _check_coords_array(coords, resolution: Optional[int], name: str) -> np.ndarray:
    c = np.asarray(coords)
    if not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of voxel coordinates, got dtype {c.dtype}")
    if c.ndim not in (2, 3) or c.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, 3) or (B, N, 3), got {c.shape}")
    c = c.astype(np.int64)
    if c.size and c.min() < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {int(c.min())}")
    if resolution is not None and c.size and c.max() >= resolution:
        raise ValueError(f"{name} must lie in [0, resolution={resolution}), got a maximum of {int(c.max())}; "
                         "pass a larger resolution")
    return c


def _labels(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, index of every key in them)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int64)


def _flat(c: np.ndarray, side: int) -> np.ndarray:
    return (c[:, 0] * side + c[:, 1]) * side + c[:, 2]


def _top_blocks(scores: np.ndarray, K: int) -> np.ndarray:
    """Per row of scores (..., n) the K largest, ties to the lower index, as sorted indices (..., K) int32."""
    n = scores.shape[-1]
    if K >= n:
        return np.broadcast_to(np.arange(n, dtype=np.int32), scores.shape[:-1] + (n,)).copy()
    kth = -np.partition(-scores, K - 1, axis=-1)[..., K - 1:K]  # the K-th largest value per row
    above = scores > kth
    tie = scores == kth
    need = K - above.sum(axis=-1, keepdims=True)
    keep = above | (tie & (np.cumsum(tie, axis=-1) <= need))
    return np.nonzero(keep)[-1].reshape(scores.shape[:-1] + (K,)).astype(np.int32)


def _check_weights(weights: Any) -> Dict[str, np.ndarray]:
    if isinstance(weights, (str, os.PathLike)):
        with np.load(weights, allow_pickle=False) as f:
            weights = {key: f[key] for key in f.files}
    if not isinstance(weights, dict):
        raise TypeError(f"direct3d_ssa: weights must be a dict of arrays or a path to an .npz file, "
                        f"got {type(weights).__name__}")
    unknown = sorted(set(weights) - set(WEIGHT_KEYS))
    if unknown:
        raise ValueError(f"direct3d_ssa: unknown weights key(s) {unknown}; known: {list(WEIGHT_KEYS)}")
    out = {}
    for key, val in weights.items():
        if val is None:
            continue
        arr = np.asarray(val.detach().cpu().numpy() if hasattr(val, "detach") else val)
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ValueError(f"direct3d_ssa: weights[{key!r}] must be a finite float array, got dtype {arr.dtype}")
        out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


@register
class Direct3DSSA(Method):
    """Direct3D-S2's spatial sparse attention (SSA) on the tokens of a sparse voxel grid.

    Tokens are occupied voxels with integer coordinates ``coords`` (N, 3) or (B, N, 3) in
    ``[0, resolution)`` (the official ``coords[:, 1:]``; the batch column is the B axis here,
    every sample has N tokens). Without ``coords`` the layout is :func:`default_coords` (the
    first N points of a dense cube in raster order), so the method runs on plain (q, k, v).
    Non-causal self-attention (Nq == Nk); GQA grouped (the official default has 2 kv heads).
    With c = ``compression_block_size``, b = ``selection_block_size``, w = ``window_size``,
    s = ``shift_window``, per sample:

    1. compression: the cells are the occupied coarse voxels ``coords // c``, sorted by
       ``(x, y, z)`` (the order of ``SparseDownsample``: torch.unique of the cell codes);
       K_c = mean over a cell's voxels of ``k + PE[x % c, y % c, z % c]`` and V_c = mean of ``v``
       (float64 sums, as ``SparseDownsample``'s mean scatter_reduce): a **stand-in** for the
       learned ``SparseDownBlock3d_v2`` (GroupNorm, SiLU, that mean-downsample, Conv3d...), i.e.
       its pooling without the learned layers. Trained compressed keys/values can be passed
       instead (``compressed_kv=(kc, vc)``, cells in that order);
    2. compressed branch: softmax(q K_c^T scale) V_c over all cells of the sample
       (``flash_attn_varlen_func``, non-causal), and its lse;
    3. block scores (``get_block_score``): s[g, i, j] = sum over the query heads h of kv head g
       of exp(q_h,i . K_c,j scale - lse_h,i), scatter-summed into selection blocks
       ``(cell coords) // (b / c)`` with id ``bx R^2 + by R + bz`` (R = resolution // b); only
       occupied blocks (sorted by id) compete; per (g, i) the top ``min(topk, n_blocks)``,
       sorted ascending, shared by the group. Nothing is forced (no own or local block);
    4. selected branch (``spatial_selection_attention``): one softmax of each query over every
       voxel of its selected blocks;
    5. window branch (``sparse_window_attention``): windows ``(coords + s) // w`` (per axis),
       full attention inside each occupied window;
    6. ``out = g0 o_cmp + g1 o_slc + g2 o_win``, g = sigmoid(hidden @ gate_weight^T) per token,
       shared by the heads (``SparseLinear(hidden, 3, bias=False)`` + sigmoid); ``gates=`` (B, N, 3)
       gives the values directly, else the ``gates`` parameter. Each branch is normalised on
       its own (no LSE merge); ``proj_o`` is the model's.

    Parameters
    ----------
    compression_block_size : int, default 4
    selection_block_size : int, default 8
        A multiple of compression_block_size (the official assert).
    topk : int, default 8
    window_size : int, default 8
    shift_window : int, default 4
        ``window_size // 2``: the shift the SparseFlex DiT uses on every layer with
        ``use_shift=False`` and on odd layers with ``use_shift=True`` (even layers: 0).
    resolution : int, default 64
        Side of the voxel grid (the module default); a multiple of selection_block_size.
    weights : dict or path to an .npz, optional
        ``intra_block_pe`` (c, c, c, Hkv * D), the official parameter (added to the keys before
        compression, zeros at initialisation); ``gate_weight`` (3, hidden) of the gate layer.
    gates : tuple of 3 floats, default (0.5, 0.5, 0.5)
        (g_cmp, g_slc, g_win) without a gate weight or ``gates=``: sigmoid(0), a zero gate layer.

    ``estimate(q, k, coords=...)`` returns the selection as a ClusteredMask (query clusters: the
    distinct selections of a head; key clusters: the occupied blocks); ``branches(...)`` returns
    the three branch outputs, the selection, the window partition and the block ids per token.

    Notes
    -----
    Memory: the score buffers are bounded per call (query rows x cells x Hq <= 2^24 floats); the
    selection mask is a ClusteredMask map of Hq x (distinct selections, at most N) x (occupied
    blocks) bytes (the official kernel reads (Hkv, N, topk) ints: a per-row variable-block kernel
    would bring it there); the window map is Hq x windows^2 bytes. No N x N buffer.

    Deviations: float32 (official: bf16/fp16 inputs, fp32 scores); ties of equal block scores go
    to the lower block id (torch.topk on CUDA leaves them unspecified); the compression is the
    mean-pool stand-in above unless ``compressed_kv`` is given. The official selection kernel
    needs tokens in ``sort_block`` order; here blocks and windows are labels, so any token
    order gives the same output (permuted), and sorted input gives the official one. The
    official b == c path ranks cells in the order of the compressed tensor; here cells are in
    sorted-id order, which is that order for the released ``SparseDownsample``.
    """

    name = "direct3d_ssa"
    aliases = ("ssa3d", "direct3d_s2")
    paper = "Wu et al., Direct3D-S2 (SSA), 2025"
    pattern = ("sparse 3D voxels: compressed cells (c^3 mean-pool stand-in), top-k spatial blocks (b^3) by the "
               "group's compressed probabilities, shifted w^3 windows; gated sum")
    params_struct = None
    extra_defaults = {"compression_block_size": 4, "selection_block_size": 8, "topk": 8, "window_size": 8,
                      "shift_window": 4, "resolution": 64, "weights": None, "gates": (0.5, 0.5, 0.5)}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="clustered",
                                own_output=True, coords_input=True)
    reads_outside_mask = True  # the compressed cells and the windows read keys outside the selected blocks

    def _check_params(self) -> None:
        p = self.params
        for key in ("compression_block_size", "selection_block_size", "topk", "window_size", "resolution"):
            p[key] = check_int(p[key], f"{self.name}: {key}", lo=1)
        p["shift_window"] = check_int(p["shift_window"], f"{self.name}: shift_window", lo=0)
        c, b = p["compression_block_size"], p["selection_block_size"]
        if b % c:
            raise ValueError(f"{self.name}: selection_block_size must be a multiple of compression_block_size={c}, "
                             f"got {b}")
        if p["resolution"] % b:
            raise ValueError(f"{self.name}: resolution must be a multiple of selection_block_size={b}, "
                             f"got {p['resolution']}")
        if p["weights"] is not None:
            p["weights"] = _check_weights(p["weights"])
        g = p["gates"]
        try:
            arr = np.asarray(g, np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.shape != (3,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{self.name}: gates must be 3 finite floats (g_cmp, g_slc, g_win), got {g!r}")
        p["gates"] = tuple(float(x) for x in arr)

    # ------------------------------------------------------------------ layout
    def layout(self, coords, B: int, N: int) -> np.ndarray:
        """The voxel coordinates (B, N, 3) int64 of a call: ``coords`` checked and broadcast,
        or :func:`default_coords`."""
        res = self.params["resolution"]
        if coords is None:
            c = default_coords(N)
            if N and c.max() >= res:
                raise ValueError(f"{self.name}: the default layout of N={N} tokens needs resolution > {int(c.max())}, "
                                 f"got {res}; pass coords or a larger resolution")
            return np.broadcast_to(c, (B, N, 3))
        c = _check_coords_array(coords, res, "coords")
        if c.ndim == 2:
            c = np.broadcast_to(c, (B,) + c.shape)
        if c.shape != (B, N, 3):
            raise ValueError(f"coords must have shape (N, 3) = ({N}, 3) or (B, N, 3) = ({B}, {N}, 3), got {c.shape}")
        return c

    def _cells(self, c: np.ndarray):
        """Cells of one sample: cell index per token, number of cells, block index per cell (into
        the sorted occupied blocks), block index per token, number of blocks."""
        p = self.params
        cb, res = p["compression_block_size"], p["resolution"]
        r = p["selection_block_size"] // cb
        side_c = -(-res // cb)
        cell_ids, cell_of = _labels(_flat(c // cb, side_c))
        cell_xyz = np.stack([cell_ids // (side_c * side_c), (cell_ids // side_c) % side_c, cell_ids % side_c], axis=1)
        side_b = res // p["selection_block_size"]
        block_ids, block_of_cell = _labels(_flat(cell_xyz // r, side_b))
        return cell_of, len(cell_ids), block_of_cell, block_of_cell[cell_of], len(block_ids)

    def _windows(self, c: np.ndarray) -> Tuple[np.ndarray, int]:
        """Window index per token (into the occupied windows, sorted as the official argsort) and their count."""
        w, s = self.params["window_size"], self.params["shift_window"]
        sh = (c + s) // w
        ids, of = _labels(_flat(sh, int(sh.max()) + 1 if sh.size else 1))
        return of, len(ids)

    # ------------------------------------------------------------------ compression and selection
    def compress(self, k: np.ndarray, v: Optional[np.ndarray], c: np.ndarray, cell_of: np.ndarray, C: int
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Mean-pool stand-in of one sample (k (Hkv, N, D), v (Hkv, N, Dv)): K_c (Hkv, C, D) with the
        intra-block PE added first, V_c (Hkv, C, Dv) (None when v is None)."""
        Hkv, N, D = k.shape
        cb = self.params["compression_block_size"]
        pe = (self.params["weights"] or {}).get("intra_block_pe")
        kk = k.astype(np.float64)
        if pe is not None:
            if pe.shape != (cb, cb, cb, Hkv * D):
                raise ValueError(f"{self.name}: weights['intra_block_pe'] must have shape (c, c, c, Hkv * D) = "
                                 f"{(cb, cb, cb, Hkv * D)}, got {pe.shape}")
            m = c % cb
            kk = kk + pe[m[:, 0], m[:, 1], m[:, 2]].reshape(N, Hkv, D).transpose(1, 0, 2)
        order = np.argsort(cell_of, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cell_of[order]) != 0]) if N else np.zeros(0, np.int64)
        count = np.diff(np.r_[starts, N]).astype(np.float64)

        def pool(x):  # per-cell means: tokens sorted by cell, summed per run
            return (np.add.reduceat(x[:, order], starts, axis=1) / count[None, :, None]).astype(np.float32)

        return pool(kk), None if v is None else pool(v.astype(np.float64))

    def _select(self, q, kc, block_of_cell, nb, scale) -> np.ndarray:
        """Top-k blocks (Hkv, N, K) of one sample (q (Hq, N, D), kc (Hkv, C, D)) from the exact
        compressed probabilities, summed over the group and over each block's cells."""
        Hq, N, _ = q.shape
        Hkv, C, _ = kc.shape
        G = Hq // Hkv
        K = min(self.params["topk"], nb)
        order = np.argsort(block_of_cell, kind="stable")  # cells grouped by block: block sums are runs
        starts = np.flatnonzero(np.r_[True, np.diff(block_of_cell[order]) != 0])
        sel = np.empty((Hkv, N, K), np.int32)
        kcc = np.ascontiguousarray(kc[None][:, :, order])
        rows = max(1, _SCORE_FLOATS // max(1, Hq * C))
        for i0 in range(0, N, rows):
            i1 = min(N, i0 + rows)
            prob, _ = _core.block_attention_map(np.ascontiguousarray(q[None, :, i0:i1]), kcc, 1, 1, False, scale, "sum")
            s = prob[0].reshape(Hkv, G, i1 - i0, C).sum(axis=1, dtype=np.float64)
            blk = np.add.reduceat(s, starts, axis=-1)  # (Hkv, rows, nb), blocks in id order
            sel[:, i0:i1] = _top_blocks(blk, K)
        return sel

    def _prepare(self, q, k, v, coords, scale, compressed_kv=None):
        """Per call: compressed branch (when v is given), selection ClusteredMask, window mask."""
        B, Hq, N, _ = q.shape
        Hkv = k.shape[1]
        G = Hq // Hkv
        cs = self.layout(coords, B, N)
        if compressed_kv is not None:
            if not (isinstance(compressed_kv, (tuple, list)) and len(compressed_kv) == 2):
                raise TypeError("compressed_kv must be a pair (kc, vc)")
            kc_all, vc_all = (as_float_array(x, n) for x, n in zip(compressed_kv, ("kc", "vc")))
        o_cmp = None if v is None else np.zeros((B, Hq, N, v.shape[3]), np.float32)
        sels, k_lab, w_lab, nbs, nws = [], np.zeros((B, Hkv, N), np.int32), np.zeros((B, Hq, N), np.int32), [], []
        for b in range(B):
            c = cs[b]
            cell_of, C, block_of_cell, block_of_tok, nb = self._cells(c)
            if compressed_kv is None:
                kc, vc = self.compress(k[b], None if v is None else v[b], c, cell_of, C)
            else:
                D, Dv = k.shape[3], (kc_all.shape[3] if v is None else v.shape[3])
                if kc_all.shape != (B, Hkv, C, D) or vc_all.shape[:3] != (B, Hkv, C) or vc_all.shape[3] != Dv:
                    raise ValueError(f"compressed_kv must be kc (B, Hkv, C, D) = {(B, Hkv, C, D)} and vc (B, Hkv, C, Dv) "
                                     f"= {(B, Hkv, C, Dv)} with C the occupied cells of sample {b}; got {kc_all.shape} "
                                     f"and {vc_all.shape}")
                kc, vc = kc_all[b], vc_all[b]
            if o_cmp is not None:
                o_cmp[b] = attention(q[b:b + 1], kc[None], vc[None], scale=scale)[0]
            sels.append(self._select(q[b], kc, block_of_cell, nb, scale))
            k_lab[b] = block_of_tok
            wl, nw = self._windows(c)
            w_lab[b] = wl
            nbs.append(nb)
            nws.append(nw)
        # selection: the distinct selections of each (sample, kv head) are the query clusters
        q_lab = np.zeros((B, Hq, N), np.int32)
        rows = []
        for b in range(B):
            for g in range(Hkv):
                uniq, inv = np.unique(sels[b][g], axis=0, return_inverse=True)
                q_lab[b, g * G:(g + 1) * G] = inv.reshape(-1)
                rows.append(uniq)
        Cq, Ck = max(len(r) for r in rows), max(nbs)
        smap = np.zeros((B, Hq, Cq, Ck), bool)
        for idx, uniq in enumerate(rows):
            b, g = divmod(idx, Hkv)
            for h in range(g * G, (g + 1) * G):
                np.put_along_axis(smap[b, h, :len(uniq)], uniq.astype(np.intp), True, axis=1)
        sel_mask = ClusteredMask(q_lab, k_lab, smap)
        W = max(nws)
        wmap = np.zeros((B, Hq, W, W), bool)
        wmap[:, :, np.arange(W), np.arange(W)] = True
        win_mask = ClusteredMask(w_lab, w_lab[:, ::G] if G > 1 else w_lab, wmap)
        blocks = np.stack(sels)  # (B, Hkv, N, K) if every sample has >= topk blocks
        self.last_info = {"mask": sel_mask, "blocks_per_row": int(min(self.params["topk"], min(nbs))),
                          "num_blocks": nbs, "num_windows": nws}
        return o_cmp, sel_mask, win_mask, blocks if len({s.shape for s in sels}) == 1 else sels

    def estimate(self, q, k, *, causal: bool = False, scale: Optional[float] = None, q_gate=None, k_gate=None,
                 v=None, coords=None, compressed_kv=None) -> ClusteredMask:
        """The selected blocks as a ClusteredMask (see the class); ``coords`` (N, 3) or (B, N, 3)."""
        if v is not None:
            raise TypeError(f"{self.name} takes no v in estimate; only methods with capabilities.value_inputs do")
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, _ = check_qkv(q, k, None)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, None, scale)
        self.check_call(q, k, causal)
        return self._prepare(q, k, None, coords, scale, compressed_kv)[1]

    def _estimate(self, q, k, causal, scale) -> ClusteredMask:
        return self._prepare(q, k, None, None, scale)[1]

    def branches(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, coords=None,
                 compressed_kv=None) -> Dict[str, Any]:
        """The branch outputs (B, Hq, N, Dv) float32 ``cmp``, ``slc``, ``win``, the selection
        ``mask`` (ClusteredMask), ``blocks`` (B, Hkv, N, K) (a list per sample when samples have
        fewer blocks than topk) and the ``windows`` ClusteredMask of one call."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        o_cmp, sel, win, blocks = self._prepare(q, k, v, coords, scale, compressed_kv)
        o_slc = cluster_block_attention(q, k, v, sel, scale=scale)
        o_win = cluster_block_attention(q, k, v, win, scale=scale)
        return {"cmp": o_cmp, "slc": o_slc, "win": o_win, "mask": sel, "blocks": blocks, "windows": win}

    def gate_values(self, B: int, N: int, hidden=None, gates=None) -> np.ndarray:
        """Gates (B, 1, N, 3) float32: ``gates`` as given, else sigmoid(hidden @ gate_weight^T),
        else the ``gates`` parameter."""
        if gates is not None:
            g = as_float_array(gates, "gates")
            if g.shape != (B, N, 3):
                raise ValueError(f"gates must have shape (B, N, 3) = {(B, N, 3)}, got {g.shape}")
            return g[:, None]
        W = (self.params["weights"] or {}).get("gate_weight")
        if W is None:
            if hidden is not None:
                raise ValueError(f"{self.name}: hidden needs weights['gate_weight'] (3, hidden)")
            return np.broadcast_to(np.asarray(self.params["gates"], np.float32), (B, 1, N, 3))
        if W.ndim != 2 or W.shape[0] != 3:
            raise ValueError(f"{self.name}: weights['gate_weight'] must have shape (3, hidden), got {W.shape}")
        if hidden is None:
            raise ValueError(f"{self.name}: weights['gate_weight'] needs the gate input hidden (B, N, hidden) in the call")
        x = as_float_array(hidden, "hidden")
        if x.shape != (B, N, W.shape[1]):
            raise ValueError(f"hidden must have shape (B, N, hidden) = {(B, N, W.shape[1])}, got {x.shape}")
        logits = x.astype(np.float64) @ W.T.astype(np.float64)
        return (0.5 * (1.0 + np.tanh(0.5 * logits)))[:, None].astype(np.float32)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False,
                 q_gate=None, k_gate=None, coords=None, compressed_kv=None, hidden=None, gates=None):
        """The gated sum of the compressed, selected and window branches (see the class)."""
        self._refuse_gate_inputs(q_gate, k_gate)
        if return_lse:
            raise ValueError(f"{self.name}: return_lse is not defined for a gated sum of three attention branches")
        br = self.branches(q, k, v, causal=causal, scale=scale, coords=coords, compressed_kv=compressed_kv)
        B, _, N = br["cmp"].shape[:3]
        g = self.gate_values(B, N, hidden, gates)
        out = g[..., 0:1] * br["cmp"] + g[..., 1:2] * br["slc"] + g[..., 2:3] * br["win"]
        return np.ascontiguousarray(out, dtype=np.float32)

    def readouts(self) -> Dict[str, Any]:
        return {"blocks_per_row": self.last_info["blocks_per_row"]} if "blocks_per_row" in self.last_info else {}


__all__ = ["Direct3DSSA", "default_coords", "sort_block", "WEIGHT_KEYS"]
