"""KVCache: the keys and values of a decode, per layer, growing by append, with method state.

Each layer keeps two float32 buffers, k (B, Hkv, capacity, D) and v (B, Hkv, capacity, Dv), of
which rows [0, length) of axis 2 are filled. Appending n tokens writes them in place; when the
capacity is exceeded the buffers are reallocated to max(needed, 2 * capacity) and the filled
rows copied once, so a decode of T single-token appends copies O(T) rows in all (amortised
capacity doubling), never the whole cache per token.

The kernels read the filled prefix in place: a prefix along axis 2 of a (B, Hkv, capacity, D)
buffer is not contiguous when B * Hkv > 1, so the buffers are handed whole, with the length,
to ``attention(..., kv_len=n)`` / ``token_sparse_attention(..., kv_len=n)``, whose C++ side
strides kv heads by the capacity (``AttnShape::kv_capacity``).

Decode methods register per-layer state on the cache (:meth:`KVCache.state`): any object with
``update(k_buffer, start, stop)``, called after rows [start, stop) of the layer's K were written
(Quest keeps its per-page key min / max this way; only the pages the new rows touch change).
State is keyed by layer index and a method key, so one cache serves every layer of a model.

KV-eviction methods (GUI-KV, SpAtten's released variant) shrink a layer once with
:meth:`KVCache.compact`: per-head lists of kept positions, gathered into fresh buffers of
O(kept) rows. Lists per *query* head (GUI-KV selects after ``repeat_kv``) expand the layer to
that many heads; later appends of Hkv heads are then repeated to them.

>>> import numpy as np, spattn
>>> cache = spattn.KVCache()
>>> cache.append(0, np.ones((1, 2, 5, 8)), np.ones((1, 2, 5, 8)))
>>> cache.length(0), cache.keys(0).shape
(5, (1, 2, 5, 8))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Tuple

import numpy as np

from ._validation import as_float_array, check_int


def _as_float_input(x, name: str) -> np.ndarray:
    """A numpy array of a real float dtype (any strides; the cache's write converts it), or a
    torch CPU tensor read through numpy; anything else raises TypeError naming `name`."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name} must be a real floating-point array (float16/32/64), got dtype {x.dtype}")
        return x
    return as_float_array(x, name)


@dataclass
class LayerKV:
    """One layer of a :class:`KVCache`: buffers (B, Hkv, capacity, D / Dv), rows [0, length)
    filled, and the method state registered on the layer."""

    k_buffer: np.ndarray
    v_buffer: np.ndarray
    length: int = 0
    reallocations: int = 0
    states: Dict[Hashable, Any] = field(default_factory=dict)
    #: heads stored per appended kv head (> 1 after a compaction to per-query-head lists)
    head_repeat: int = 1

    @property
    def capacity(self) -> int:
        return int(self.k_buffer.shape[2])


