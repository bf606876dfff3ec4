"""Mask formats: BlockMask (block-level boolean map) and TokenIndices (key positions per query
group). Both are plain numpy-backed values: build, combine, count and plot them with numpy;
the kernels compile them, never the user. See DESIGN.md, "Mask formats".
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ._validation import as_causal, check_int, check_positive_int

_DENSE_LIMIT = 1 << 28  # elements; to_dense refuses larger element masks


def _visible_pairs(q_len: int, kv_len: int, block_q: int, block_k: int, causal: bool,
                   rows: Optional[slice] = None) -> np.ndarray:
    """Number of visible (query, key) pairs inside each block, shape (nqb, nkb) (or the q-block
    rows `rows` of it), int64.

    Closed form per block, no element mask: with bottom-right causal alignment row i sees
    min(max(i + off + 1 - j0, 0), w) keys of a block starting at j0 of width w.
    """
    nqb, nkb = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
    i0 = np.arange(nqb, dtype=np.int64)[rows if rows is not None else slice(None)][:, None] * block_q
    n = np.minimum(q_len, i0 + block_q) - i0
    j0 = np.arange(nkb, dtype=np.int64)[None, :] * block_k
    w = np.minimum(kv_len, j0 + block_k) - j0
    if not causal:
        return (n * w).astype(np.int64)
    off = kv_len - q_len
    a = i0 + off + 1 - j0
    return (_clip_sum_below(a + n, w) - _clip_sum_below(a, w)).astype(np.int64)


def _clip_sum_below(t, w):
    """Sum over the integers x < t of clip(x, 0, w), elementwise, in int64 (|t|, w <= ~2**31, so
    the products stay below 2**63)."""
    t = np.asarray(t, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    tri = t * (t - 1) // 2
    full = w * (w + 1) // 2 + (t - 1 - w) * w
    return np.where(t <= 1, 0, np.where(t <= w + 1, tri, full))


class BlockMask:
    """Boolean block map of shape (B, H, ceil(q_len/block_q), ceil(kv_len/block_k)).

    H is the number of query heads, or 1 for a mask shared by all heads. When attention runs
    causally, the causal rule also applies element-wise inside the selected blocks.

    Parameters
    ----------
    blocks : array_like of bool or int (0/1), shape (B, H, nqb, nkb)
    block_q, block_k : int
        Block sizes along queries and keys (>= 1).
    q_len, kv_len : int
        Sequence lengths the mask was made for.
    """

    def __init__(self, blocks, block_q: int, block_k: int, q_len: int, kv_len: int):
        self.block_q = check_positive_int(block_q, "block_q")
        self.block_k = check_positive_int(block_k, "block_k")
        self.q_len, self.kv_len = check_int(q_len, "q_len"), check_int(kv_len, "kv_len")
        arr = np.asarray(blocks)
        if arr.dtype != np.bool_:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"blocks must be a bool or integer array, got dtype {arr.dtype}")
            if arr.size and (arr.min() < 0 or arr.max() > 1):
                raise ValueError("blocks given as integers must hold only 0 and 1")
            arr = arr.astype(bool)
        expected = (math.ceil(self.q_len / self.block_q), math.ceil(self.kv_len / self.block_k))
        if arr.ndim != 4 or arr.shape[2:] != expected:
            raise ValueError(
                f"blocks must have shape (B, H, {expected[0]}, {expected[1]}) for q_len={q_len}, "
                f"kv_len={kv_len}, block_q={block_q}, block_k={block_k}; got {arr.shape}")
        self.blocks = np.ascontiguousarray(arr)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def full(cls, B: int, H: int, q_len: int, kv_len: int, block_q: int = 64, block_k: int = 64) -> "BlockMask":
        """A mask selecting every block."""
        B, H = check_int(B, "B"), check_int(H, "H")
        q_len, kv_len = check_int(q_len, "q_len"), check_int(kv_len, "kv_len")
        block_q, block_k = check_positive_int(block_q, "block_q"), check_positive_int(block_k, "block_k")
        nqb, nkb = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
        return cls(np.ones((B, H, nqb, nkb), dtype=bool), block_q, block_k, q_len, kv_len)

    @classmethod
    def from_kv_blocks(cls, kv_num_blocks, kv_indices, block_q: int, block_k: int, q_len: int, kv_len: int,
                       full_kv_num_blocks=None, full_kv_indices=None) -> "BlockMask":
        """Build a mask from FlexAttention-style block lists.

        Parameters
        ----------
        kv_num_blocks : array_like of int, shape (B, H, nqb)
            Number of listed kv blocks per q block (FlexAttention's ``kv_num_blocks``).
        kv_indices : array_like of int, shape (B, H, nqb, L)
            kv block indices per q block; only the first ``kv_num_blocks`` entries of each row
            are read (the rest is padding), as in FlexAttention's ``kv_indices``.
        block_q, block_k, q_len, kv_len : int
            Block sizes and lengths (FlexAttention's BLOCK_SIZE and seq lengths).
        full_kv_num_blocks, full_kv_indices : optional
            FlexAttention's full blocks (no element mask); they are selected too. spattn tells
            full from partial blocks itself when it compiles a plan.
        """
        q_len, kv_len = check_int(q_len, "q_len"), check_int(kv_len, "kv_len")
        block_q, block_k = check_positive_int(block_q, "block_q"), check_positive_int(block_k, "block_k")
        nqb, nkb = math.ceil(q_len / block_q), math.ceil(kv_len / block_k)
        pairs = [(kv_num_blocks, kv_indices, "kv")]
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError("give both full_kv_num_blocks and full_kv_indices, or neither")
        if full_kv_num_blocks is not None:
            pairs.append((full_kv_num_blocks, full_kv_indices, "full_kv"))
        blocks = None
        for num, idx, name in pairs:
            num, idx = np.asarray(num), np.asarray(idx)
            if not np.issubdtype(num.dtype, np.integer) or not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(f"{name}_num_blocks and {name}_indices must be integer arrays, "
                                f"got {num.dtype} and {idx.dtype}")
            if num.ndim != 3 or idx.ndim != 4 or idx.shape[:3] != num.shape or num.shape[2] != nqb:
                raise ValueError(f"{name}_num_blocks must have shape (B, H, {nqb}) and {name}_indices (B, H, {nqb}, L) "
                                 f"for q_len={q_len}, block_q={block_q}; got {num.shape} and {idx.shape}")
            if num.size and (num.min() < 0 or num.max() > idx.shape[3]):
                raise ValueError(f"{name}_num_blocks must lie in [0, {idx.shape[3]}], got [{num.min()}, {num.max()}]")
            used = np.arange(idx.shape[3]) < num[..., None]
            if np.any(used & ((idx < 0) | (idx >= nkb))):
                raise ValueError(f"{name}_indices must lie in [0, {nkb}) for kv_len={kv_len}, block_k={block_k}")
            if blocks is None:
                blocks = np.zeros(num.shape + (nkb,), dtype=bool)
            elif blocks.shape[:3] != num.shape:
                raise ValueError(f"full_kv_num_blocks shape {num.shape} differs from kv_num_blocks {blocks.shape[:3]}")
            b, h, r, c = np.nonzero(used)
            blocks[b, h, r, idx[b, h, r, c]] = True
        return cls(blocks, block_q, block_k, q_len, kv_len)

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple:
        return self.blocks.shape

    @property
    def num_heads(self) -> int:
        return self.blocks.shape[1]

    def __repr__(self) -> str:
        return (f"BlockMask(shape={self.blocks.shape}, block_q={self.block_q}, block_k={self.block_k}, "
                f"q_len={self.q_len}, kv_len={self.kv_len}, block_density={self.blocks.mean():.3f})")

    # ------------------------------------------------------------------ statistics
    def density(self, causal: bool = False) -> np.ndarray:
        """Share of the visible (query, key) pairs that the mask computes, per (B, H).

        Counted exactly at element level (causal rule inside diagonal blocks included), without
        building the element mask. Rows of a causal call that see no key count as nothing.
        """
        causal = as_causal(causal)
        B, H, nqb, nkb = self.blocks.shape
        kept = np.zeros((B, H), dtype=np.int64)
        total = 0
        step = max(1, (1 << 19) // max(1, B * H * nkb))  # q-block rows per chunk: int64 temporaries of 4 MB
        for r0 in range(0, nqb, step):
            pairs = _visible_pairs(self.q_len, self.kv_len, self.block_q, self.block_k, causal, slice(r0, r0 + step))
            total += int(pairs.sum())
            kept += np.einsum("bhqk,qk->bh", self.blocks[:, :, r0:r0 + step].astype(np.int64), pairs)
        return kept / total if total > 0 else np.zeros(kept.shape)

    def to_dense(self, causal: bool = False) -> np.ndarray:
        """Element mask (B, H, q_len, kv_len) bool, for small sizes (plots, tests)."""
        causal = as_causal(causal)
        B, H = self.blocks.shape[:2]
        if B * H * self.q_len * self.kv_len > _DENSE_LIMIT:
            raise ValueError(f"to_dense would build {B * H * self.q_len * self.kv_len} elements; "
                             f"it is meant for small masks (<= {_DENSE_LIMIT})")
        # gathered by block index: memory of the result only (repeating each block block_q times
        # first built nqb * block_q rows, 2**31 per block for a block size far beyond the sequence)
        rows = np.arange(self.q_len) // self.block_q
        cols = np.arange(self.kv_len) // self.block_k
        m = self.blocks[:, :, rows][:, :, :, cols]
        if causal:
            off = self.kv_len - self.q_len
            m = m & (np.arange(self.kv_len)[None, :] <= np.arange(self.q_len)[:, None] + off)
        return np.ascontiguousarray(m)

    # ------------------------------------------------------------------ algebra
    def _check_compatible(self, other: "BlockMask", op: str) -> None:
        if not isinstance(other, BlockMask):
            raise TypeError(f"BlockMask {op} needs another BlockMask, got {type(other).__name__}")
        mine = (self.block_q, self.block_k, self.q_len, self.kv_len)
        theirs = (other.block_q, other.block_k, other.q_len, other.kv_len)
        if mine != theirs:
            raise ValueError(f"BlockMask {op}: (block_q, block_k, q_len, kv_len) differ: {mine} vs {theirs}")

    def _combine(self, other: "BlockMask", fn, op: str) -> "BlockMask":
        self._check_compatible(other, op)
        try:
            blocks = fn(self.blocks, other.blocks)  # H = 1 broadcasts against H = Hq
        except ValueError as exc:
            raise ValueError(f"BlockMask {op}: shapes {self.shape} and {other.shape} do not broadcast") from exc
        return BlockMask(blocks, self.block_q, self.block_k, self.q_len, self.kv_len)

    def __or__(self, other: "BlockMask") -> "BlockMask":
        return self._combine(other, np.logical_or, "|")

    def __and__(self, other: "BlockMask") -> "BlockMask":
        return self._combine(other, np.logical_and, "&")

    def __eq__(self, other) -> bool:
        if not isinstance(other, BlockMask):
            return NotImplemented
        return ((self.block_q, self.block_k, self.q_len, self.kv_len) ==
                (other.block_q, other.block_k, other.q_len, other.kv_len)
                and self.blocks.shape == other.blocks.shape and bool(np.all(self.blocks == other.blocks)))

    __hash__ = None

    # ------------------------------------------------------------------ checks / plots
    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        """Raise ValueError unless the mask fits attention of the given shape."""
        if (self.q_len, self.kv_len) != (Nq, Nk):
            raise ValueError(f"mask was made for q_len={self.q_len}, kv_len={self.kv_len}, "
                             f"but q/k have Nq={Nq}, Nk={Nk}")
        Bm, Hm = self.blocks.shape[:2]
        if Bm != B or Hm not in (1, Hq):
            raise ValueError(f"mask.blocks must have B={B} and H in (1, {Hq}), got shape {self.blocks.shape}")

    def plot(self, b: int = 0, h: int = 0, ax=None, causal: bool = False, title: Optional[str] = None):
        """Draw the block map of (b, h) with matplotlib; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        img = self.blocks[b, min(h, self.blocks.shape[1] - 1)].astype(float)
        if causal:
            vis = _visible_pairs(self.q_len, self.kv_len, self.block_q, self.block_k, True) > 0
            img = np.where(vis, img, np.nan)
        ax.imshow(img, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xlabel(f"kv block ({self.block_k})")
        ax.set_ylabel(f"q block ({self.block_q})")
        d = self.density(causal)[b, min(h, self.blocks.shape[1] - 1)]
        ax.set_title(title or f"b={b} h={h} density={d:.2f}")
        return ax


class TokenIndices:
    """Selected key positions per group of `group_size` consecutive queries.

    Parameters
    ----------
    indices : array_like of int, shape (B, Hq, G, K)
        Key positions in [0, kv_len); -1 marks an unused slot. Each row is treated as a set:
        it is sorted ascending, duplicates are dropped and -1 slots moved to the end (so the
        stored `.indices` may differ from the input in order, never in content).
    group_size : int
        Queries per group: 1 = per query, block_q = per query block; G = ceil(Nq / group_size).
    kv_len : int
        Number of keys the indices refer to.
    assume_sorted : bool, default False
        Skip the sort/deduplication when every row is already strictly increasing with -1 slots
        last (as estimators produce them); ranges are still checked, and the kernels reject rows
        that do not ascend.
    """

    def __init__(self, indices, group_size: int, kv_len: int, assume_sorted: bool = False):
        self.group_size = check_positive_int(group_size, "group_size")
        self.kv_len = check_int(kv_len, "kv_len")
        if not isinstance(assume_sorted, (bool, np.bool_)):
            raise TypeError(f"assume_sorted must be a bool, got {type(assume_sorted).__name__}")
        arr = np.asarray(indices)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"indices must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 4:
            raise ValueError(f"indices must have shape (B, Hq, G, K), got {arr.shape}")
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < -1 or hi >= self.kv_len:
                raise ValueError(f"indices must lie in [-1, kv_len={self.kv_len}), got values in [{lo}, {hi}]")
        if assume_sorted:
            self.indices = np.ascontiguousarray(arr, dtype=np.int32)
            return
        big = np.where(arr < 0, np.iinfo(np.int64).max, arr.astype(np.int64))
        big = np.sort(big, axis=-1)
        dup = np.zeros(big.shape, dtype=bool)
        dup[..., 1:] = big[..., 1:] == big[..., :-1]
        big[dup] = np.iinfo(np.int64).max
        big = np.sort(big, axis=-1)
        self.indices = np.ascontiguousarray(np.where(big == np.iinfo(np.int64).max, -1, big).astype(np.int32))

    @property
    def shape(self) -> tuple:
        return self.indices.shape

    def __repr__(self) -> str:
        return (f"TokenIndices(shape={self.indices.shape}, group_size={self.group_size}, "
                f"kv_len={self.kv_len}, used={(self.indices >= 0).mean():.3f})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        """Raise ValueError unless the indices fit attention of the given shape."""
        if self.kv_len != Nk:
            raise ValueError(f"indices were made for kv_len={self.kv_len}, but k has Nk={Nk}")
        G = math.ceil(Nq / self.group_size)
        if self.indices.shape[:3] != (B, Hq, G):
            raise ValueError(f"indices must have shape (B, Hq, G, K) = ({B}, {Hq}, {G}, K) for Nq={Nq}, "
                             f"group_size={self.group_size}; got {self.indices.shape}")

    def to_dense(self, q_len: int, causal: bool = False) -> np.ndarray:
        """Element mask (B, Hq, q_len, kv_len) bool, for small sizes."""
        q_len, causal = check_int(q_len, "q_len"), as_causal(causal)
        B, H, G, K = self.indices.shape
        if B * H * q_len * self.kv_len > _DENSE_LIMIT:
            raise ValueError("to_dense is meant for small masks")
        m = np.zeros((B, H, G, self.kv_len + 1), dtype=bool)
        idx = np.where(self.indices < 0, self.kv_len, self.indices)
        np.put_along_axis(m, idx.astype(np.int64), True, axis=-1)
        # gathered by group index, as BlockMask.to_dense; rows past the G groups select nothing
        g = np.arange(q_len) // self.group_size
        if G == 0:
            m = np.zeros((B, H, q_len, self.kv_len), dtype=bool)
        else:
            m = m[:, :, np.minimum(g, G - 1), : self.kv_len] & (g < G)[:, None]
        if causal:
            off = self.kv_len - q_len
            m = m & (np.arange(self.kv_len)[None, :] <= np.arange(q_len)[:, None] + off)
        return np.ascontiguousarray(m)

    def density(self, q_len: Optional[int] = None, causal: bool = False) -> np.ndarray:
        """Share of visible (query, key) pairs selected, per (B, Hq).

        q_len defaults to G * group_size; pass the real Nq when it is not a multiple.
        """
        causal = as_causal(causal)
        B, H, G, K = self.indices.shape
        q_len = G * self.group_size if q_len is None else check_int(q_len, "q_len")
        off = self.kv_len - q_len
        # Rows r0..r1 of each group (empty groups past q_len get r1 < r0).
        r0 = np.arange(G, dtype=np.int64) * self.group_size
        r1 = np.minimum(q_len, r0 + self.group_size) - 1
        idx = self.indices.astype(np.int64)
        valid = idx >= 0
        if causal:
            # key j of group g is visible to rows i >= j - off: max(0, r1 - max(r0, j - off) + 1) of them
            seen = np.clip(r1[:, None] - np.maximum(r0[:, None], idx - off) + 1, 0, None)
            kept = np.where(valid, seen, 0).sum(axis=(-1, -2))
            # rows i < q_len see clip(i + off + 1, 0, kv_len) keys: summed in closed form, not an arange(q_len)
            total = int(_clip_sum_below(off + 1 + q_len, self.kv_len) - _clip_sum_below(off + 1, self.kv_len))
        else:
            kept = (valid.sum(axis=-1) * np.clip(r1 - r0 + 1, 0, None)).sum(axis=-1)
            total = q_len * self.kv_len
        return kept / total if total > 0 else kept.astype(np.float64)
