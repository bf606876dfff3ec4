"""Neighbourhood attention in 1D, 2D and 3D with NATTEN's semantics (SHI-Labs/NATTEN, v0.20+:
``natten.na1d / na2d / na3d``), including Generalized Neighborhood Attention's stride.

Per axis: a kernel size K, a dilation d, a stride s (1 <= s <= K) and a causal flag; a key is a
neighbour of a query when it is one along every axis (tokens flattened row-major over the axes).
Along one axis of n positions (the rule of NATTEN's reference mask, ``get_win_start`` /
``get_win_end`` in ``csrc/include/natten/cuda/reference/mask.hpp``, and of ``get_na_flex_mask`` in
``src/natten/backends/flex.py``):

- dilation: query and key share the group x % d; inside it u = x // d, over n_g positions
  (n // d, plus one when the group is below n % d);
- non-causal: the stride group's leader L = min((u // s) * s + s // 2, n_g - 1) and the window
  [start, start + K) with start = clamp(L - K // 2, 0, n_g - K). Windows shift at the borders, so
  every query sees exactly K keys per axis (K^rank in all); an even K has K/2 keys on the left
  and K/2 - 1 on the right of the leader;
- causal: L = min((u // s) * s + s - 1, n_g - 1) and the window [max(L - K + 1, 0), u] (cut at
  the borders, not shifted).

s = 1 is classic neighbourhood attention, 1 < s < K strided windows, s = K blocked (Swin-like)
attention. The C++ kernel reads each query run's neighbourhood as contiguous key runs in place
(no Nq x Nk buffer); :func:`na_mask` compiles the same pattern to :class:`spattn.TokenIndices`.

Deviations from NATTEN: ``kernel_size = 1`` is accepted along an axis (NATTEN asks for >= 2; a
window of one key is the same rule); the options after ``kernel_size`` are keyword-only (NATTEN
orders them stride, dilation; spattn takes both by name); NATTEN's ``additional_keys`` are not
offered (combine a dense call with :func:`spattn.merge_states`); outputs are float32.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._validation import as_float_array, as_scale
from .masks import TokenIndices

Result = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]
IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

_LAYOUTS = ("heads_last", "heads_first")


def _per_axis_int(value, rank: int, name: str, lo: int) -> Tuple[int, ...]:
    """An int (broadcast to every axis) or a sequence of `rank` ints, each >= lo."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a tuple of {rank} ints, got {type(value).__name__} {value!r}")
    if isinstance(value, (int, np.integer)):
        vals = (int(value),) * rank
    elif isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} must have one entry per axis ({rank}), got {len(value)}: {tuple(value)!r}")
        if any(isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) for x in value):
            raise TypeError(f"{name} must be an int or a tuple of {rank} ints, got {tuple(value)!r}"[:200])
        vals = tuple(int(x) for x in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {rank} ints, got {type(value).__name__} {value!r}"[:200])
    for axis, x in enumerate(vals):
        if x < lo:
            raise ValueError(f"{name} must be >= {lo} along every axis, got {name}[{axis}]={x}")
        if x > 2**31 - 1:
            raise ValueError(f"{name} must be <= 2**31 - 1, got {name}[{axis}]={x}")
    return vals


def _per_axis_bool(value, rank: int, name: str) -> Tuple[bool, ...]:
    if isinstance(value, (bool, np.bool_)):
        return (bool(value),) * rank
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(f"{name} must have one entry per axis ({rank}), got {len(value)}: {tuple(value)!r}")
        if not all(isinstance(x, (bool, np.bool_)) for x in value):
            raise TypeError(f"{name} must be a bool or a tuple of {rank} bools, got {tuple(value)!r}"[:200])
        return tuple(bool(x) for x in value)
    raise TypeError(f"{name} must be a bool or a tuple of {rank} bools, got {type(value).__name__} {value!r}"[:200])


def _pattern(rank: int, kernel_size, dilation, stride, is_causal):
    return (_per_axis_int(kernel_size, rank, "kernel_size", 1), _per_axis_int(dilation, rank, "dilation", 1),
            _per_axis_int(stride, rank, "stride", 1), _per_axis_bool(is_causal, rank, "is_causal"))


def _ndim(x) -> int:
    nd = getattr(x, "ndim", None)
    return int(nd) if nd is not None else np.ndim(x)


def _to_heads_first(x, name: str, rank: int, layout: str) -> np.ndarray:
    """`x` as C-contiguous float32 (B, H, *axes, D): one copy at most for numpy inputs."""
    nd = _ndim(x)
    if nd != rank + 3:
        axes = "L" if rank == 1 else ", ".join("XYZ"[:rank])
        expected = f"[B, {axes}, H, D]" if layout == "heads_last" else f"[B, H, {axes}, D]"
        shape = tuple(getattr(x, "shape", np.shape(x)))
        raise ValueError(f"{name} must have {rank + 3} dimensions {expected} ({layout}) for na{rank}d, "
                         f"got {nd} dimensions, shape {shape}")
    if layout == "heads_last":
        if not (isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)):
            x = as_float_array(x, name)
        x = np.moveaxis(x, -2, 1)
    return as_float_array(x, name)