class KVCache:
    """Keys and values of a decode, per layer index, growing by :meth:`append`.

    Parameters
    ----------
    initial_capacity : int, default 256
        Rows allocated per kv head at a layer's first append (more when that append is longer);
        the capacity then doubles whenever an append exceeds it.
    """

    def __init__(self, *, initial_capacity: int = 256):
        self.initial_capacity = check_int(initial_capacity, "initial_capacity", lo=1)
        self._layers: Dict[int, LayerKV] = {}
        # selections stored by "select" layers of a layer plan for the "reuse" layers above them:
        # key -> (layer, kv_len, selection)
        self._selections: Dict[Hashable, Tuple[int, int, Any]] = {}

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> List[int]:
        """Indices of the layers holding keys, ascending."""
        return sorted(self._layers)

    def __contains__(self, layer: int) -> bool:
        return layer in self._layers

    def layer(self, layer: int) -> LayerKV:
        """The :class:`LayerKV` of `layer` (ValueError when nothing was appended to it)."""
        layer = check_int(layer, "layer")
        if layer not in self._layers:
            raise ValueError(f"layer {layer} holds no keys yet; layers with keys: {self.layers}")
        return self._layers[layer]

    def length(self, layer: int = 0) -> int:
        """Tokens held by `layer` (0 for a layer never appended to)."""
        layer = check_int(layer, "layer")
        return self._layers[layer].length if layer in self._layers else 0

    def capacity(self, layer: int = 0) -> int:
        """Rows allocated per kv head in `layer`'s buffers."""
        return self.layer(layer).capacity

    def keys(self, layer: int = 0) -> np.ndarray:
        """The filled keys (B, Hkv, length, D): a read-only view of the buffer (no copy)."""
        lk = self.layer(layer)
        view = lk.k_buffer[:, :, :lk.length]
        view.flags.writeable = False
        return view

    def values(self, layer: int = 0) -> np.ndarray:
        """The filled values (B, Hkv, length, Dv): a read-only view of the buffer (no copy)."""
        lk = self.layer(layer)
        view = lk.v_buffer[:, :, :lk.length]
        view.flags.writeable = False
        return view

    def buffers(self, layer: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
        """(k_buffer, v_buffer, length): the whole C-contiguous float32 buffers, as the kernels take
        them with ``kv_len=length``. Do not write into them."""
        lk = self.layer(layer)
        return lk.k_buffer, lk.v_buffer, lk.length

    def clear(self) -> None:
        """Drop every layer (buffers, method state and stored selections)."""
        self._layers.clear()
        self._selections.clear()

    def drop(self, layer: int) -> None:
        """Drop `layer` (its buffers and method state); the next append starts it afresh."""
        self._layers.pop(check_int(layer, "layer"), None)

    # ------------------------------------------------------------------ selections shared by layers
    def store_selection(self, key: Hashable, layer: int, selection: Any) -> None:
        """Keep `selection` (made on `layer` at its current length) for the layers that reuse it."""
        self._selections[key] = (check_int(layer, "layer"), self.length(layer), selection)

    def stored_selection(self, key: Hashable, layer: int) -> Any:
        """The selection stored under `key` by a lower layer at this decode step (the same cache
        length as `layer`); ValueError when there is none."""
        layer = check_int(layer, "layer")
        item = self._selections.get(key)
        n = self.length(layer)
        if item is None or item[0] >= layer or item[1] != n:
            found = "none" if item is None else f"one from layer {item[0]} at length {item[1]}"
            raise ValueError(f"layer {layer} reuses a selection, but no lower 'select' layer stored one at this step "
                             f"(cache length {n}; found {found}): run the layers of a step in order, the select "
                             "layer first")
        return item[2]

    # ------------------------------------------------------------------ append
    def append(self, layer: int, k, v) -> None:
        """Append keys k (B, Hkv, n, D) and values v (B, Hkv, n, Dv) to `layer` (n >= 0).

        Any real float dtype and strides (numpy or torch CPU); stored as float32. The first
        append of a layer fixes B, Hkv, D and Dv; later appends must match them. Registered
        method state is updated with the new rows.
        """
        layer = check_int(layer, "layer")
        k = _as_float_input(k, "k")
        v = _as_float_input(v, "v")
        if k.ndim != 4:
            raise ValueError(f"k must have shape (B, Hkv, n, D), got {k.shape}")
        if v.ndim != 4:
            raise ValueError(f"v must have shape (B, Hkv, n, Dv), got {v.shape}")
        B, H, n, D = k.shape
        if v.shape[:3] != (B, H, n):
            raise ValueError(f"v must have shape (B, Hkv, n, Dv) = ({B}, {H}, {n}, Dv) like k, got {v.shape}")
        if B < 1 or H < 1 or D < 1:
            raise ValueError(f"k must have B >= 1, Hkv >= 1 and D >= 1, got shape {k.shape}")
        lk = self._layers.get(layer)
        if lk is None:
            cap = max(self.initial_capacity, n)
            lk = LayerKV(np.empty((B, H, cap, D), np.float32), np.empty((B, H, cap, v.shape[3]), np.float32))
            self._layers[layer] = lk
        else:
            kb, vb = lk.k_buffer, lk.v_buffer
            if lk.head_repeat > 1 and H * lk.head_repeat == kb.shape[1]:  # kv heads of a compacted layer
                k, v = np.repeat(k, lk.head_repeat, axis=1), np.repeat(v, lk.head_repeat, axis=1)
                H = kb.shape[1]
            if (B, H, D) != (kb.shape[0], kb.shape[1], kb.shape[3]):
                raise ValueError(f"k must have shape (B, Hkv, n, D) = ({kb.shape[0]}, "
                                 f"{kb.shape[1] // lk.head_repeat}, n, {kb.shape[3]}) "
                                 f"as earlier appends to layer {layer}, got {k.shape}")
            if v.shape[3] != vb.shape[3]:
                raise ValueError(f"v must have Dv = {vb.shape[3]} as earlier appends to layer {layer}, got shape {v.shape}")
        start, stop = lk.length, lk.length + n
        if stop > lk.capacity:
            self._grow(lk, max(stop, 2 * lk.capacity))
        lk.k_buffer[:, :, start:stop] = k
        lk.v_buffer[:, :, start:stop] = v
        lk.length = stop
        for st in lk.states.values():
            self._update_state(st, lk, start, stop)

    @staticmethod
    def _grow(lk: LayerKV, capacity: int) -> None:
        n = lk.length
        for name in ("k_buffer", "v_buffer"):
            old = getattr(lk, name)
            new = np.empty(old.shape[:2] + (capacity,) + old.shape[3:], np.float32)
            new[:, :, :n] = old[:, :, :n]
            setattr(lk, name, new)
        lk.reallocations += 1

    # ------------------------------------------------------------------ eviction
    def compact(self, layer: int, keep) -> None:
        """Keep, per head, only the listed positions of `layer` (one-time KV eviction).

        Parameters
        ----------
        layer : int
        keep : array_like of int, shape (B, H, K)
            Positions in [0, length) kept by each head, in the order they are stored (attention
            does not depend on it). H is the layer's head count or a multiple of it: lists per
            query head (GQA, H = Hq) store each kv head once per query head, and later appends of
            Hkv heads are repeated to H.

        The kept rows are gathered into new buffers of K + ``initial_capacity`` rows (O(K) memory;
        the old buffers are released). Method state registered on the layer and selections stored
        by it refer to old positions, so they are dropped.
        """
        lk = self.layer(layer)
        keep = np.asarray(keep)
        if not np.issubdtype(keep.dtype, np.integer):
            raise TypeError(f"keep must be an integer array, got dtype {keep.dtype}")
        B, Hs = lk.k_buffer.shape[:2]
        if keep.ndim != 3 or keep.shape[0] != B or keep.shape[1] == 0 or keep.shape[1] % Hs != 0:
            raise ValueError(f"keep must have shape (B={B}, H (a multiple of the layer's {Hs} heads), K), "
                             f"got {keep.shape}")
        if keep.size and (int(keep.min()) < 0 or int(keep.max()) >= lk.length):
            raise ValueError(f"keep must lie in [0, length={lk.length}), got values in "
                             f"[{int(keep.min())}, {int(keep.max())}]")
        H, K = keep.shape[1], keep.shape[2]
        rep = H // Hs
        src = np.arange(H) // rep  # head h reads stored head h // rep (grouped GQA)
        cap = K + self.initial_capacity
        new = {}
        for name in ("k_buffer", "v_buffer"):
            old = getattr(lk, name)
            buf = np.empty((B, H, cap, old.shape[3]), np.float32)
            for b in range(B):
                for h in range(H):
                    buf[b, h, :K] = old[b, src[h]].take(keep[b, h], axis=0)
            new[name] = buf
        lk.k_buffer, lk.v_buffer = new["k_buffer"], new["v_buffer"]
        lk.length, lk.head_repeat = K, lk.head_repeat * rep
        lk.states.clear()
        layer = check_int(layer, "layer")
        self._selections = {key: item for key, item in self._selections.items() if item[0] != layer}

    # ------------------------------------------------------------------ method state
    @staticmethod
    def _update_state(st: Any, lk: LayerKV, start: int, stop: int) -> None:
        """``st.update(k_buffer, start, stop)``; a state with ``reads_values = True`` also gets
        the value buffer (``update(k_buffer, start, stop, v_buffer)``)."""
        if getattr(st, "reads_values", False):
            st.update(lk.k_buffer, start, stop, lk.v_buffer)
        else:
            st.update(lk.k_buffer, start, stop)

    def state(self, layer: int, key: Hashable, factory: Callable[[], Any]) -> Any:
        """The state registered under `key` on `layer`, created by ``factory()`` on first use and
        brought up to date with the keys already held (``update(k_buffer, 0, length)``, plus the
        value buffer for a state with ``reads_values = True``); from then on every append updates it."""
        lk = self.layer(layer)
        st = lk.states.get(key)
        if st is None:
            st = factory()
            if lk.length:
                self._update_state(st, lk, 0, lk.length)
            lk.states[key] = st
        return st

    def __repr__(self) -> str:
        parts = ", ".join(f"{i}: {lk.length}/{lk.capacity}" for i, lk in sorted(self._layers.items()))
        return f"KVCache(layers={{{parts}}})"


__all__ = ["KVCache", "LayerKV"]
