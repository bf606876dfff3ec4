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


def _total_visible(q_len: int, kv_len: int, causal: bool) -> int:
    """Visible (query, key) pairs of the whole attention (bottom-right causal alignment)."""
    if not causal:
        return q_len * kv_len
    return int(_visible_pairs(q_len, kv_len, max(q_len, 1), max(kv_len, 1), True).sum())


class VerticalSlashMask:
    """MInference's vertical-slash pattern: key columns plus diagonal bands, per (batch, head).

    The pattern is kept as the official estimate leaves it (``vertical_slash_sparse_attention``
    inputs), never as a per-query list: ``vertical`` (B, H, NV) ascending key positions and
    ``slash`` (B, H, NS) descending diagonal offsets o = i - j, each row -1 padded at its end.
    The kernel (:func:`spattn.kernels.vertical_slash_attention`) converts them per query block of
    ``block`` rows with the official index conversion (slash ranges of ``block``-key tiles and
    the vertical columns left of them) and applies the causal rule per element, so the executed
    mask is the official kernel's, token for token. Causal prefill only (Nq == Nk == length).

    Parameters
    ----------
    vertical, slash : array_like of int, shapes (B, H, NV) and (B, H, NS)
    length : int
        q_len == kv_len the pattern was made for.
    block : int, default 64
        Query block of the conversion (official 64).
    """

    def __init__(self, vertical, slash, length: int, block: int = 64):
        self.length = check_int(length, "length")
        self.block = check_positive_int(block, "block")
        arrs = []
        for name, a in (("vertical", vertical), ("slash", slash)):
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
            if a.ndim != 3:
                raise ValueError(f"{name} must have shape (B, H, n), got {a.shape}")
            a = np.array(a, dtype=np.int32, order="C")  # an own copy, read-only: the counts below stay true
            a.flags.writeable = False
            arrs.append(a)
        self.vertical, self.slash = arrs
        if self.vertical.shape[:2] != self.slash.shape[:2]:
            raise ValueError(f"vertical and slash must agree on (B, H), got {self.vertical.shape} and {self.slash.shape}")
        # sortedness and ranges are checked in C++ (ValueError naming the row), which also counts the
        # visible pairs the density needs
        from . import _core
        self._pairs = _core.vertical_slash_pairs(self.vertical, self.slash, self.block, self.length)

    q_len = property(lambda self: self.length)
    kv_len = property(lambda self: self.length)

    @property
    def shape(self) -> tuple:
        return self.vertical.shape[:2]

    def __repr__(self) -> str:
        return (f"VerticalSlashMask(B={self.shape[0]}, H={self.shape[1]}, length={self.length}, "
                f"NV={self.vertical.shape[2]}, NS={self.slash.shape[2]}, block={self.block})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        """Raise ValueError unless the pattern fits attention of the given shape."""
        if Nq != Nk or Nk != self.length:
            raise ValueError(f"the vertical-slash pattern was made for Nq = Nk = {self.length}, got Nq={Nq}, Nk={Nk}")
        if self.shape[0] != B or self.shape[1] not in (Hq, 1):
            raise ValueError(f"the vertical-slash pattern has (B, H) = {self.shape}, q has B={B}, Hq={Hq}")

    def density(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Share of the causal (query, key) pairs the pattern computes, per (B, H)."""
        if q_len is not None and check_int(q_len, "q_len") != self.length:
            raise ValueError(f"q_len must be the pattern's length {self.length}, got {q_len}")
        return self._pairs / max(_total_visible(self.length, self.length, as_causal(causal)), 1)

    def to_token_indices(self) -> TokenIndices:
        """The same keys as TokenIndices (group_size = block): per query block the keys of its runs
        below the block's end. Memory grows with blocks x keys per block: for tests and plots."""
        from . import _core
        idx = _core.vertical_slash_token_indices(self.vertical, self.slash, self.block, self.length)
        return TokenIndices(idx, self.block, self.length, assume_sorted=True)

    def to_dense(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Element mask (B, H, length, length) bool, causal, for small sizes."""
        return self.to_token_indices().to_dense(self.length, causal=True)


class WindowMask:
    """Token-level window with attention sinks (StreamingLLM; MInference's A-shape).

    Query i (position p = i + kv_len - q_len) sees key j iff (j < sinks or
    p - left <= j <= p + right) and, when causal, j <= p. ``left``/``right`` None: unbounded.
    Shared by every head. Executed by :func:`spattn.kernels.window_attention` (two key runs per
    query tile, read in place, per-row window limits inside the boundary tiles).
    """

    def __init__(self, q_len: int, kv_len: int, *, sinks: int = 0, left: Optional[int] = None,
                 right: Optional[int] = None):
        self.q_len = check_int(q_len, "q_len")
        self.kv_len = check_int(kv_len, "kv_len")
        self.sinks = check_int(sinks, "sinks")
        if self.q_len < 0 or self.kv_len < 0 or self.sinks < 0:
            raise ValueError(f"q_len, kv_len and sinks must be >= 0, got {self.q_len}, {self.kv_len}, {self.sinks}")
        self.left = None if left is None else check_int(left, "left")
        self.right = None if right is None else check_int(right, "right")
        for name, val in (("left", self.left), ("right", self.right)):
            if val is not None and val < 0:
                raise ValueError(f"{name} must be >= 0 or None (unbounded), got {val}")

    def __repr__(self) -> str:
        return (f"WindowMask(q_len={self.q_len}, kv_len={self.kv_len}, sinks={self.sinks}, left={self.left}, "
                f"right={self.right})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        if (Nq, Nk) != (self.q_len, self.kv_len):
            raise ValueError(f"the window was made for q_len={self.q_len}, kv_len={self.kv_len}, got Nq={Nq}, Nk={Nk}")

    def _rows(self, causal: bool):
        """Per query row: (sink keys seen, window keys [lo, hi] beyond the sinks), int64 arrays."""
        p = np.arange(self.q_len, dtype=np.int64) + (self.kv_len - self.q_len)
        hi = np.full_like(p, self.kv_len - 1) if self.right is None else np.minimum(p + self.right, self.kv_len - 1)
        if causal:
            hi = np.minimum(hi, p)
        lo = np.zeros_like(p) if self.left is None else np.maximum(p - self.left, 0)
        s = min(self.sinks, self.kv_len)
        sink_seen = np.clip(p + 1, 0, s) if causal else np.full_like(p, s)
        win = np.clip(hi - np.maximum(lo, s) + 1, 0, None)
        return sink_seen, win

    def density(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Share of visible (query, key) pairs the window computes (one value, shape (1, 1))."""
        if q_len is not None and check_int(q_len, "q_len") != self.q_len:
            raise ValueError(f"q_len must be the window's q_len {self.q_len}, got {q_len}")
        causal = as_causal(causal)
        sink_seen, win = self._rows(causal)
        total = _total_visible(self.q_len, self.kv_len, causal)
        return np.full((1, 1), float((sink_seen + win).sum()) / max(total, 1))

    def to_dense(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Element mask (1, 1, q_len, kv_len) bool, for small sizes."""
        if self.q_len * self.kv_len > _DENSE_LIMIT:
            raise ValueError("to_dense is meant for small masks")
        p = np.arange(self.q_len)[:, None] + (self.kv_len - self.q_len)
        j = np.arange(self.kv_len)[None, :]
        win = np.ones((self.q_len, self.kv_len), dtype=bool)
        if self.left is not None:
            win &= j >= p - self.left
        if self.right is not None:
            win &= j <= p + self.right
        m = (j < self.sinks) | win
        if as_causal(causal):
            m &= j <= p
        return m[None, None]


class PermutedBlockMask:
    """A block mask over permuted keys (PBS-Attn): the permutation plus the blocks selected in
    permuted order; causality always uses original positions (DESIGN.md, "Permutations").

    Query block qb (rows ``[qb*block, (qb+1)*block)`` in original order) attends to the keys at
    permuted positions ``[kb*block, (kb+1)*block)`` of every selected kb, i.e. to original keys
    ``perm[kb*block : (kb+1)*block]``, each visible to the queries at or after its original position.
    Causal prefill only (Nq == Nk == length). Run by :func:`spattn.kernels.permuted_block_attention`.

    Parameters
    ----------
    perm : array_like of int, shape (B, H, length)
        ``perm[b, h, p]`` = original position of the key at permuted position p; each row a
        permutation of ``0 .. length-1``.
    blocks : BlockMask
        Square blocks (B, H, nb, nb) over (query blocks, permuted key blocks), q_len = kv_len = length.
    """

    def __init__(self, perm, blocks: "BlockMask"):
        if not isinstance(blocks, BlockMask):
            raise TypeError(f"blocks must be a spattn.BlockMask, got {type(blocks).__name__}")
        if blocks.block_q != blocks.block_k or blocks.q_len != blocks.kv_len:
            raise ValueError("blocks must be square (block_q == block_k) with q_len == kv_len, got "
                             f"block_q={blocks.block_q}, block_k={blocks.block_k}, q_len={blocks.q_len}, "
                             f"kv_len={blocks.kv_len}")
        arr = np.asarray(perm)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"perm must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 3 or arr.shape[2] != blocks.q_len:
            raise ValueError(f"perm must have shape (B, H, {blocks.q_len}), got {arr.shape}")
        if blocks.blocks.shape[:2] != arr.shape[:2]:
            raise ValueError(f"blocks must have (B, H) = {arr.shape[:2]}, got {blocks.blocks.shape[:2]}")
        self.perm = np.ascontiguousarray(arr, dtype=np.int32)
        self.blocks = blocks
        from . import _core
        _core.permuted_block_pairs(self.perm, self.blocks.blocks.view(np.uint8), self.block)  # checks the perm rows

    block = property(lambda self: self.blocks.block_q)
    length = property(lambda self: self.blocks.q_len)
    q_len = property(lambda self: self.blocks.q_len)
    kv_len = property(lambda self: self.blocks.q_len)

    @property
    def shape(self) -> tuple:
        return self.perm.shape[:2]

    def __repr__(self) -> str:
        return (f"PermutedBlockMask(B={self.shape[0]}, H={self.shape[1]}, length={self.length}, block={self.block}, "
                f"blocks kept={self.blocks.blocks.mean():.3f})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        if Nq != Nk or Nk != self.length:
            raise ValueError(f"the permuted block mask was made for Nq = Nk = {self.length}, got Nq={Nq}, Nk={Nk}")
        if self.shape != (B, Hq):
            raise ValueError(f"the permuted block mask has (B, H) = {self.shape}, q has B={B}, Hq={Hq}")

    def density(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Share of the causal (query, key) pairs the pattern computes, per (B, H)."""
        if q_len is not None and check_int(q_len, "q_len") != self.length:
            raise ValueError(f"q_len must be the mask's length {self.length}, got {q_len}")
        from . import _core  # counted on each call: the BlockMask may have been edited since
        pairs = _core.permuted_block_pairs(self.perm, self.blocks.blocks.view(np.uint8), self.block)
        return pairs / max(_total_visible(self.length, self.length, as_causal(causal)), 1)

    def to_token_indices(self) -> TokenIndices:
        """The same keys as TokenIndices (group_size = block; original positions <= each block's
        last query). Memory grows with blocks x keys per block: for tests and plots."""
        from . import _core
        idx = _core.permuted_block_token_indices(self.perm, self.blocks.blocks.view(np.uint8), self.block)
        return TokenIndices(idx, self.block, self.length, assume_sorted=True)

    def to_dense(self, q_len: Optional[int] = None, causal: bool = True) -> np.ndarray:
        """Element mask (B, H, length, length) bool in original positions, causal, for small sizes."""
        return self.to_token_indices().to_dense(self.length, causal=True)


class ClusteredMask:
    """A clustered pattern (SVG2's semantic-aware permutation; DESIGN.md, "Permutations"):
    queries and keys grouped into variable-size clusters, and a map of the (query cluster, key
    cluster) pairs computed.

    Query i of head h (cluster ``q_labels[b, h, i]``) attends to every key j of kv head
    ``h // (Hq / Hkv)`` whose cluster ``k_labels[b, h // (Hq / Hkv), j]`` is selected in
    ``map[b, h, q_labels[b, h, i]]``. When attention runs causally, the causal rule also applies
    per element on original positions (a spattn extension; SVG2 is bidirectional). Nothing is
    stored per query or permuted: the kernel (:func:`spattn.kernels.cluster_block_attention`)
    orders the clusters itself. Memory: O(Nq + Nk + Cq Ck) per head.

    Parameters
    ----------
    q_labels : array_like of int, shape (B, Hq, Nq)
        Query cluster of every query, in ``[0, Cq)``.
    k_labels : array_like of int, shape (B, Hkv, Nk)
        Key cluster of every key, in ``[0, Ck)``; Hq must be a multiple of Hkv.
    map : array_like of bool, shape (B, Hq, Cq, Ck)
        Selected key clusters of every query cluster.
    """

    def __init__(self, q_labels, k_labels, map):  # noqa: A002 - the official name
        arrs = []
        for name, a, nd in (("q_labels", q_labels, 3), ("k_labels", k_labels, 3)):
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
            if a.ndim != nd:
                raise ValueError(f"{name} must have {nd} dimensions, got shape {a.shape}")
            arrs.append(np.ascontiguousarray(a, dtype=np.int32))
        self.q_labels, self.k_labels = arrs
        m = np.asarray(map)
        if m.dtype != np.bool_ and not (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all()):
            raise TypeError(f"map must be a bool (or 0/1 integer) array, got dtype {m.dtype}")
        if m.ndim != 4:
            raise ValueError(f"map must have shape (B, Hq, Cq, Ck), got {m.shape}")
        self.map = np.ascontiguousarray(m, dtype=bool)
        from . import _core
        self._pairs = _core.cluster_block_pairs(self.q_labels, self.k_labels, self.map.view(np.uint8), False)

    q_len = property(lambda self: self.q_labels.shape[2])
    kv_len = property(lambda self: self.k_labels.shape[2])
    num_q_clusters = property(lambda self: self.map.shape[2])
    num_k_clusters = property(lambda self: self.map.shape[3])

    @property
    def shape(self) -> tuple:
        return self.q_labels.shape[:2]

    @property
    def q_sizes(self) -> np.ndarray:
        """Tokens per query cluster (B, Hq, Cq), int64."""
        B, H, Cq = self.map.shape[:3]
        return np.stack([np.bincount(r, minlength=Cq) for r in self.q_labels.reshape(B * H, -1)]).reshape(B, H, Cq)

    @property
    def k_sizes(self) -> np.ndarray:
        """Tokens per key cluster (B, Hkv, Ck), int64."""
        B, H = self.k_labels.shape[:2]
        Ck = self.map.shape[3]
        return np.stack([np.bincount(r, minlength=Ck) for r in self.k_labels.reshape(B * H, -1)]).reshape(B, H, Ck)

    def __repr__(self) -> str:
        return (f"ClusteredMask(B={self.shape[0]}, Hq={self.shape[1]}, Hkv={self.k_labels.shape[1]}, "
                f"q_len={self.q_len}, kv_len={self.kv_len}, Cq={self.num_q_clusters}, Ck={self.num_k_clusters})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        """Raise ValueError unless the pattern fits attention of the given shape."""
        if (Nq, Nk) != (self.q_len, self.kv_len):
            raise ValueError(f"the clustered mask was made for q_len={self.q_len}, kv_len={self.kv_len}, "
                             f"got Nq={Nq}, Nk={Nk}")
        if self.shape != (B, Hq):
            raise ValueError(f"the clustered mask has (B, Hq) = {self.shape}, q has B={B}, Hq={Hq}")

    def density(self, q_len: Optional[int] = None, causal: bool = False) -> np.ndarray:
        """Share of the visible (query, key) pairs the pattern computes, per (B, Hq); non-causal it is
        the official ``density_calculation``: sum of map * |Q_i| |K_j| over Nq Nk."""
        if q_len is not None and check_int(q_len, "q_len") != self.q_len:
            raise ValueError(f"q_len must be the mask's q_len {self.q_len}, got {q_len}")
        causal = as_causal(causal)
        pairs = self._pairs
        if causal:
            from . import _core
            pairs = _core.cluster_block_pairs(self.q_labels, self.k_labels, self.map.view(np.uint8), True)
        return pairs / max(_total_visible(self.q_len, self.kv_len, causal), 1)

    def to_token_indices(self, causal: bool = False) -> TokenIndices:
        """The same keys as TokenIndices (group_size = 1; when causal, only keys at or before each query's
        causal limit). Memory grows with queries x selected keys: for tests and plots."""
        from . import _core
        idx = _core.cluster_block_token_indices(self.q_labels, self.k_labels, self.map.view(np.uint8),
                                                as_causal(causal))
        return TokenIndices(idx, 1, self.kv_len, assume_sorted=True)

    def to_dense(self, q_len: Optional[int] = None, causal: bool = False) -> np.ndarray:
        """Element mask (B, Hq, q_len, kv_len) bool in original positions, for small sizes."""
        if self.q_len * self.kv_len * self.shape[0] * self.shape[1] > _DENSE_LIMIT:
            raise ValueError("to_dense is meant for small masks")
        G = self.shape[1] // self.k_labels.shape[1]
        kl = np.repeat(self.k_labels, G, axis=1)
        sel = np.take_along_axis(self.map, self.q_labels[..., None].astype(np.intp), axis=2)  # (B, Hq, Nq, Ck)
        m = np.take_along_axis(sel, np.broadcast_to(kl[:, :, None, :], sel.shape[:3] + (self.kv_len,)).astype(np.intp),
                               axis=3) if self.kv_len else np.zeros(sel.shape[:3] + (0,), bool)
        if as_causal(causal):
            m = m & (np.arange(self.kv_len)[None, :] <= np.arange(self.q_len)[:, None] + (self.kv_len - self.q_len))
        return m
class RowBlockIndices:
    """Key blocks per query row: InfLLM-V2's / NSA's per-token top-k block selection.

    Parameters
    ----------
    blocks : array_like of int, shape (B, H, Nq, K)
        Ids of the key blocks (keys ``[b * block_size, (b + 1) * block_size)``) each query row
        attends to; -1 marks an unused slot. H is Hq (one list per query head), Hkv (one list
        per kv head, shared by the query heads of its GQA group, as InfLLM-V2's ``topk_idx``)
        or 1. Each row is treated as a set: sorted ascending, duplicates dropped, -1 slots last.
    block_size : int
        Keys per block.
    kv_len : int
        Number of keys the blocks refer to.
    assume_sorted : bool, default False
        Skip the sort when every row is already strictly increasing with -1 slots last (as the
        estimators produce them); ranges are still checked.

    Memory is O(Nq K), where the same selection as TokenIndices would take O(Nq K block_size).
    Executed by :func:`spattn.kernels.row_block_sparse_attention`, causal rule per element.
    """

    def __init__(self, blocks, block_size: int, kv_len: int, assume_sorted: bool = False):
        self.block_size = check_positive_int(block_size, "block_size")
        self.kv_len = check_int(kv_len, "kv_len")
        if self.kv_len < 0:
            raise ValueError(f"kv_len must be >= 0, got {self.kv_len}")
        if not isinstance(assume_sorted, (bool, np.bool_)):
            raise TypeError(f"assume_sorted must be a bool, got {type(assume_sorted).__name__}")
        arr = np.asarray(blocks)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"blocks must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 4:
            raise ValueError(f"blocks must have shape (B, H, Nq, K), got {arr.shape}")
        nkb = self.num_kv_blocks
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < -1 or hi >= nkb:
                raise ValueError(f"blocks must lie in [-1, ceil(kv_len / block_size)={nkb}), got values in [{lo}, {hi}]")
        if assume_sorted:
            self.blocks = np.ascontiguousarray(arr, dtype=np.int32)
            return
        big = np.iinfo(np.int64).max
        s = np.sort(np.where(arr < 0, big, arr.astype(np.int64)), axis=-1)
        dup = np.zeros(s.shape, dtype=bool)
        dup[..., 1:] = s[..., 1:] == s[..., :-1]
        s = np.sort(np.where(dup, big, s), axis=-1)
        self.blocks = np.ascontiguousarray(np.where(s == big, -1, s).astype(np.int32))

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_size)

    @property
    def shape(self) -> tuple:
        return self.blocks.shape

    def __repr__(self) -> str:
        return (f"RowBlockIndices(shape={self.blocks.shape}, block_size={self.block_size}, kv_len={self.kv_len}, "
                f"used={(self.blocks >= 0).mean() if self.blocks.size else 0.0:.3f})")

    def check_against(self, B: int, Hq: int, Nq: int, Nk: int) -> None:
        """Raise ValueError unless the blocks fit attention of the given shape (H must divide Hq;
        the kernel further needs H in (Hq, Hkv, 1))."""
        if self.kv_len != Nk:
            raise ValueError(f"blocks were made for kv_len={self.kv_len}, but k has Nk={Nk}")
        b, h, n, _ = self.blocks.shape
        if b != B or n != Nq or h < 1 or Hq % h:
            raise ValueError(f"blocks must have shape (B, H, Nq, K) = ({B}, H, {Nq}, K) with H dividing Hq={Hq} "
                             f"(Hq, Hkv or 1); got {self.blocks.shape}")

    def _kept_keys(self, causal: bool) -> np.ndarray:
        """Visible keys of the listed blocks summed over rows and slots, (B, H) int64; rows in
        chunks, so the int64 temporaries stay small at long lengths."""
        B, H, Nq, K = self.blocks.shape
        kept = np.zeros((B, H), np.int64)
        for i0 in range(0, Nq, 4096):
            idx = self.blocks[:, :, i0:i0 + 4096].astype(np.int64)
            start = idx * self.block_size
            end = np.minimum(start + self.block_size, self.kv_len)
            if causal:
                p = np.arange(i0, i0 + idx.shape[2], dtype=np.int64) + (self.kv_len - Nq)
                end = np.minimum(end, p[:, None] + 1)
            kept += np.where(idx >= 0, np.clip(end - start, 0, None), 0).sum(axis=(-1, -2))
        return kept

    def density(self, q_len: Optional[int] = None, causal: bool = False) -> np.ndarray:
        """Share of visible (query, key) pairs selected, per (B, H)."""
        causal = as_causal(causal)
        Nq = self.blocks.shape[2]
        if q_len is not None and check_int(q_len, "q_len") != Nq:
            raise ValueError(f"q_len must be the blocks' Nq {Nq}, got {q_len}")
        kept = self._kept_keys(causal)
        total = _total_visible(Nq, self.kv_len, causal)
        return kept / total if total > 0 else kept.astype(np.float64)

    def row_overlap(self) -> np.ndarray:
        """Selection locality: per (B, H) the mean over rows i >= 1 of |S_i & S_(i-1)| / |S_i|, the
        share of a row's blocks its predecessor also listed (for decode steps, the blocks kept
        from the previous step; NOSA's diagnostic). Rows with no block count as 1; NaN for
        Nq < 2."""
        B, H, Nq, K = self.blocks.shape
        if Nq < 2:
            return np.full((B, H), np.nan)
        total = np.zeros((B, H))
        for i0 in range(1, Nq, 512):
            cur = self.blocks[:, :, i0:i0 + 512]
            prev = self.blocks[:, :, i0 - 1:i0 - 1 + cur.shape[2]]
            common = ((cur[..., :, None] == prev[..., None, :]) & (cur[..., :, None] >= 0)).any(-1).sum(-1)
            n = (cur >= 0).sum(-1)
            total += np.where(n > 0, common / np.maximum(n, 1), 1.0).sum(-1)
        return total / (Nq - 1)

    def to_dense(self, q_len: Optional[int] = None, causal: bool = False) -> np.ndarray:
        """Element mask (B, H, Nq, kv_len) bool, for small sizes."""
        causal = as_causal(causal)
        B, H, Nq, K = self.blocks.shape
        if q_len is not None and check_int(q_len, "q_len") != Nq:
            raise ValueError(f"q_len must be the blocks' Nq {Nq}, got {q_len}")
        if B * H * Nq * self.kv_len > _DENSE_LIMIT:
            raise ValueError("to_dense is meant for small masks")
        nkb = self.num_kv_blocks
        sel = np.zeros((B, H, Nq, nkb + 1), dtype=bool)
        np.put_along_axis(sel, np.where(self.blocks < 0, nkb, self.blocks).astype(np.int64), True, axis=-1)
        m = sel[..., np.arange(self.kv_len) // self.block_size]
        if causal:
            p = np.arange(Nq)[:, None] + (self.kv_len - Nq)
            m = m & (np.arange(self.kv_len)[None, :] <= p)
        return np.ascontiguousarray(m)