def _neighborhood(rank: int, q, k, v, kernel_size, dilation, stride, is_causal, scale, layout,
                  return_lse) -> Result:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'heads_last' ([B, X, ..., H, D], NATTEN's) or 'heads_first' "
                         f"([B, H, X, ..., D]), got {layout!r}"[:200])
    kernel, dil, st, causal = _pattern(rank, kernel_size, dilation, stride, is_causal)
    q = _to_heads_first(q, "q", rank, layout)
    k = _to_heads_first(k, "k", rank, layout)
    v = _to_heads_first(v, "v", rank, layout)
    axes = q.shape[2:2 + rank]
    for name, x in (("k", k), ("v", v)):
        if x.shape[2:2 + rank] != axes:
            raise ValueError(f"{name} must have the token axes of q {tuple(axes)}, got {tuple(x.shape[2:2 + rank])} "
                             f"({layout} shape {x.shape if layout == 'heads_first' else np.moveaxis(x, 1, -2).shape})")
    n = int(np.prod(axes))
    B, Hq, D = q.shape[0], q.shape[1], q.shape[-1]
    out, lse = _core.neighborhood_attention(q.reshape(B, Hq, n, D), k.reshape(k.shape[0], k.shape[1], n, k.shape[-1]),
                                            v.reshape(v.shape[0], v.shape[1], n, v.shape[-1]), list(axes),
                                            list(kernel), list(dil), list(st), list(causal), as_scale(scale))
    out = out.reshape(B, Hq, *axes, out.shape[-1])
    lse = lse.reshape(B, Hq, *axes)
    if layout == "heads_last":
        out = np.ascontiguousarray(np.moveaxis(out, 1, -2))
        lse = np.ascontiguousarray(np.moveaxis(lse, 1, -1))
    return (out, lse) if return_lse else out


_DOC = """{rank}-D neighbourhood attention (NATTEN's ``na{rank}d``; rule in :mod:`spattn.neighborhood`).

    Parameters
    ----------
    q, k, v : array_like
        ``layout="heads_last"`` (NATTEN's): ``{last}``; ``"heads_first"``: ``{first}``. k and v
        share q's token axes; k/v may have fewer heads than q (GQA: query head h reads kv head
        h // (Hq // Hkv)); v may have its own head dim. Any real float dtype; torch CPU tensors
        accepted.
    kernel_size : int or tuple of {rank} ints
        Window size per axis, 1 <= kernel_size and kernel_size * dilation <= extent.
    dilation : int or tuple, default 1
        Dilation per axis (keys of the query's group x % dilation).
    stride : int or tuple, default 1
        GNA stride per axis, 1 <= stride <= kernel_size: queries of a stride group share the
        window of its leader.
    is_causal : bool or tuple of bools, default False
        Causal per axis: the window ends at the query and is cut, not shifted, at the border.
    scale : float, optional
        Logit scale, default 1 / sqrt(D).
    layout : {{"heads_last", "heads_first"}}
    return_lse : bool, default False
        Also return the natural-log sum of exp per query, ``(B, {axes}, H)`` (heads_last) or
        ``(B, H, {axes})``.

    Returns
    -------
    out : numpy.ndarray, float32, in the layout of q with v's head dim (and lse).
    """


