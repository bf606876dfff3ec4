"""Attention entry points: argument checks, conversion, then one call into the C++ core
(which releases the GIL and runs on OMP_NUM_THREADS threads).

Shapes: q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); out (B, Hq, Nq, Dv) float32,
lse (B, Hq, Nq) float32 (natural log). Causal is bottom-right aligned (query i sees key j iff
j <= i + Nk - Nq). A query that sees no key gets out = 0 and lse = -inf. Inputs of any real
float dtype and strides are accepted and converted to C-contiguous float32 (one copy at most).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from . import _core
from ._validation import check_qkv, check_scale
from .masks import BlockMask, TokenIndices

Result = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


def _finish(out: np.ndarray, lse: np.ndarray, return_lse: bool) -> Result:
    return (out, lse) if return_lse else out


def attention(q, k, v, *, causal: bool = False, scale: Optional[float] = None,
              return_lse: bool = False) -> Result:
    """Exact (dense) attention, tiled flash-style; never builds an Nq x Nk buffer.

    Parameters
    ----------
    q, k, v : array_like, shapes (B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv)
    causal : bool
        Bottom-right aligned causal mask.
    scale : float, optional
        Logit scale, default 1/sqrt(D).
    return_lse : bool
        Also return the row log-sum-exp (B, Hq, Nq).
    """
    q, k, v = check_qkv(q, k, v)
    out, lse = _core.dense_attention(q, k, v, bool(causal), check_scale(scale, q.shape[3]))
    return _finish(out, lse, return_lse)


def block_sparse_attention(q, k, v, mask: BlockMask, *, causal: bool = False,
                           scale: Optional[float] = None, return_lse: bool = False) -> Result:
    """Attention restricted to the blocks selected by `mask` (H = Hq or 1).

    When `causal`, the causal rule applies element-wise inside the selected blocks. Rows whose
    blocks hold no visible key get out = 0, lse = -inf.
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a spattn.BlockMask, got {type(mask).__name__}")
    B, Hq, Nq, D = q.shape
    mask.check_against(B, Hq, Nq, k.shape[2])
    out, lse = _core.block_sparse_attention(q, k, v, mask.blocks.view(np.uint8), mask.block_q,
                                            mask.block_k, bool(causal), check_scale(scale, D))
    return _finish(out, lse, return_lse)


def token_sparse_attention(q, k, v, indices: TokenIndices, *, causal: bool = False,
                           scale: Optional[float] = None, return_lse: bool = False) -> Result:
    """Attention restricted to the key positions in `indices` (a spattn.TokenIndices).

    Each group of `indices.group_size` consecutive queries attends to its own list of keys;
    decode is Nq = 1. With `causal`, listed keys past a query's causal limit are ignored.
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(indices, TokenIndices):
        raise TypeError(f"indices must be a spattn.TokenIndices, got {type(indices).__name__}")
    B, Hq, Nq, D = q.shape
    indices.check_against(B, Hq, Nq, k.shape[2])
    out, lse = _core.token_sparse_attention(q, k, v, indices.indices, indices.group_size,
                                            bool(causal), check_scale(scale, D))
    return _finish(out, lse, return_lse)


def merge_states(out_a, lse_a, out_b, lse_b) -> Tuple[np.ndarray, np.ndarray]:
    """Merge two attention states over disjoint key sets exactly.

    out_* (..., Dv) and lse_* (...) as returned with `return_lse=True`. Returns (out, lse) with
    lse = logaddexp(lse_a, lse_b); rows empty on both sides stay out = 0, lse = -inf.
    """
    arrays = []
    for name, x in (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
        arrays.append(x)
    oa, la, ob, lb = arrays
    if oa.ndim < 1 or oa.shape != ob.shape:
        raise ValueError(f"out_a and out_b must have the same shape, got {oa.shape} and {ob.shape}")
    if la.shape != oa.shape[:-1] or lb.shape != oa.shape[:-1]:
        raise ValueError(f"lse_a and lse_b must have shape {oa.shape[:-1]}, got {la.shape} and {lb.shape}")
    oa, la, ob, lb = (np.ascontiguousarray(x, dtype=np.float32) for x in (oa, la, ob, lb))
    return _core.merge_states(oa, la, ob, lb)
