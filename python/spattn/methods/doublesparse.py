"""Double Sparsity: decode-time token selection by a few outlier channels of q and k.

Yang et al., "Post-Training Sparse Attention with Double Sparsity", 2024; the ranking is
``_core.estimate_doublesparse`` (cpp/src/estimators/doublesparse.cpp) with the parameters of
``_core.DoubleSparseParams``; the key labels live on the :class:`spattn.KVCache`
(:class:`DoubleSparseLabels`).
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

from .. import _core
from .._validation import as_float_array, check_int
from ..cache import KVCache
from ..masks import TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register


def pseudo_quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """The official ``pseudo_quantize`` in float32: per vector (last axis) asymmetric min/max
    quantization to `bits` bits and back (a zero range counts as 1)."""
    max_quant = np.float32(2 ** bits - 1)
    lo = x.min(axis=-1, keepdims=True)
    rng = x.max(axis=-1, keepdims=True) - lo
    rng[rng == 0] = 1
    scale = max_quant / rng
    q = np.clip(np.round((x - lo) * scale), 0, max_quant)
    return (q / scale + lo).astype(np.float32)


def calibrate_channels(blocks: Sequence, kind: str = "q") -> np.ndarray:
    """A channel table for one layer, as the official offline calibration
    (config/offline_calibration.py ``get_q_hook`` / ``get_k_hook`` / ``get_qk_hook`` and the
    final descending sort) computes it from captured activations of calibration blocks (the
    official run: 512-token blocks of pile-val).

    Parameters
    ----------
    blocks : sequence
        ``kind="q"``: q blocks (B, Hq, N, D) and ``kind="k"``: k blocks (B, Hkv, N, D), both
        **before** RoPE (the official hooks read the q_proj / k_proj outputs); ``kind="qk"``:
        (q, k) pairs after RoPE.
    kind : {"q", "k", "qk"}
        "q" (the official runtime default, ``--channel q``): sum over blocks of mean_t |q_t[d]|;
        "k": the same on k; "qk": |q_t[d] k_t[d]| (k repeated per GQA group) averaged as the
        official hook does, ``(q * k).reshape(-1, Hq, D).mean(0)`` on the (B, Hq, N, D) product
        without moving the head axis back: row j averages the tokens n with (b Hq N + h N + n) %
        Hq == j over **every** head (a per-token-position, not per-head, statistic; for N a
        multiple of Hq, the tokens n = j mod Hq), and of the **last block only** (the official
        accumulation tests a key it never writes, so each block overwrites the previous one).

    Returns
    -------
    int array (H, D): per head, the channels by descending statistic (ties to the lower channel),
    the ``channels`` parameter of :class:`DoubleSparse`.
    """
    if kind not in ("q", "k", "qk"):
        raise ValueError(f"kind must be 'q', 'k' or 'qk', got {kind!r}")
    stat = None
    for i, blk in enumerate(blocks):
        if kind == "qk":
            if not (isinstance(blk, (tuple, list)) and len(blk) == 2):
                raise TypeError(f"blocks[{i}] must be a (q, k) pair for kind='qk'")
            q = as_float_array(blk[0], f"blocks[{i}][0]").astype(np.float64)
            k = as_float_array(blk[1], f"blocks[{i}][1]").astype(np.float64)
            if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] \
                    or q.shape[1] % k.shape[1]:
                raise ValueError(f"blocks[{i}] must hold q (B, Hq, N, D) and k (B, Hkv, N, D), got {q.shape}, {k.shape}")
            prod = np.abs(q * np.repeat(k, q.shape[1] // k.shape[1], axis=1))  # (B, Hq, N, D), C order
            stat = prod.reshape(-1, q.shape[1], q.shape[3]).mean(axis=0)  # the official reshape; the last block wins
            continue
        x = as_float_array(blk, f"blocks[{i}]").astype(np.float64)
        if x.ndim != 4:
            raise ValueError(f"blocks[{i}] must have shape (B, H, N, D), got {x.shape}")
        m = np.abs(x).mean(axis=(0, 2))
        if stat is not None and stat.shape != m.shape:
            raise ValueError(f"blocks[{i}] has {m.shape[0]} heads of {m.shape[1]} channels, earlier blocks {stat.shape}")
        stat = m if stat is None else stat + m
    if stat is None:
        raise ValueError("blocks must hold at least one calibration block")
    return np.argsort(-stat, axis=-1, kind="stable").astype(np.int64)


def save_channels(path: str, channels, kind: str = "q") -> None:
    """Write channel tables to an ``.npz`` artifact (spattn.training.save_npz): one (H, D) int
    table, or a dict {layer: table}; `kind` (the calibration statistic) is recorded."""
    from ..training import save_npz

    if isinstance(channels, dict):
        arrays = {f"layer_{check_int(i, 'channels layer')}": np.asarray(t, np.int64) for i, t in channels.items()}
        save_npz(path, arrays, {"method": "doublesparse", "kind": kind, "layers": sorted(int(i) for i in channels)})
    else:
        save_npz(path, {"channels": np.asarray(channels, np.int64)}, {"method": "doublesparse", "kind": kind,
                                                                       "layers": None})


def load_channels(path: str):
    """The channel tables of :func:`save_channels`: one array, or a dict {layer: array}
    (``DoubleSparse(channels=load_channels(path))``)."""
    from ..training import load_npz

    arrays, config = load_npz(path)
    if not isinstance(config, dict) or config.get("method") != "doublesparse":
        raise ValueError(f"{path} is not a Double Sparsity channel artifact (config {config!r})")
    if config.get("layers") is None:
        return arrays["channels"]
    return {int(i): arrays[f"layer_{int(i)}"] for i in config["layers"]}


class DoubleSparseLabels:
    """Double Sparsity's key labels of one cache layer, (B, H, capacity, r) float32, one per token:

    * with a channel table ``channels`` (H, >= r) (H = Hq, official, or Hkv): the key's channels
      ``channels[l, :r]`` (kv head l // (H / Hkv)), pseudo-quantized to ``label_bits`` when < 16;
    * without: the means of ``group_factor`` consecutive channels of each kv head (H = Hkv).

    Registered on a :class:`spattn.KVCache`, it labels the appended rows only; its buffer doubles
    like the cache's."""

    def __init__(self, channels: Optional[np.ndarray], group_factor: int, label_bits: int):
        self.channels = channels
        self.group_factor = group_factor
        self.label_bits = label_bits
        self.labels: Optional[np.ndarray] = None
        self.kv_len = 0

    def label(self, k: np.ndarray) -> np.ndarray:
        """Labels (B, H, n, r) of keys k (B, Hkv, n, D)."""
        B, Hkv, n, D = k.shape
        g = self.group_factor
        if self.channels is None:
            return (k.reshape(B, Hkv, n, D // g, g).sum(axis=-1, dtype=np.float32) / np.float32(g)).astype(np.float32)
        H, r = self.channels.shape[0], D // g
        src = k[:, np.arange(H) // (H // Hkv)]
        lab = np.take_along_axis(src, self.channels[None, :, None, :r], axis=3)
        return pseudo_quantize(lab, self.label_bits) if self.label_bits < 16 else np.ascontiguousarray(lab)

    def update(self, k_buffer: np.ndarray, start: int, stop: int) -> None:
        """Rows [start, stop) of `k_buffer` (B, Hkv, capacity, D) were written."""
        new = self.label(k_buffer[:, :, start:stop])
        if self.labels is None or self.labels.shape[2] < stop:
            cap = max(stop, 16 if self.labels is None else 2 * self.labels.shape[2])
            grown = np.empty(new.shape[:2] + (cap,) + new.shape[3:], np.float32)
            if self.labels is not None:
                grown[:, :, :start] = self.labels[:, :, :start]
            self.labels = grown
        self.labels[:, :, start:stop] = new
        self.kv_len = stop


@register
class DoubleSparse(CacheDecode, Method):
    """Double Sparsity's decode-time token selection, as the official accuracy path
    (andy-yang-1/DoubleSparse HEAD b0575e6, LongBench/modify_llama.py
    ``LlamaAttention_heavy_hitter.forward``).

    Per query head (after ``repeat_kv``: no sharing inside a GQA group) a label of
    ``r = D // group_factor`` channels is taken from q and from every cached key: with a
    calibrated channel table, the first r channels of ``channels[h]`` (the official
    ``sorted_channel``, one descending ranking of the D channels per head, as
    ``config/<model>.json`` stores it), pseudo-quantized per vector to ``label_bits`` (query and
    key labels alike); without one (``channels=None``, the official fallback when no table is
    loaded) the means of ``group_factor`` consecutive channels, unquantized. The top
    ``heavy_const`` tokens by ``q_label . k_label`` are kept (every token when kv_len <=
    heavy_const; nothing forced: no sink, no recent window) and exact attention runs on them
    with the token-sparse kernel.

    Layers ``0 .. dense_layers - 1`` run dense (official: 2); prefill (Nq > 1) is dense (the
    LongBench path). Decode over a cache: append the step's k / v, then ``select(q, cache,
    layer=i)`` / ``m(q, cache, layer=i)``; on plain arrays the labels are built from k for that
    call.

    Parameters
    ----------
    heavy_const : int, default 256
        Token budget (LongBench ``pred.py``; ``perplexity_eval.py`` uses 128).
    group_factor : int, default 2
        r = D // group_factor label channels; must divide D (the official code asserts it).
    label_bits : int, default 4
        Label quantization bits, 16 for none. 4 is what the official LongBench path runs: its
        ``--q_bits`` (default 2) is dropped when ``convert_kvcache_llama_heavy_recent`` recurses.
    dense_layers : int, default 2
    channels : None, int array (H, >= r) or dict {layer: array}
        Channel ranking per head, H = Hq (official) or Hkv (one table per kv head, an extension);
        a dict gives one table per layer (calls over a cache). ``None``: grouped-mean labels.
    statistical_topk : bool, default False
        Select by the statistical top-k threshold (:func:`spattn.statistical_topk`; Spark
        Transformer) instead of the exact top-k: a variable count per head. Not official.
    layer_plan : spattn.LayerPlan or dict, optional
        The role of each layer (default: the first ``dense_layers`` dense, the others sparse);
        e.g. ``LayerPlan.tidal()`` selects at two layers and reuses their positions elsewhere.

    Notes
    -----
    Deviations: float32 labels and quantization (official: fp16), scores are float32 SIMD products
    without the 1/sqrt(r) factor (order unchanged); ties go to the lower token index (torch.sort
    leaves them unspecified); a NaN score ranks first (as torch.sort descending). Channel tables
    come from :func:`calibrate_channels` on activations the caller captures (spattn ships no
    calibration data set).
    """

    name = "doublesparse"
    aliases = ("double_sparsity",)
    paper = "Yang et al., Double Sparsity, 2024"
    pattern = "decode: top tokens by an r-channel (outlier channels or grouped means) label score per query head"
    params_struct = _core.DoubleSparseParams
    extra_defaults = {"channels": None, "layer_plan": None}
    capabilities = Capabilities(mask_format="token")

    def _check_params(self) -> None:
        super()._check_params()
        ch = self.params["channels"]
        tables = ch.values() if isinstance(ch, dict) else [] if ch is None else [ch]
        if isinstance(ch, dict):
            for key in ch:
                check_int(key, "channels layer")
        for t in tables:
            arr = np.asarray(t)
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"doublesparse: channels must be an integer array (H, D), got dtype {arr.dtype}")
            if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
                raise ValueError(f"doublesparse: channels must have shape (H, D), got {arr.shape}")

    # ------------------------------------------------------------------ labels
    def _table(self, layer: Optional[int], Hq: int, Hkv: int, D: int) -> Optional[np.ndarray]:
        g = self.params["group_factor"]
        if D % g:
            raise ValueError(f"doublesparse: group_factor ({g}) must divide the head dim D={D}")
        ch = self.params["channels"]
        if isinstance(ch, dict):
            if layer is None:
                raise ValueError("doublesparse: channels is a per-layer dict; call over a spattn.KVCache with layer=")
            if layer not in ch:
                raise ValueError(f"doublesparse: channels has no table for layer {layer}; layers: {sorted(ch)}")
            ch = ch[layer]
        if ch is None:
            return None
        ch = np.asarray(ch)
        r = D // g
        if ch.shape[0] not in (Hq, Hkv) or ch.shape[1] < r:
            raise ValueError(f"doublesparse: channels must have shape (Hq={Hq} or Hkv={Hkv}, >= r={r}), got {ch.shape}")
        if ch.min() < 0 or ch.max() >= D:
            raise ValueError(f"doublesparse: channels must lie in [0, D={D}), got values in [{ch.min()}, {ch.max()}]")
        return np.ascontiguousarray(ch[:, :r], dtype=np.intp)

    def _q_label(self, q: np.ndarray, table: Optional[np.ndarray]) -> np.ndarray:
        B, Hq, _, D = q.shape
        g = self.params["group_factor"]
        if table is None:
            return (q.reshape(B, Hq, 1, D // g, g).sum(axis=-1, dtype=np.float32) / np.float32(g)).astype(np.float32)
        rows = table[np.arange(Hq) // (Hq // table.shape[0])]  # (Hq, r)
        lab = np.take_along_axis(q, rows[None, :, None, :], axis=3)
        bits = self.params["label_bits"]
        return pseudo_quantize(lab, bits) if bits < 16 else np.ascontiguousarray(lab)

    def _state(self, table: Optional[np.ndarray]) -> tuple:
        digest = None if table is None else hashlib.sha1(table.tobytes() + bytes(str(table.shape), "ascii")).hexdigest()
        return ("doublesparse", self.params["group_factor"], self.params["label_bits"], digest)

    def _select(self, q: np.ndarray, labels: DoubleSparseLabels, table, kv_len: int) -> TokenIndices:
        lab = labels.labels
        if lab is None:
            lab = np.zeros((q.shape[0], 1, 0, q.shape[3] // self.params["group_factor"]), np.float32)
        idx = _core.estimate_doublesparse(self._q_label(q, table), lab, kv_len, self.cparams)
        self.last_info = {"kv_len": kv_len, "tokens": int(idx.shape[-1])}
        return TokenIndices(idx, 1, kv_len, assume_sorted=True)

    # ------------------------------------------------------------------ plain arrays
    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> TokenIndices:
        B, Hq, Nq, D = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        table = self._table(None, Hq, k.shape[1], D)
        labels = DoubleSparseLabels(table, self.params["group_factor"], self.params["label_bits"])
        labels.update(k, 0, Nk)
        return self._select(q, labels, table, Nk)

    # ------------------------------------------------------------------ decode over a KVCache
    def labels(self, cache: KVCache, layer: int, Hq: int) -> tuple:
        """(DoubleSparseLabels, channel table) of this method on `layer` of `cache` for Hq query
        heads (registered on first use, keyed by group_factor, label_bits and the table)."""
        kb = cache.buffers(layer)[0]
        table = self._table(layer, Hq, kb.shape[1], kb.shape[3])
        g, bits = self.params["group_factor"], self.params["label_bits"]
        labels = cache.state(layer, self._state(table), lambda: DoubleSparseLabels(table, g, bits))
        return labels, table

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int) -> TokenIndices:
        labels, table = self.labels(cache, layer, q.shape[1])
        return self._select(q, labels, table, cache.length(layer))


__all__ = ["DoubleSparse", "DoubleSparseLabels", "calibrate_channels", "pseudo_quantize", "save_channels",
           "load_channels"]
