"""Attention entry points: argument checks, conversion, then one call into the C++ core
(which releases the GIL and runs on OMP_NUM_THREADS threads).

Shapes: q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv); out (B, Hq, Nq, Dv) float32,
lse (B, Hq, Nq) float32 (natural log). Causal is bottom-right aligned (query i sees key j iff
j <= i + Nk - Nq). A query that sees no key gets out = 0 and lse = -inf. Inputs of any real
float dtype and strides are accepted and converted to C-contiguous float32 (one copy at most).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._validation import as_causal, as_float_array, as_scale, check_int, check_qkv, half_bits
from .masks import (BlockMask, ClusteredMask, PermutedBlockMask, RowBlockIndices, TokenIndices, VerticalSlashMask,
                    WindowMask)

Result = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]
BlockPlan = _core.BlockPlan


def _finish(out: np.ndarray, lse: np.ndarray, return_lse: bool) -> Result:
    return (out, lse) if return_lse else out


_BIAS_DOC = """
    key_bias : array_like, optional
        (B, Hq or Hkv, Nk): an additive logit bias per key (Dynamic Mask Attention's value-derived
        bias); a kv-head row serves every query head of its group.
    bias : array_like, optional
        (Nq, Nk) or (1 or Hq, Nq, Nk): an additive bias per (query, key) pair, shared by the batch
        (SwinBERT's learned mask; the only Nq x Nk buffer is the bias itself).
    rel_bias : array_like, optional
        (2R+1,) or (1 or Hq, 2R+1): a relative-position bias per head, entry
        ``rel_bias[h, clip(j - p, -R, R) + R]`` for key j and query position p = i + Nk - Nq
        (bottom-right aligned as the causal rule; offsets beyond R take the end entries).

    Biases enter the scaled logits inside the kernel's tiles before the softmax,
    softmax(q.k * scale + bias); every value must be finite."""


def _biases(key_bias, bias, rel_bias):
    """The optional bias arrays as C-contiguous float32 (shapes are checked in the core)."""
    return tuple(None if x is None else as_float_array(x, name)
                 for name, x in (("key_bias", key_bias), ("bias", bias), ("rel_bias", rel_bias)))


def attention(q, k, v, *, causal: bool = False, scale: Optional[float] = None,
              return_lse: bool = False, kv_len: Optional[int] = None, key_bias=None, bias=None,
              rel_bias=None) -> Result:
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
    kv_len : int, optional
        k and v are buffers (B, Hkv, capacity, D) of which only the first `kv_len` rows of axis 2
        are keys (a decode cache, :class:`spattn.KVCache`): they are read in place, without a copy
        when the buffers are C-contiguous float32. Nk is then `kv_len`.

    Half-precision K/V: when k and v are both float16 (numpy or torch) or both bfloat16 (torch),
    they are read as stored, accumulating in float32: calls of few query rows (decode) widen each
    key tile as they read it, reading half the bytes; other calls widen K and V once in C++. The
    result equals attention on the float32 conversion of k and v (the conversion is exact).
    """ + _BIAS_DOC + """
    """
    biases = _biases(key_bias, bias, rel_bias)
    if any(x is not None for x in biases):
        if kv_len is not None:
            raise ValueError("key_bias / bias / rel_bias are not supported with kv_len (pass packed k and v)")
        q, k, v = check_qkv(q, k, v)
        out, lse = _core.dense_attention(q, k, v, as_causal(causal), as_scale(scale), *biases)
        return _finish(out, lse, return_lse)
    if kv_len is not None:
        q, k, v = check_qkv(q, k, v)
        out, lse = _core.dense_attention_prefix(q, k, v, check_int(kv_len, "kv_len"), as_causal(causal),
                                                as_scale(scale))
        return _finish(out, lse, return_lse)
    hk, hv = half_bits(k), half_bits(v)
    if hk is not None and hv is not None and hk[1] == hv[1]:
        q = as_float_array(q, "q")
        out, lse = _core.dense_attention_half(q, hk[0], hv[0], hk[1], as_causal(causal), as_scale(scale))
        return _finish(out, lse, return_lse)
    q, k, v = check_qkv(q, k, v)
    out, lse = _core.dense_attention(q, k, v, as_causal(causal), as_scale(scale))
    return _finish(out, lse, return_lse)


def plan(mask: BlockMask, q_shape: Sequence[int], k_shape: Sequence[int], *, causal: bool = False) -> BlockPlan:
    """Compile `mask` once for attention of the given shapes; reuse the plan across calls.

    The plan holds, per (batch, head, q-block), the ascending list of kv blocks with a visible
    key, each marked full (no element mask needed) or partial (crosses the causal diagonal), as
    FlexAttention's ``kv_num_blocks`` / ``kv_indices`` and ``full_kv_*``
    (``plan.kv_blocks(full=False | True)``). Passing a plan to :func:`block_sparse_attention`
    skips the scan of the boolean map that a BlockMask costs on every call.

    Parameters
    ----------
    mask : BlockMask
    q_shape, k_shape : sequence of int
        Shapes (B, Hq, Nq, D) and (B, Hkv, Nk, D) of the calls the plan will serve (only B, Hq,
        Nq and Nk are read).
    causal : bool
        Causality of those calls (a plan is rejected by a call of the other kind).
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a spattn.BlockMask, got {type(mask).__name__}")
    shapes = []
    for name, shape in (("q_shape", q_shape), ("k_shape", k_shape)):
        try:
            shape = tuple(shape)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of 4 ints (B, H, N, D), got {type(shape).__name__}") from None
        if len(shape) != 4:
            raise ValueError(f"{name} must have 4 entries (B, H, N, D), got {shape}"[:200])
        shapes.append(tuple(check_int(x, f"{name}[{i}]") for i, x in enumerate(shape)))
    q_shape, k_shape = shapes
    if (q_shape[2], k_shape[2]) != (mask.q_len, mask.kv_len):
        raise ValueError(f"mask was made for q_len={mask.q_len}, kv_len={mask.kv_len}, but q/k have "
                         f"Nq={q_shape[2]}, Nk={k_shape[2]}")
    return _core.compile_plan(mask.blocks.view(np.uint8), mask.block_q, mask.block_k, mask.q_len, mask.kv_len,
                              q_shape[0], q_shape[1], as_causal(causal))


def block_sparse_attention(q, k, v, mask: Union[BlockMask, BlockPlan], *, causal: bool = False,
                           scale: Optional[float] = None, return_lse: bool = False, key_bias=None, bias=None,
                           rel_bias=None) -> Result:
    """Attention restricted to the blocks selected by `mask` (H = Hq or 1), or by a compiled plan.

    When `causal`, the causal rule applies element-wise inside the selected blocks. Rows whose
    blocks hold no visible key get out = 0, lse = -inf. A BlockMask is compiled into a plan for
    this one call; pass ``spattn.plan(mask, q.shape, k.shape, causal=...)`` to reuse one.
    """ + _BIAS_DOC + """
    """
    q, k, v = check_qkv(q, k, v)
    biases = _biases(key_bias, bias, rel_bias)
    if isinstance(mask, BlockMask):
        out, lse = _core.block_sparse_attention_mask(q, k, v, mask.blocks.view(np.uint8), mask.block_q, mask.block_k,
                                                     mask.q_len, mask.kv_len, as_causal(causal), as_scale(scale),
                                                     *biases)
    elif isinstance(mask, BlockPlan):
        out, lse = _core.block_sparse_attention(q, k, v, mask, as_causal(causal), as_scale(scale), *biases)
    else:
        raise TypeError(f"mask must be a spattn.BlockMask or a plan from spattn.plan, got {type(mask).__name__}")
    return _finish(out, lse, return_lse)


def token_sparse_attention(q, k, v, indices: TokenIndices, *, causal: bool = False,
                           scale: Optional[float] = None, return_lse: bool = False,
                           kv_len: Optional[int] = None, key_bias=None, bias=None, rel_bias=None,
                           activation: str = "softmax") -> Result:
    """Attention restricted to the key positions in `indices` (a spattn.TokenIndices).

    Each group of `indices.group_size` consecutive queries attends to its own list of keys;
    decode is Nq = 1. With `causal`, listed keys past a query's causal limit are ignored.
    With `kv_len`, k and v are buffers (B, Hkv, capacity, D) whose first `kv_len` rows of axis 2
    are the keys, read in place (see :func:`attention`); `indices.kv_len` must equal it.
    `activation` "relu2": un-normalised ReLU^2 attention (SMA / SeqBoat), out = sum_j relu(s_j)^2 v_j
    over the visible listed keys (s_j = q.k_j * scale + biases) and lse = log sum_j relu(s_j)^2.
    """ + _BIAS_DOC + """
    """
    q, k, v = check_qkv(q, k, v)
    biases = _biases(key_bias, bias, rel_bias)
    if not isinstance(indices, TokenIndices):
        raise TypeError(f"indices must be a spattn.TokenIndices, got {type(indices).__name__}")
    if kv_len is not None:
        if any(x is not None for x in biases) or activation != "softmax":
            raise ValueError("key_bias / bias / rel_bias / activation are not supported with kv_len (pass packed k "
                             "and v)")
        kv_len = check_int(kv_len, "kv_len")
        if indices.kv_len != kv_len:
            raise ValueError(f"indices were made for kv_len={indices.kv_len}, but k has Nk={kv_len}")
        out, lse = _core.token_sparse_attention_prefix(q, k, v, kv_len, indices.indices,
                                                       indices.group_size, as_causal(causal), as_scale(scale))
        return _finish(out, lse, return_lse)
    out, lse = _core.token_sparse_attention(q, k, v, indices.indices, indices.group_size, indices.kv_len,
                                            as_causal(causal), as_scale(scale), *biases, activation)
    return _finish(out, lse, return_lse)


def dense_attention_backward(q, k, v, o, lse, do, *, causal: bool = False, scale: Optional[float] = None,
                             key_bias=None, bias=None, rel_bias=None):
    """Gradients of dense attention :func:`attention` (exact; flash-style recomputation by tiles).

    Parameters
    ----------
    q, k, v : array_like
        The forward's inputs, shapes (B, Hq, Nq, D), (B, Hkv, Nk, D), (B, Hkv, Nk, Dv).
    o, lse : array_like
        The forward's output (B, Hq, Nq, Dv) and row log-sum-exp (B, Hq, Nq)
        (``attention(..., return_lse=True)`` with the same arguments).
    do : array_like
        Gradient of the loss with respect to o, (B, Hq, Nq, Dv).
    causal, scale, key_bias, bias, rel_bias
        As in the forward call.

    Returns
    -------
    dq, dk, dv, dbias
        Gradients like q, k, v (float32). dbias: None without biases; the gradient of the one bias
        given, shaped as it; with several, a dict {"bias" | "key_bias" | "rel_bias": gradient}.
        A bias shared by heads or batch items gets the sum over them (a kv-head key bias over its
        group; a relative table entry over every pair its clamped offset selects).

    Memory: O(N D) beyond dbias; the Nq x Nk probabilities are recomputed in 64 x 64 tiles.
    """
    q, k, v = check_qkv(q, k, v)
    o, lse, do = (as_float_array(x, name) for name, x in (("o", o), ("lse", lse), ("do", do)))
    biases = _biases(key_bias, bias, rel_bias)
    dq, dk, dv, d_bias, d_key, d_rel = _core.dense_attention_backward(q, k, v, o, lse, do, as_causal(causal),
                                                                      as_scale(scale), *biases)
    grads = {name: d for name, d in (("bias", d_bias), ("key_bias", d_key), ("rel_bias", d_rel)) if d is not None}
    dbias = None if not grads else (next(iter(grads.values())) if len(grads) == 1 else grads)
    return dq, dk, dv, dbias


def _window_args(sinks, left, right):
    """(sinks, left, right) for the core: ints >= 0 (ValueError/TypeError naming them), None -> -1."""
    return (check_int(sinks, "sinks"), -1 if left is None else check_int(left, "left"),
            -1 if right is None else check_int(right, "right"))


def window_attention(q, k, v, *, sinks: int = 0, left: Optional[int] = None, right: Optional[int] = None,
                     causal: bool = False, scale: Optional[float] = None, return_lse: bool = False) -> Result:
    """Token-level sliding window with attention sinks.

    Query i (position p = i + Nk - Nq) sees key j iff (j < sinks or p - left <= j <= p + right)
    and, when `causal`, j <= p. ``left`` / ``right`` None: unbounded on that side.
    MInference's A-shape (``streaming_forward(n_init, n_local)``) is ``sinks=n_init,
    left=n_local - 1, causal=True``. Each query tile reads two contiguous key runs in place; no
    mask buffer. Rows that see no key get out = 0, lse = -inf.
    """
    q, k, v = check_qkv(q, k, v)
    sinks, left, right = _window_args(sinks, left, right)
    out, lse = _core.window_attention(q, k, v, sinks, left, right, as_causal(causal), as_scale(scale))
    return _finish(out, lse, return_lse)


def vertical_slash_attention(q, k, v, mask: VerticalSlashMask, *, causal: bool = True,
                             scale: Optional[float] = None, return_lse: bool = False) -> Result:
    """MInference vertical-slash attention, token-exact (the official kernel's mask).

    Per query block of ``mask.block`` rows, the slash ranges and vertical columns of the official
    index conversion; slash ranges are read in place, columns gathered; the causal rule applies
    per element. Causal prefill only (Nq == Nk == mask.length).
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(mask, VerticalSlashMask):
        raise TypeError(f"mask must be a spattn.VerticalSlashMask, got {type(mask).__name__}")
    if not as_causal(causal):
        raise ValueError("vertical_slash_attention is defined for causal attention (as MInference); pass causal=True")
    mask.check_against(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse = _core.vertical_slash_attention(q, k, v, mask.vertical, mask.slash, mask.block, True, as_scale(scale))
    return _finish(out, lse, return_lse)


def row_block_sparse_attention(q, k, v, blocks: RowBlockIndices, *, causal: bool = False,
                               scale: Optional[float] = None, return_lse: bool = False,
                               key_bias=None) -> Result:
    """Attention restricted, per query row, to the key blocks listed in `blocks` (a
    spattn.RowBlockIndices: InfLLM-V2's per-token top-k blocks).

    The query heads of a GQA group share their kv head's lists when ``blocks`` has H = Hkv (or
    1). With `causal`, keys past a row's causal limit are ignored inside the listed blocks; rows
    with no visible listed key get out = 0, lse = -inf. Per work item the union of the blocks of
    a tile of rows is read in place; memory O(Nq K). `key_bias` (B, Hkv, Nk), optional: an
    additive logit bias per key, softmax(q.k * scale + bias) (NOSA's eviction bias).
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(blocks, RowBlockIndices):
        raise TypeError(f"blocks must be a spattn.RowBlockIndices, got {type(blocks).__name__}")
    if key_bias is not None:
        key_bias = as_float_array(key_bias, "key_bias")
    out, lse = _core.row_block_sparse_attention(q, k, v, blocks.blocks, blocks.block_size, blocks.kv_len,
                                                as_causal(causal), as_scale(scale), key_bias)
    return _finish(out, lse, return_lse)


def permuted_block_attention(q, k, v, mask: PermutedBlockMask, *, causal: bool = True,
                             scale: Optional[float] = None, return_lse: bool = False) -> Result:
    """Block-sparse attention over permuted keys (PBS-Attn), causal on original positions.

    Query block qb attends to the original keys ``mask.perm[b, h, kb*block : (kb+1)*block]`` of
    every selected permuted block kb. Keys are gathered tile by tile (no permuted copy of K/V);
    blocks wholly before the query block run unmasked, the others with the causal rule per
    element. Causal prefill only (Nq == Nk == mask.length).
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(mask, PermutedBlockMask):
        raise TypeError(f"mask must be a spattn.PermutedBlockMask, got {type(mask).__name__}")
    if not as_causal(causal):
        raise ValueError("permuted_block_attention is defined for causal attention (as PBS-Attn); pass causal=True")
    mask.check_against(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse = _core.permuted_block_attention(q, k, v, mask.perm, mask.blocks.blocks.view(np.uint8), mask.block,
                                              True, as_scale(scale))
    return _finish(out, lse, return_lse)


def cluster_block_attention(q, k, v, mask: ClusteredMask, *, causal: bool = False, scale: Optional[float] = None,
                            return_lse: bool = False) -> Result:
    """Variable-size block attention over clusters (SVG2's ``dynamic_block_sparse_fwd``).

    Query i of head h attends to the keys of every key cluster selected for its query cluster
    (``mask.map``). Per (batch, head, query cluster) the cluster's query rows are gathered into
    tiles, the keys of its selected clusters gathered tile by tile and the output rows scattered back
    to their original positions; no permuted copy of K/V, no per-query lists. When `causal`, the
    causal rule applies per element on original positions (a spattn extension).
    """
    q, k, v = check_qkv(q, k, v)
    if not isinstance(mask, ClusteredMask):
        raise TypeError(f"mask must be a spattn.ClusteredMask, got {type(mask).__name__}")
    mask.check_against(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out, lse = _core.cluster_block_attention(q, k, v, mask.q_labels, mask.k_labels, mask.map.view(np.uint8),
                                             as_causal(causal), as_scale(scale))
    return _finish(out, lse, return_lse)


def sparse_attention(q, k, v, mask, *, causal: bool = False, scale: Optional[float] = None,
                     return_lse: bool = False) -> Result:
    """Attention restricted to any spattn mask: BlockMask or plan (block-sparse kernel),
    TokenIndices (token-sparse), RowBlockIndices (row-block sparse), VerticalSlashMask (vertical-slash),
    WindowMask (window), PermutedBlockMask (permuted block-sparse), ClusteredMask (cluster block-sparse)."""
    if isinstance(mask, (BlockMask, BlockPlan)):
        return block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, TokenIndices):
        return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, RowBlockIndices):
        return row_block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, PermutedBlockMask):
        return permuted_block_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, ClusteredMask):
        return cluster_block_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, VerticalSlashMask):
        return vertical_slash_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
    if isinstance(mask, WindowMask):
        q, k, v = check_qkv(q, k, v)
        mask.check_against(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return window_attention(q, k, v, sinks=mask.sinks, left=mask.left, right=mask.right, causal=causal,
                                scale=scale, return_lse=return_lse)
    raise TypeError("mask must be a BlockMask, plan, TokenIndices, RowBlockIndices, VerticalSlashMask, WindowMask, "
                    "PermutedBlockMask or ClusteredMask, got "
                    f"{type(mask).__name__}")


def merge_states(out_a, lse_a, out_b, lse_b) -> Tuple[np.ndarray, np.ndarray]:
    """Merge two attention states over disjoint key sets exactly.

    out_* (..., Dv) and lse_* (...) as returned with `return_lse=True`. Returns (out, lse) with
    lse = logaddexp(lse_a, lse_b); rows empty on both sides stay out = 0, lse = -inf.
    """
    oa, la, ob, lb = (as_float_array(x, name) for name, x in
                      (("out_a", out_a), ("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)))
    return _core.merge_states(oa, la, ob, lb)