def na1d(q, k, v, kernel_size: IntOrTuple, *, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
         is_causal: BoolOrTuple = False, scale: Optional[float] = None, layout: str = "heads_last",
         return_lse: bool = False) -> Result:
    return _neighborhood(1, q, k, v, kernel_size, dilation, stride, is_causal, scale, layout, return_lse)


def na2d(q, k, v, kernel_size: IntOrTuple, *, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
         is_causal: BoolOrTuple = False, scale: Optional[float] = None, layout: str = "heads_last",
         return_lse: bool = False) -> Result:
    return _neighborhood(2, q, k, v, kernel_size, dilation, stride, is_causal, scale, layout, return_lse)


def na3d(q, k, v, kernel_size: IntOrTuple, *, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
         is_causal: BoolOrTuple = False, scale: Optional[float] = None, layout: str = "heads_last",
         return_lse: bool = False) -> Result:
    return _neighborhood(3, q, k, v, kernel_size, dilation, stride, is_causal, scale, layout, return_lse)


na1d.__doc__ = _DOC.format(rank=1, last="[B, L, H, D]", first="[B, H, L, D]", axes="L")
na2d.__doc__ = _DOC.format(rank=2, last="[B, X, Y, H, D]", first="[B, H, X, Y, D]", axes="X, Y")
na3d.__doc__ = _DOC.format(rank=3, last="[B, X, Y, Z, H, D]", first="[B, H, X, Y, Z, D]", axes="X, Y, Z")


