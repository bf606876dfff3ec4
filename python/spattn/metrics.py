"""Metrics for comparing sparse attention honestly: recall (share of the exact softmax mass a
mask keeps), density (share of visible pairs it computes) and relative error of outputs.
All computed tile by tile in the C++ core; no Nq x Nk buffer.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from . import _core
from ._validation import as_causal, as_scale, check_qkv
from .masks import (BlockMask, ClusteredMask, PermutedBlockMask, RowBlockIndices, TokenIndices, VerticalSlashMask,
                    WindowMask)


def recall(q, k, mask: Union[BlockMask, TokenIndices], *, causal: bool = False,
           scale: Optional[float] = None) -> np.ndarray:
    """Share of the exact softmax mass that falls inside `mask`, per (B, Hq).

    For each query row the mass of the selected, visible keys under the exact (dense) softmax
    is summed; rows are averaged over the queries that see at least one key. A row-set with no
    such query gives NaN.

    BlockMask: computed from the exact block-summed attention map (two flash-style passes).
    TokenIndices: exact row log-sum-exp, then the mass of the listed keys.
    VerticalSlashMask, WindowMask, PermutedBlockMask, ClusteredMask, RowBlockIndices: exp(lse of the pattern's
    keys - exact lse) per row, both from the kernels (no values read).
    """
    q, k, _ = check_qkv(q, k)
    causal, scale = as_causal(causal), as_scale(scale)
    if isinstance(mask, BlockMask):
        if q.ndim == 4 and k.ndim == 4:
            mask.check_against(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        block_map, lse = _core.block_attention_map(q, k, mask.block_q, mask.block_k, causal, scale, "sum")
        # one float32 temporary of the map's size, summed in float64 (no float64 copies of map or mask)
        kept = np.where(mask.blocks, block_map, np.float32(0)).sum(axis=(2, 3), dtype=np.float64)
    elif isinstance(mask, TokenIndices):
        mass, lse = _core.token_attention_mass(q, k, mask.indices, mask.group_size, mask.kv_len, causal, scale)
        kept = np.where(lse == -np.inf, np.float32(0), mass).sum(axis=-1, dtype=np.float64)
    elif isinstance(mask, (VerticalSlashMask, WindowMask, PermutedBlockMask, ClusteredMask, RowBlockIndices)):
        B, Hq, Nq, _ = q.shape
        mask.check_against(B, Hq, Nq, k.shape[2])
        _, lse = _core.dense_attention(q, k, np.zeros(k.shape[:3] + (0,), np.float32), causal, scale)
        if isinstance(mask, (VerticalSlashMask, PermutedBlockMask)):
            if not causal:
                raise ValueError(f"a {type(mask).__name__} is causal; pass causal=True")
        if isinstance(mask, VerticalSlashMask):
            part = _core.vertical_slash_lse(q, k, mask.vertical, mask.slash, mask.block, scale)
        elif isinstance(mask, RowBlockIndices):
            _, part = _core.row_block_sparse_attention(q, k, np.zeros(k.shape[:3] + (0,), np.float32), mask.blocks,
                                                       mask.block_size, mask.kv_len, causal, scale)
        elif isinstance(mask, PermutedBlockMask):
            part = _core.permuted_block_lse(q, k, mask.perm, mask.blocks.blocks.view(np.uint8), mask.block, scale)
        elif isinstance(mask, ClusteredMask):
            part = _core.cluster_block_lse(q, k, mask.q_labels, mask.k_labels, mask.map.view(np.uint8), causal, scale)
        else:
            left = -1 if mask.left is None else mask.left
            right = -1 if mask.right is None else mask.right
            part = _core.window_lse(q, k, mask.sinks, left, right, causal, scale)
        with np.errstate(invalid="ignore", over="ignore"):
            mass = np.exp(part.astype(np.float64) - lse.astype(np.float64))
        kept = np.where(lse == -np.inf, 0.0, np.minimum(mass, 1.0)).sum(axis=-1)
    else:
        raise TypeError("mask must be a BlockMask, TokenIndices, VerticalSlashMask, WindowMask, PermutedBlockMask or "
                        f"ClusteredMask, got {type(mask).__name__}")
    # Rows that see no key (lse = -inf) are left out; a NaN row (NaN inputs) makes the recall NaN.
    valid = (lse != -np.inf).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid > 0, kept / np.maximum(valid, 1), np.nan)


def density(mask: Union[BlockMask, TokenIndices], *, causal: bool = False,
            q_len: Optional[int] = None) -> np.ndarray:
    """Share of the visible (query, key) pairs that `mask` computes, per (B, H)."""
    if isinstance(mask, BlockMask):
        return mask.density(causal=causal)
    if isinstance(mask, (TokenIndices, VerticalSlashMask, WindowMask, PermutedBlockMask, ClusteredMask, RowBlockIndices)):
        return mask.density(q_len=q_len, causal=causal)
    raise TypeError("mask must be a BlockMask, TokenIndices, VerticalSlashMask, WindowMask, PermutedBlockMask or "
                    f"ClusteredMask, got {type(mask).__name__}")


def relative_error(out, ref) -> float:
    """||out - ref||_F / ||ref||_F in float64 (0 when both are zero)."""
    a = np.asarray(out, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"out and ref must have the same shape, got {a.shape} and {b.shape}")
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)