def _shape_and_pattern(shape, kernel_size, dilation, stride, is_causal):
    """The token axes (an int or a tuple of 1 to 3 ints) and the per-axis pattern, checked."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)) or not 1 <= len(shape) <= 3:
        raise ValueError(f"shape must be a tuple of 1 to 3 ints (the token axes), got {shape!r}"[:200])
    axes = _per_axis_int(tuple(shape), len(shape), "shape", 1)
    return (axes,) + tuple(_pattern(len(shape), kernel_size, dilation, stride, is_causal))


def na_mask(shape: Sequence[int], kernel_size: IntOrTuple, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
            is_causal: BoolOrTuple = False, *, batch: int = 1, heads: int = 1) -> TokenIndices:
    """The neighbourhood pattern of :func:`na1d` / :func:`na2d` / :func:`na3d` as TokenIndices.

    Parameters
    ----------
    shape : tuple of 1 to 3 ints
        The token axes (L,), (X, Y) or (X, Y, Z); tokens are flattened row-major.
    kernel_size, dilation, stride, is_causal
        As in :func:`na2d` (an int or bool broadcasts to every axis).
    batch, heads : int, default 1
        The (B, Hq) of the attention call the indices are for (the pattern is the same in all).

    Returns
    -------
    TokenIndices of shape (batch, heads, N, K), group_size 1, kv_len N: each query's neighbours
    in ascending order, -1 padded (K = prod(kernel_size) unless causal). With heads-first
    q (B, H, N, D) flattened from the axes, ``spattn.token_sparse_attention(q, k, v, mask)``
    equals ``na{rank}d(..., layout="heads_first")`` reshaped.
    """
    axes, kernel, dil, st, causal = _shape_and_pattern(shape, kernel_size, dilation, stride, is_causal)
    for name, x in (("batch", batch), ("heads", heads)):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x < 1:
            raise ValueError(f"{name} must be an int >= 1, got {x!r}"[:200])
    idx = _core.neighborhood_token_indices(list(axes), list(kernel), list(dil), list(st), list(causal))
    n = int(np.prod(axes))
    full = np.broadcast_to(idx, (int(batch), int(heads)) + idx.shape)
    return TokenIndices(full, group_size=1, kv_len=n, assume_sorted=True)


def _axis_windows(n_g: int, kernel: int, stride: int, causal: bool) -> Tuple[np.ndarray, np.ndarray]:
    """[start, end) of every in-group index along one axis (the rule in the module docstring)."""
    u = np.arange(n_g)
    if causal:
        leader = np.minimum((u // stride) * stride + stride - 1, n_g - 1)
        return np.maximum(leader - kernel + 1, 0), np.minimum(u + 1, n_g)
    leader = np.minimum((u // stride) * stride + stride // 2, n_g - 1)
    start = np.clip(leader - kernel // 2, 0, n_g - kernel)
    return start, start + kernel


def _axis_tile_counts(n: int, kernel: int, dilation: int, stride: int, causal: bool, tq: int, tk: int):
    """Along one axis, summed over its dilation groups: (tile pairs visited, tile pairs fully
    visible, visible (query, key) pairs, q tiles, kv tiles)."""
    visited = full = visible = q_tiles = kv_tiles = 0
    for g in range(dilation):
        n_g = n // dilation + (1 if g < n % dilation else 0)
        start, end = _axis_windows(n_g, kernel, stride, causal)
        nqt, nkt = -(-n_g // tq), -(-n_g // tk)
        lo = np.arange(nkt) * tk
        hi = np.minimum(lo + tk, n_g)
        overlap = np.clip(np.minimum(end[:, None], hi[None, :]) - np.maximum(start[:, None], lo[None, :]), 0, None)
        pad = nqt * tq - n_g
        overlap = np.concatenate([overlap, np.zeros((pad, nkt), overlap.dtype)]).reshape(nqt, tq, nkt)
        seen = overlap.sum(axis=1)
        whole_q = np.minimum(np.arange(nqt) * tq + tq, n_g) - np.arange(nqt) * tq == tq
        is_full = (overlap == tk).all(axis=1) & whole_q[:, None] & ((hi - lo) == tk)[None, :]
        visited += int((seen > 0).sum())
        full += int(is_full.sum())
        visible += int(seen.sum())
        q_tiles += nqt
        kv_tiles += nkt
    return visited, full, visible, q_tiles, kv_tiles


def gna_tile_stats(shape: Sequence[int], kernel_size: IntOrTuple, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
                   is_causal: BoolOrTuple = False, *, q_tile: IntOrTuple, kv_tile: IntOrTuple) -> dict:
    """The tile-level cost of a neighbourhood pattern under multi-dimensional tiling (GNA's
    analytical model, after the paper's NATTENSim).

    Queries and keys of each dilation group are cut into boxes of ``q_tile`` / ``kv_tile`` tokens
    per axis (NATTEN's token permutation: dilation groups apart, each axis tiled; the last tile of
    an axis may be short). A (Q tile, KV tile) pair is *visited* when some query of the one sees
    some key of the other, *full* when every one of the tile's Tq x Tkv slots holds a real, visible
    pair (no element mask needed). Since the pattern and the tiles are products over the axes, the
    counts are products of per-axis counts (no N x N work).

    Parameters
    ----------
    shape, kernel_size, dilation, stride, is_causal
        The pattern, as in :func:`na_mask`.
    q_tile, kv_tile : int or tuple of ints
        Tile shape per axis (rank-1: the 1D tile sizes).

    Returns
    -------
    dict with ``visited_tiles``, ``full_tiles``, ``partial_tiles`` (visited - full),
    ``visible_pairs``, ``computed_pairs`` (visited_tiles x Tq x Tkv), ``useful_fraction``
    (visible / computed: the share of a tiled kernel's work that is not masked away),
    ``perfectly_block_sparse`` (no partial tile: the condition under which a block-sparse kernel
    reaches the FLOP bound), ``dense_pairs`` (N^2) and ``speedup_bound`` (dense_pairs /
    computed_pairs: the largest speedup over dense non-causal attention a tiled kernel can show).
    """
    axes, kernel, dil, st, causal = _shape_and_pattern(shape, kernel_size, dilation, stride, is_causal)
    rank = len(axes)
    tq = _per_axis_int(q_tile, rank, "q_tile", 1)
    tk = _per_axis_int(kv_tile, rank, "kv_tile", 1)
    for i in range(rank):  # the checks of NeighborhoodSpec::validate, with its messages
        if kernel[i] > axes[i]:
            raise ValueError(f"kernel_size must be <= the extent {axes[i]} along axis {i}, got "
                             f"kernel_size[{i}]={kernel[i]}")
        if kernel[i] * dil[i] > axes[i]:
            raise ValueError(f"kernel_size * dilation must be <= the extent {axes[i]} along axis {i}, got "
                             f"kernel_size[{i}]={kernel[i]} * dilation[{i}]={dil[i]} = {kernel[i] * dil[i]}")
        if st[i] > kernel[i]:
            raise ValueError(f"stride must lie in [1, kernel_size={kernel[i]}] along axis {i}, got stride[{i}]={st[i]}")
    visited = full = visible = 1
    for i in range(rank):
        v, f, p, _, _ = _axis_tile_counts(axes[i], kernel[i], dil[i], st[i], causal[i], tq[i], tk[i])
        visited, full, visible = visited * v, full * f, visible * p
    computed = visited * int(np.prod(tq)) * int(np.prod(tk))
    n = int(np.prod(axes))
    return {"visited_tiles": visited, "full_tiles": full, "partial_tiles": visited - full,
            "visible_pairs": visible, "computed_pairs": computed, "useful_fraction": visible / computed,
            "perfectly_block_sparse": visited == full, "dense_pairs": n * n, "speedup_bound": n * n / computed}


def na_work(shape: Sequence[int], kernel_size: IntOrTuple, dilation: IntOrTuple = 1, stride: IntOrTuple = 1,
            is_causal: BoolOrTuple = False, *, heads_per_kv: int = 1) -> dict:
    """The work spattn's own neighbourhood kernel does for a pattern: GNA's tile model applied
    to this kernel's tiling, to predict its speed before running it.

    The kernel (:func:`na1d` / :func:`na2d` / :func:`na3d`) cuts each dilation group's queries
    into boxes (``box_shape`` tokens per axis; about 256 / ``heads_per_kv`` queries in 1D, 64 in
    2D / 3D; with a stride they hold whole stride groups or a divisor of one) and, per box,
    computes the scores of every query of the box against the keys of the union of the box's
    windows (one run along the last axis per key row). Its time is about proportional to
    ``computed_pairs``; ``speedup_bound`` = N^2 / computed_pairs is the speedup over dense
    non-causal attention it can reach (measured against it by ``python -m spattn bench --gna``).
    In 1D with boxes that tile the axis evenly, ``computed_pairs`` equals
    ``gna_tile_stats(..., q_tile=box_shape, kv_tile=1)["computed_pairs"]``.

    Parameters
    ----------
    shape, kernel_size, dilation, stride, is_causal
        The pattern, as in :func:`na_mask`.
    heads_per_kv : int, default 1
        Query heads per kv head (GQA): the kernel stacks a group's heads, which shrinks the boxes.

    Returns
    -------
    dict with ``boxes``, ``box_shape`` (of the first dilation group), ``computed_pairs``,
    ``visible_pairs``, ``useful_fraction`` (visible / computed), ``dense_pairs`` (N^2) and
    ``speedup_bound`` (dense / computed), all per (batch, query head).
    """
    axes, kernel, dil, st, causal = _shape_and_pattern(shape, kernel_size, dilation, stride, is_causal)
    if isinstance(heads_per_kv, (bool, np.bool_)) or not isinstance(heads_per_kv, (int, np.integer)) \
            or heads_per_kv < 1:
        raise ValueError(f"heads_per_kv must be an int >= 1, got {heads_per_kv!r}"[:200])
    w = _core.neighborhood_work(list(axes), list(kernel), list(dil), list(st), list(causal), int(heads_per_kv))
    n = int(np.prod(axes))
    w["useful_fraction"] = w["visible_pairs"] / w["computed_pairs"]
    w["dense_pairs"] = n * n
    w["speedup_bound"] = n * n / w["computed_pairs"]
    return w


__all__ = ["na1d", "na2d", "na3d", "na_mask", "gna_tile_stats", "na_work"]
