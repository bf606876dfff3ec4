"""NSA / FSA: native sparse attention (compressed, selected and sliding-window branches, gated).

Yuan et al., "Native Sparse Attention: Hardware-Aligned and Natively Trainable Sparse Attention",
arXiv 2502.11089; Flash Sparse Attention (Yan et al., arXiv 2508.18224) computes the same output
with another kernel loop order. The compressed branch and the block selection are
``_core.nsa_compressed_attention`` (cpp/src/estimators/nsa.cpp, on the compressed-score passes
InfLLM-V2 uses) with the parameters of ``_core.NSAParams``; the selected blocks run on the
row-block sparse kernel (:func:`spattn.row_block_sparse_attention`), the window on
:func:`spattn.window_attention`; compression and gates are numpy projections here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _core, training
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..cache import KVCache
from ..kernels import attention, row_block_sparse_attention, token_sparse_attention, window_attention
from ..masks import RowBlockIndices, TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, register
from .infllmv2 import block_positions

WEIGHT_KEYS = ("compress_key", "compress_value", "intra_block_pe", "gate_weight", "gate_bias")


def load_weights(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """The NSA weights dict stored in an ``.npz`` file (``np.savez(path, **weights)``), keys as
    :class:`NSA` documents; unknown keys raise ValueError naming them."""
    with np.load(path, allow_pickle=False) as f:
        weights = {key: f[key] for key in f.files}
    return _check_weight_dict(weights)


def _check_weight_dict(weights: Any) -> Dict[str, np.ndarray]:
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(weights)
    if not isinstance(weights, dict):
        raise TypeError(f"nsa: weights must be a dict of arrays or a path to an .npz file, got {type(weights).__name__}")
    unknown = sorted(set(weights) - set(WEIGHT_KEYS))
    if unknown:
        raise ValueError(f"nsa: unknown weights key(s) {unknown}; known: {list(WEIGHT_KEYS)}")
    out = {}
    for key, val in weights.items():
        if val is None:
            continue
        arr = np.asarray(val.detach().cpu().numpy() if hasattr(val, "detach") else val)
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ValueError(f"nsa: weights[{key!r}] must be a finite float array, got dtype {arr.dtype}")
        out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def _need_shape(key: str, arr: np.ndarray, shape: Tuple[int, ...], text: str) -> None:
    if arr.shape != shape:
        raise ValueError(f"nsa: weights[{key!r}] must have shape {text} = {shape}, got {arr.shape}")


def rope_rotate_half(x: np.ndarray, positions: np.ndarray, theta: float = 10000.0) -> np.ndarray:
    """Plain RoPE (the rotate-half layout of flash_attn ``apply_rotary_emb`` / HF Llama, no
    scaling) of x (..., C, D) at the given positions (C,): frequencies theta^(-2i/D)."""
    D = x.shape[-1]
    half = D // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / D)
    ang = np.asarray(positions, np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :half].astype(np.float64), x[..., half:2 * half].astype(np.float64)
    out = x.astype(np.float64).copy()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:2 * half] = x2 * cos + x1 * sin
    return out.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _rope_cos_sin(C: int, d: int, D: int, theta: float) -> Tuple[np.ndarray, np.ndarray]:
    half = D // 2
    ang = (np.arange(C, dtype=np.float64) * d)[:, None] * theta ** (-np.arange(half, dtype=np.float64) * 2.0 / D)
    return np.cos(ang), np.sin(ang)


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, inverse: bool = False) -> np.ndarray:
    """rope_rotate_half in float64 with precomputed angles; inverse: the transposed rotation."""
    half = cos.shape[1]
    s = -sin if inverse else sin
    out = x.copy()
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out[..., :half] = x1 * cos - x2 * s
    out[..., half:2 * half] = x2 * cos + x1 * s
    return out


def _windows(x: np.ndarray, l: int, d: int, C: int) -> np.ndarray:
    """(B, H, N, D) -> the token-major flattened windows (B, H, C, l D) in float64."""
    B, H, _, D = x.shape
    if C == 0:
        return np.zeros((B, H, 0, l * D))
    win = np.lib.stride_tricks.sliding_window_view(x, l, axis=2)[:, :, ::d][:, :, :C]
    return np.swapaxes(win, -1, -2).reshape(B, H, C, l * D).astype(np.float64)


def _mean_pool_weight(H: int, l: int, D: int) -> np.ndarray:
    """The linear compressor that is the mean over the l tokens: [I/l; ...; I/l] per head."""
    return np.broadcast_to(np.tile(np.eye(D) / l, (l, 1)), (H, l * D, D)).copy()


def _compressed_forward(q, kc, vc, l, d, Nk, scale):
    """Float64 compressed attention (the training path): out (B, Hq, Nq, Dv) and probabilities
    (B, Hq, Nq, C), rows with no visible compressed key 0."""
    B, Hq, Nq, _ = q.shape
    G, C = Hq // kc.shape[1], kc.shape[2]
    kg, vg = np.repeat(kc, G, axis=1), np.repeat(vc, G, axis=1)
    t = np.arange(Nq) + Nk - Nq
    vis = (np.arange(C)[None, :] * d + l - 1) <= t[:, None]
    s = np.where(vis, np.einsum("bhid,bhjd->bhij", q, kg) * scale, -np.inf)
    mx = s.max(axis=-1, keepdims=True, initial=-np.inf)
    p = np.exp(s - np.where(np.isfinite(mx), mx, 0.0))
    den = p.sum(axis=-1, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    return p @ vg, p


def _compressed_backward(q, vc, p, dout, scale):
    """Gradients of the compressed keys and values (B, Hkv, C, D / Dv) from d out."""
    B, Hq, Nq, _ = q.shape
    Hkv, C = vc.shape[1], vc.shape[2]
    G = Hq // Hkv
    vg = np.repeat(vc, G, axis=1)
    dvc = np.einsum("bhij,bhie->bhje", p, dout).reshape(B, Hkv, G, C, -1).sum(axis=2)
    dp = np.einsum("bhie,bhje->bhij", dout, vg)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dkc = (np.einsum("bhij,bhid->bhjd", ds, q) * scale).reshape(B, Hkv, G, C, -1).sum(axis=2)
    return dkc, dvc


@dataclass
class NSATrainResult:
    """What :meth:`NSA.train_weights` returns: the trained weights dict and the loss of every step."""

    weights: Dict[str, np.ndarray]
    losses: List[float]


class NSACompressedCache:
    """NSA's compressed keys (``part="k"``) or values (``part="v"``) of one cache layer, as the
    model's decode buffers: the tokens of every complete window, compressed once when the append
    that completes it arrives (:meth:`NSA.compress` on that window's rows, RoPE at its own
    position); buffers double like the cache's. Registered on a :class:`spattn.KVCache` by
    :meth:`NSA.compressed_cache` (the keys on the pre-RoPE key mirror when there is one)."""

    def __init__(self, method: "NSA", part: str):
        self.method = method
        self.part = part
        self.reads_values = part == "v"
        self.buf: Optional[np.ndarray] = None
        self.count = 0

    def update(self, k_buffer: np.ndarray, start: int, stop: int, v_buffer: Optional[np.ndarray] = None) -> None:
        l, d = self.method.params["kernel_size"], self.method.params["kernel_stride"]
        if start == 0:
            self.count = 0
        old, new = self.count, (stop - l) // d + 1 if stop >= l else 0
        if new > old:
            rows = slice(d * old, d * (new - 1) + l)
            if self.part == "k":
                comp = self.method.compress(k_buffer[:, :, rows], None, first=old)[0]
            else:
                comp = self.method.compress(k_buffer[:, :, rows], v_buffer[:, :, rows], first=old)[1]
            if self.buf is None or self.buf.shape[2] < new:
                grown = np.zeros(comp.shape[:2] + (max(new, 16 if self.buf is None else 2 * self.buf.shape[2]),
                                                   comp.shape[3]), np.float32)
                if self.buf is not None:
                    grown[:, :, :old] = self.buf[:, :, :old]
                self.buf = grown
            self.buf[:, :, old:new] = comp[:, :, :new - old]
        self.count = new

    def buffer(self, like: np.ndarray) -> np.ndarray:
        """The buffer (a zero one-row one shaped after `like` before the first window)."""
        if self.buf is None:
            return np.zeros(like.shape[:2] + (1, like.shape[3]), np.float32)
        return self.buf


@register
class NSA(CacheDecode, Method):
    """NSA's three branches and their gated sum, as XunhaoLai/native-sparse-attention-triton
    (HEAD 9bea856; ``ops/triton/compressed_attention.py``, ``ops/torch/compressed_attention_decode.py``,
    ``module/native_sparse_attention.py``) and Relaxed-System-Lab/Flash-Sparse-Attention
    (HEAD 1da34f3; ``fsa/module/fsa.py``, ``nsa_ref/ops``) compute them.

    For query t (position t + Nk - Nq; decode: Nk - 1), kv head h, l = ``kernel_size``,
    d = ``kernel_stride``, l' = ``block_size``:

    1. compression (``linear_compress``): C = floor((Nk - l) / d) + 1 tokens (0 if Nk < l),
       ``kc_j = vec(K[jd : jd + l] + PE[h]) @ compress_key[h]``, ``vc_j = vec(V[jd : jd + l]) @
       compress_value[h]`` (vec: token-major flatten; PE as the bias ``vec(PE) @ W``); the keys
       compressed are ``k_gate`` (pre-RoPE keys) when given, else ``k``; then ``rope`` is applied
       to kc_j at position j d (the official modules rotate the compressed keys with stride d);
    2. compressed branch: softmax(q kc^T scale) over the visible j (t >= j d + l - 1) with vc;
       rows with none give 0;
    3. selection: those probabilities summed over the group's query heads (``first_head_only``:
       FSA nsa_ref's score_kernel, head 0 of each group), mapped to blocks with the overlap
       weights (``transform_score``; [1, 2, 2, 2, 1] at the defaults), blocks b < init_blocks
       and qb - local_blocks < b <= qb (qb = t // l'; strict lower end, unlike InfLLM-V2's <=)
       forced, top ``min(topk, ceil(Nk / l'))`` (ties to the lower index), sorted, ids > qb -> -1,
       shared by the group; one causal softmax over the selected blocks' keys;
    4. sliding window over keys [t - w, t] (``window_inclusive``, flash_attn
       ``window_size=(w, -1)`` as both official modules: w + 1 keys) or [t - w + 1, t] (fla naive);
    5. ``o = g_cmp o_cmp + g_slc o_slc + g_swa o_swa``, g = sigmoid(hidden @ gate_weight^T +
       gate_bias): ``gate_weight`` (3, hidden) is FSA's per-token gate, (3 Hq, hidden) the
       per-head one of XunhaoLai/fla (row 3 h + i, i = cmp, slc, swa); ``hidden`` (B, Nq,
       hidden) is passed to the call. Gate values can also be passed directly (``gates=``,
       (B, Nq, 3) or (B, Hq, Nq, 3), after the sigmoid); otherwise the ``gates`` parameter.

    Parameters
    ----------
    kernel_size, kernel_stride, block_size : int, default 32, 16, 64
    topk : int, default 16
        Selected blocks per row, forced ones included.
    init_blocks, local_blocks : int, default 1, 2
    window_size : int, default 512
    window_inclusive : bool, default True
    first_head_only : bool, default False
    weights : dict or path to an .npz, optional
        ``compress_key`` (Hkv, l D, D), ``compress_value`` (Hkv, l Dv, Dv), ``intra_block_pe``
        (Hkv, l, D), ``gate_weight`` (3 or 3 Hq, hidden), ``gate_bias`` (3 or 3 Hq,) -- the
        official parameter names; any may be left out. Without ``compress_key`` /
        ``compress_value`` the compressor is the mean over the l tokens (the linear compressor
        with weight [I/l; ...; I/l]); see :func:`load_weights`.
    rope : callable or float, optional
        RoPE of the compressed keys: ``rope(kc, positions)`` with kc (B, Hkv, C, D) and positions
        j d (C,), returning kc rotated; a float is the theta of :func:`rope_rotate_half`. None:
        none (q and k are taken as given, i.e. already rotated, and kc is not).
    gates : tuple of 3 floats, default (0.5, 0.5, 0.5)
        (g_cmp, g_slc, g_swa) when no gate weight (and no ``gates=`` argument) is given:
        sigmoid(0), a zero gate layer.

    Decode over a :class:`spattn.KVCache` (``m(q, cache, layer=i, hidden=..., gates=...)`` after
    appending the step's k / v): the compressed keys and values live on the cache
    (:class:`NSACompressedCache`, one compression per completed window, from the cached keys
    or, given ``gate_cache``, from the pre-RoPE keys as ``k_gate`` on arrays); the compressed
    branch and the selection read them; the selected blocks and the window (keys [t - w, t] or
    [t - w + 1, t]) are attended in place by the token-sparse kernel; equal to the array call's
    last row. ``select(q, cache, layer=i)``
    gives the selected blocks' positions; ``dense_layers`` / ``layer_plan`` as the other decode
    methods (a dense layer attends every key, no branches).

    ``estimate`` returns the selection (RowBlockIndices, H = Hkv); the call's output is the gated
    sum of the three branches (``capabilities.own_output``), so it reads keys outside that mask
    (the window and, through the compressed tokens, every earlier key). ``branches(...)`` returns
    the three branch outputs and the selection separately.

    Notes
    -----
    Deviations: float32 throughout (official: bf16 inputs, and the prefill path stores the
    scores in bf16 before transform_score), ties of equal block scores to the lower index
    (torch.topk on CUDA leaves them unspecified). The decode reference's transform_score adds
    scores for complete blocks only; the block it leaves out is always the forced current one,
    so the selection is the same as the prefill rule used here. Chunked calls (Nq < Nk) place the
    queries bottom-right (the official kernels take Nq == Nk). Without weights the compressor is
    mean pooling (the official modules initialise their weights at random). ``q_gate`` is
    accepted and not read (scores use the post-RoPE q as the official code).
    """

    name = "nsa"
    aliases = ("fsa", "native_sparse_attention", "flash_sparse_attention")
    paper = "Yuan et al., NSA, 2025; Yan et al., FSA, 2025"
    pattern = ("per token: compressed-key attention (learned block compression), top-n blocks by the group's "
               "compressed probabilities (overlap-weighted, init + local forced), sliding window; gated sum")
    params_struct = _core.NSAParams
    extra_defaults = {"weights": None, "rope": None, "gates": (0.5, 0.5, 0.5), "dense_layers": 0, "layer_plan": None}
    capabilities = Capabilities(noncausal=False, mask_format="row_block", own_output=True, gate_inputs=True)
    reads_outside_mask = True  # the window and the compressed tokens read keys outside the selected blocks

    def _check_params(self) -> None:
        super()._check_params()
        w = self.params.get("weights")
        if w is not None:
            self.params["weights"] = _check_weight_dict(w)
        rope = self.params.get("rope")
        if rope is not None and not callable(rope):
            if isinstance(rope, bool) or not isinstance(rope, (int, float)) or not np.isfinite(rope) or rope <= 0:
                raise TypeError(f"nsa: rope must be None, a callable rope(kc, positions) or a positive theta, got {rope!r}")
        g = self.params.get("gates")
        try:
            arr = np.asarray(g, np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.shape != (3,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"nsa: gates must be 3 finite floats (g_cmp, g_slc, g_swa), got {g!r}")
        self.params["gates"] = tuple(float(x) for x in arr)

    # ------------------------------------------------------------------ compression
    def compress(self, k: np.ndarray, v: Optional[np.ndarray] = None, k_compress: Optional[np.ndarray] = None,
                 first: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
        """Compressed keys (B, Hkv, cap, D) with RoPE applied, values (B, Hkv, cap, Dv) (v None:
        zeros with Dv = 1) and their count C (cap = max(C, 1); rows past C are zero). The keys
        compressed are `k_compress` (pre-RoPE keys) when given, else `k`. `first`: the index of
        the first compressed token when k starts at key first * kernel_stride (RoPE positions)."""
        l, d = self.params["kernel_size"], self.params["kernel_stride"]
        src = k if k_compress is None else k_compress
        B, Hkv, Nk, D = src.shape
        Dv = 1 if v is None else v.shape[3]
        C = (Nk - l) // d + 1 if Nk >= l else 0
        w = self.params["weights"] or {}
        kc = np.zeros((B, Hkv, max(C, 1), D), np.float32)
        vc = np.zeros((B, Hkv, max(C, 1), Dv), np.float32)
        pe = w.get("intra_block_pe")
        if pe is not None:
            _need_shape("intra_block_pe", pe, (Hkv, l, D), "(Hkv, kernel_size, D)")
        for name, x, out, dim, W, bias_pe in (("compress_key", src, kc, D, w.get("compress_key"), pe),
                                              ("compress_value", v, vc, Dv, w.get("compress_value"), None)):
            if x is None:
                continue
            if W is not None:
                _need_shape(name, W, (Hkv, l * dim, dim), f"(Hkv, kernel_size * {'D' if name == 'compress_key' else 'Dv'}, "
                            f"{'D' if name == 'compress_key' else 'Dv'})")
            if C == 0:
                continue
            win = np.lib.stride_tricks.sliding_window_view(x, l, axis=2)[:, :, ::d][:, :, :C]  # (B, Hkv, C, dim, l)
            if W is None:
                out[:, :, :C] = win.mean(axis=-1, dtype=np.float64)
                if bias_pe is not None:
                    out[:, :, :C] += bias_pe.mean(axis=1, dtype=np.float64)[None, :, None, :]
            else:
                flat = np.ascontiguousarray(np.swapaxes(win, -1, -2)).reshape(B, Hkv, C, l * dim)  # token-major
                res = np.matmul(flat, W[None])
                if bias_pe is not None:
                    res += np.einsum("hx,hxd->hd", bias_pe.reshape(Hkv, l * dim), W)[None, :, None, :]
                out[:, :, :C] = res
        if C > 0 and self.params["rope"] is not None:
            rope = self.params["rope"]
            pos = (first + np.arange(C, dtype=np.int64)) * d
            fn: Callable = rope if callable(rope) else (lambda x, p: rope_rotate_half(x, p, float(rope)))
            rotated = np.asarray(fn(kc[:, :, :C].copy(), pos), np.float32)
            if rotated.shape != (B, Hkv, C, D):
                raise ValueError(f"nsa: rope must return the shape of its input {(B, Hkv, C, D)}, got {rotated.shape}")
            kc[:, :, :C] = rotated
        return kc, vc, C

    def _compressed(self, q, k, v, scale, k_compress):
        """The selection (RowBlockIndices, H = Hkv), the compressed branch's out and lse (v None:
        selection only)."""
        kc, vc, C = self.compress(k, v, k_compress)
        blocks, out, lse = _core.nsa_compressed_attention(q, kc, vc, C, k.shape[2], scale, self.cparams)
        sel = RowBlockIndices(blocks, self.params["block_size"], k.shape[2], assume_sorted=True)
        self.last_info = {"blocks_per_row": int(blocks.shape[-1]), "compressed_tokens": C, "mask": sel}
        return sel, out, lse

    def _estimate(self, q, k, causal, scale, q_gate=None, k_gate=None) -> RowBlockIndices:
        kc = None if k_gate is None or k_gate is k else k_gate
        return self._compressed(q, k, None, scale, kc)[0]  # the selection reads no values

    # ------------------------------------------------------------------ the branches and their sum
    def branches(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, k_gate=None
                 ) -> Dict[str, Any]:
        """The three branch outputs (B, Hq, Nq, Dv) float32 ``cmp``, ``slc``, ``swa`` and the
        selection ``blocks`` (RowBlockIndices) of one call."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        kg = None
        if k_gate is not None:
            kg = as_float_array(k_gate, "k_gate")
            if kg.shape != k.shape:
                raise ValueError(f"k_gate must have the shape of its attention input {k.shape}, got {kg.shape}")
        sel, o_cmp, _ = self._compressed(q, k, v, scale, kg)
        o_slc = row_block_sparse_attention(q, k, v, sel, causal=True, scale=scale)
        w = self.params["window_size"]
        left = w if self.params["window_inclusive"] else w - 1
        if left >= 0:
            o_swa = window_attention(q, k, v, left=left, causal=True, scale=scale)
        else:
            o_swa = np.zeros(q.shape[:3] + (v.shape[3],), np.float32)
        return {"cmp": o_cmp, "slc": o_slc, "swa": o_swa, "blocks": sel}

    def gate_values(self, B: int, Hq: int, Nq: int, hidden=None, gates=None) -> np.ndarray:
        """Gates (B, Hq or 1, Nq, 3) float32: ``gates`` as given, else sigmoid of the gate layer
        on ``hidden``, else the ``gates`` parameter."""
        if gates is not None:
            g = as_float_array(gates, "gates")
            if g.shape == (B, Nq, 3):
                return g[:, None]
            if g.shape == (B, Hq, Nq, 3):
                return g
            raise ValueError(f"gates must have shape (B, Nq, 3) = {(B, Nq, 3)} or (B, Hq, Nq, 3) = {(B, Hq, Nq, 3)}, "
                             f"got {g.shape}")
        w = self.params["weights"] or {}
        W = w.get("gate_weight")
        if W is None:
            if w.get("gate_bias") is not None:
                raise ValueError("nsa: weights['gate_bias'] needs weights['gate_weight']")
            return np.broadcast_to(np.asarray(self.params["gates"], np.float32), (B, 1, Nq, 3))
        if W.ndim != 2 or W.shape[0] not in (3, 3 * Hq):
            raise ValueError(f"nsa: weights['gate_weight'] must have shape (3, hidden) or (3 * Hq, hidden) = "
                             f"({3 * Hq}, hidden), got {W.shape}")
        bias = w.get("gate_bias")
        if bias is not None:
            _need_shape("gate_bias", bias, (W.shape[0],), "(rows of gate_weight,)")
        if hidden is None:
            raise ValueError("nsa: weights['gate_weight'] needs the gate input hidden (B, Nq, hidden) in the call")
        x = as_float_array(hidden, "hidden")
        if x.shape != (B, Nq, W.shape[1]):
            raise ValueError(f"hidden must have shape (B, Nq, hidden) = {(B, Nq, W.shape[1])}, got {x.shape}")
        logits = x.astype(np.float64) @ W.T.astype(np.float64) + (0.0 if bias is None else bias)
        g = _sigmoid(logits)
        if W.shape[0] == 3:
            return g[:, None].astype(np.float32)
        return np.ascontiguousarray(g.reshape(B, Nq, Hq, 3).transpose(0, 2, 1, 3), dtype=np.float32)

    def __call__(self, q, k, v=None, *, layer: Optional[int] = None, causal: bool = False,
                 scale: Optional[float] = None, return_lse: bool = False, q_gate=None, k_gate=None, hidden=None,
                 gates=None, gate_cache=None):
        """The gated sum of the compressed, selected and window branches (see the class).
        ``k_gate``: the keys the compression reads (pre-RoPE; default k); ``hidden`` / ``gates``:
        the gate input or the gate values. ``m(q, cache, layer=i)``: one decode step over a
        :class:`spattn.KVCache` (see the class); ``gate_cache``: a cache of the pre-RoPE keys
        (values not read) whose keys the compression reads, as ``k_gate`` on arrays; ``q_gate``
        is not read (as on arrays)."""
        if isinstance(k, KVCache):
            if v is not None:
                raise TypeError("m(q, cache, layer=i) takes no v: the values are the cache's")
            if return_lse:
                raise ValueError(f"{self.name}: return_lse is not defined for a gated sum of three attention branches")
            if gate_cache is not None and not isinstance(gate_cache, KVCache):
                raise TypeError(f"gate_cache must be a spattn.KVCache, got {type(gate_cache).__name__}")
            return self._decode_call(q, k, layer, scale, hidden, gates, gate_cache)
        if layer is not None or gate_cache is not None:
            raise TypeError("layer and gate_cache apply to a call over a spattn.KVCache, not to arrays")
        if v is None:
            raise TypeError("v is required for a call on arrays")
        if return_lse:
            raise ValueError(f"{self.name}: return_lse is not defined for a gated sum of three attention branches")
        br = self.branches(q, k, v, causal=causal, scale=scale, k_gate=k_gate)
        B, Hq, Nq = br["cmp"].shape[:3]
        g = self.gate_values(B, Hq, Nq, hidden, gates)
        if g.dtype == np.float32 and all(br[n].dtype == np.float32 for n in ("cmp", "slc", "swa")):
            # the same float32 sum, in place: one temporary instead of five
            out = np.multiply(br["cmp"], g[..., 0:1])
            out += np.multiply(br["slc"], g[..., 1:2])
            out += np.multiply(br["swa"], g[..., 2:3])
        else:
            out = (g[..., 0:1] * br["cmp"] + g[..., 1:2] * br["slc"] + g[..., 2:3] * br["swa"]).astype(np.float32)
        return np.ascontiguousarray(out)

    # ------------------------------------------------------------------ decode over a KVCache
    def compressed_cache(self, cache: KVCache, layer: int, gate_cache: Optional[KVCache] = None
                         ) -> Tuple[np.ndarray, np.ndarray, int]:
        """(kc, vc, C): this method's compressed keys and values of `layer` (buffers, the first C
        rows valid), kept on the caches (registered on first use; keyed by this method object,
        whose weights and RoPE they depend on). The keys compressed are those of `gate_cache`
        (the pre-RoPE key mirror the transformers backend keeps) when given, else the cache's."""
        kb, vb, n = cache.buffers(layer)
        src = cache if gate_cache is None else gate_cache
        if src.length(layer) != n:
            raise ValueError(f"gate_cache holds {src.length(layer)} keys on layer {layer}, the cache {n}")
        ks = src.state(layer, ("nsa-k", id(self)), lambda: NSACompressedCache(self, "k"))
        vs = cache.state(layer, ("nsa-v", id(self)), lambda: NSACompressedCache(self, "v"))
        return ks.buffer(kb), vs.buffer(vb), ks.count

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int, scale: Optional[float] = None,
                      gate_cache: Optional[KVCache] = None, q_gate=None) -> TokenIndices:
        kb, vb, n = cache.buffers(layer)
        kc, vc, C = self.compressed_cache(cache, layer, gate_cache)
        blocks, o_cmp, _ = _core.nsa_compressed_attention(q, kc, vc, C, n, scale, self.cparams)
        self.last_info = {"blocks_per_row": int(blocks.shape[-1]), "compressed_tokens": C}
        self._decode_cmp = o_cmp  # the compressed branch of this step, for __call__
        return block_positions(blocks, self.params["block_size"], n, q.shape[1])

    def _decode_call(self, q, cache: KVCache, layer: Optional[int], scale, hidden, gates, gate_cache):
        layer = check_int(0 if layer is None else layer, "layer")
        scale = as_scale(scale)
        q = self._check_cache_query(q, cache, layer)
        kb, vb, n = cache.buffers(layer)
        if q.shape[2] != 1:
            self.last_selection = None
            return attention(q, kb, vb, kv_len=n, causal=True, scale=scale)
        self._decode_cmp = None
        idx = self._plan_step(q, cache, layer, scale=scale, gate_cache=gate_cache)
        self.last_selection = idx
        if idx is None:
            return attention(q, kb, vb, kv_len=n, causal=True, scale=scale)
        o_cmp = self._decode_cmp
        if o_cmp is None:  # a reuse layer: its own compressed branch
            kc, vc, C = self.compressed_cache(cache, layer, gate_cache)
            _, o_cmp, _ = _core.nsa_compressed_attention(q, kc, vc, C, n, scale, self.cparams)
        o_slc = token_sparse_attention(q, kb, vb, idx, kv_len=n, scale=scale)
        w = self.params["window_size"]
        left = w if self.params["window_inclusive"] else w - 1
        B, Hq = q.shape[:2]
        if left >= 0 and n > 0:
            pos = np.arange(max(0, n - 1 - left), n, dtype=np.int32)
            win = TokenIndices(np.broadcast_to(pos, (B, Hq, 1, pos.size)), 1, n, assume_sorted=True)
            o_swa = token_sparse_attention(q, kb, vb, win, kv_len=n, scale=scale)
        else:
            o_swa = np.zeros(q.shape[:3] + (vb.shape[3],), np.float32)
        g = self.gate_values(B, Hq, 1, hidden, gates)
        out = g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_swa
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------ the gradient path (training)
    def initial_weights(self, Hq: int, Hkv: int, D: int, Dv: int, hidden: Optional[int] = None
                        ) -> Dict[str, np.ndarray]:
        """The trainable weights in float64: the current ``weights`` where given, else the
        default behaviour (mean-pool compressors, zero PE, a zero per-head gate layer when
        `hidden` is given)."""
        l = self.params["kernel_size"]
        w = {key: np.asarray(val, np.float64).copy() for key, val in (self.params["weights"] or {}).items()}
        w.setdefault("compress_key", _mean_pool_weight(Hkv, l, D))
        w.setdefault("compress_value", _mean_pool_weight(Hkv, l, Dv))
        w.setdefault("intra_block_pe", np.zeros((Hkv, l, D)))
        if hidden is not None:
            w.setdefault("gate_weight", np.zeros((3 * Hq, hidden)))
            w.setdefault("gate_bias", np.zeros(w["gate_weight"].shape[0]))
        return w

    def loss_and_grads(self, weights: Dict[str, np.ndarray], sample: Dict[str, Any]
                       ) -> Tuple[float, Dict[str, np.ndarray]]:
        """Mean squared error of the gated output against ``sample["target"]`` and its exact
        gradients for the compression weights, the PE and (with ``sample["hidden"]``) the gate
        layer. The selection is computed with the current compressed keys and held fixed (top-k
        has no gradient, as in NSA); the compressed branch runs in float64 numpy here.
        `sample`: dict with q, k, v (float32), target, optional hidden and the precomputed
        ``o_swa`` (see :meth:`train_weights`)."""
        p = self.params
        l, d = p["kernel_size"], p["kernel_stride"]
        q, k, v = sample["q"], sample["k"], sample["v"]
        B, Hq, Nq, D = q.shape
        Hkv, Nk, Dv = k.shape[1], k.shape[2], v.shape[3]
        C = (Nk - l) // d + 1 if Nk >= l else 0
        scale = sample["scale"]
        Wk, Wv, pe = weights["compress_key"], weights["compress_value"], weights["intra_block_pe"]
        _need_shape("compress_key", Wk, (Hkv, l * D, D), "(Hkv, kernel_size * D, D)")
        _need_shape("compress_value", Wv, (Hkv, l * Dv, Dv), "(Hkv, kernel_size * Dv, Dv)")
        _need_shape("intra_block_pe", pe, (Hkv, l, D), "(Hkv, kernel_size, D)")
        Xk, Xv = sample["xk"], sample["xv"]
        bias = np.einsum("hx,hxd->hd", pe.reshape(Hkv, l * D), Wk)
        kc_pre = np.matmul(Xk, Wk[None]) + bias[None, :, None]
        vc = np.matmul(Xv, Wv[None])
        rope = p["rope"]
        cos_sin = _rope_cos_sin(C, d, D, float(rope)) if rope is not None else None
        kc = _rotate(kc_pre, *cos_sin) if cos_sin is not None else kc_pre
        qd = q.astype(np.float64)
        o_cmp, prob = _compressed_forward(qd, kc, vc, l, d, Nk, scale)
        # the selection with the current compressed keys (fixed for the gradient)
        kc32 = np.zeros((B, Hkv, max(C, 1), D), np.float32)
        kc32[:, :, :C] = kc
        vc32 = np.zeros((B, Hkv, max(C, 1), 1), np.float32)
        blocks, _, _ = _core.nsa_compressed_attention(q, kc32, vc32, C, Nk, scale, self.cparams)
        o_slc = row_block_sparse_attention(q, k, v, RowBlockIndices(blocks, p["block_size"], Nk, assume_sorted=True),
                                           causal=True, scale=scale).astype(np.float64)
        o_swa = sample["o_swa"]
        x = sample.get("hidden")
        if x is not None and "gate_weight" in weights:
            W, b = weights["gate_weight"], weights["gate_bias"]
            g = _sigmoid(x @ W.T + b)  # (B, Nq, rows)
            g4 = g[:, None] if W.shape[0] == 3 else g.reshape(B, Nq, Hq, 3).transpose(0, 2, 1, 3)
        else:
            g4 = np.broadcast_to(np.asarray(p["gates"], np.float64), (B, 1, Nq, 3))
        branches = (o_cmp, o_slc, o_swa)
        out = sum(g4[..., i:i + 1] * br for i, br in enumerate(branches))
        diff = out - sample["target"]
        loss = float(np.mean(diff * diff))
        dout = 2.0 * diff / diff.size
        grads: Dict[str, np.ndarray] = {}
        if x is not None and "gate_weight" in weights:
            dg = np.stack([(dout * br).sum(axis=-1) for br in branches], axis=-1)  # (B, Hq, Nq, 3)
            if W.shape[0] == 3:
                dlog = dg.sum(axis=1) * g * (1 - g)
            else:
                dlog = (dg.transpose(0, 2, 1, 3).reshape(B, Nq, 3 * Hq)) * g * (1 - g)
            grads["gate_weight"] = np.einsum("bnr,bnx->rx", dlog, x)
            grads["gate_bias"] = dlog.sum(axis=(0, 1))
        dkc, dvc = _compressed_backward(qd, vc, prob, g4[..., 0:1] * dout, scale)
        dkc_pre = _rotate(dkc, *cos_sin, inverse=True) if cos_sin is not None else dkc
        dsum = dkc_pre.sum(axis=(0, 2))  # (Hkv, D): the bias's gradient
        grads["compress_key"] = (np.einsum("bhcx,bhcd->hxd", Xk, dkc_pre)
                                 + np.einsum("hx,hd->hxd", pe.reshape(Hkv, l * D), dsum))
        grads["intra_block_pe"] = np.einsum("hxd,hd->hx", Wk, dsum).reshape(Hkv, l, D)
        grads["compress_value"] = np.einsum("bhcx,bhce->hxe", Xv, dvc)
        return loss, grads

    def train_weights(self, samples: Sequence, *, steps: int = 100, lr: float = 1e-3, warmup_steps: int = 0,
                      weight_decay: float = 0.0, max_grad_norm: float = 1.0, scale: Optional[float] = None,
                      progress: bool = True) -> NSATrainResult:
        """Fit the learned parts (compression weights, PE, gate layer) on captured samples with the
        shared fit loop (:func:`spattn.training.fit`: AdamW, warmup + cosine, clipping) and keep
        them as ``params["weights"]``.

        Parameters
        ----------
        samples : sequence of (q, k, v) or (q, k, v, hidden)
            Causal attention inputs (q / k as attended, after RoPE; the compression reads k);
            with ``hidden`` (B, Nq, hidden) the gate layer is trained too (per head unless the
            current weights hold a per-token one). The target of each is exact causal attention.
        steps, lr, warmup_steps, weight_decay, max_grad_norm
            Of the fit loop; step s uses sample s mod len(samples).
        scale : float, optional
            Logit scale (1/sqrt(D)).

        Returns
        -------
        NSATrainResult
            The weights (float32) and the loss of every step.

        ``rope`` must be None or a theta (the callable form has no transpose for the gradient).
        The method does not declare ``capabilities.fittable``: its learned parts read V, which
        the registry's ``fit(samples of (q, k))`` does not hand over.
        """
        if self.params["rope"] is not None and callable(self.params["rope"]):
            raise ValueError("nsa: train_weights needs rope None or a theta (a callable rope has no gradient here)")
        items = list(samples)
        if not items:
            raise ValueError("samples must hold at least one (q, k, v[, hidden]) item")
        l, d = self.params["kernel_size"], self.params["kernel_stride"]
        prepared = []
        for it in items:
            if len(it) not in (3, 4):
                raise ValueError(f"each sample must be (q, k, v) or (q, k, v, hidden), got {len(it)} arrays")
            q, k, v = check_qkv(*it[:3])
            sc = as_scale(scale)
            _core.check_shapes(q, k, v, sc)
            self.check_call(q, k, True)
            C = (k.shape[2] - l) // d + 1 if k.shape[2] >= l else 0
            hid = None
            if len(it) == 4:
                hid = as_float_array(it[3], "hidden").astype(np.float64)
                if hid.ndim != 3 or hid.shape[:2] != (q.shape[0], q.shape[2]):
                    raise ValueError(f"hidden must have shape (B, Nq, hidden) = ({q.shape[0]}, {q.shape[2]}, hidden), "
                                     f"got {hid.shape}")
            w_ = self.params["window_size"]
            left = w_ if self.params["window_inclusive"] else w_ - 1
            o_swa = (window_attention(q, k, v, left=left, causal=True, scale=sc) if left >= 0
                     else np.zeros(q.shape[:3] + (v.shape[3],), np.float32))
            prepared.append({"q": q, "k": k, "v": v, "hidden": hid, "scale": (1.0 / np.sqrt(q.shape[3]) if sc is None
                                                                             else float(sc)),
                             "xk": _windows(k, l, d, C), "xv": _windows(v, l, d, C),
                             "o_swa": o_swa.astype(np.float64),
                             "target": attention(q, k, v, causal=True, scale=sc).astype(np.float64)})
        with_gate = all(s_["hidden"] is not None for s_ in prepared)
        q0, v0 = prepared[0]["q"], prepared[0]["v"]
        weights = self.initial_weights(q0.shape[1], prepared[0]["k"].shape[1], q0.shape[3], v0.shape[3],
                                       prepared[0]["hidden"].shape[2] if with_gate else None)
        if not with_gate:
            for s_ in prepared:
                s_["hidden"] = None
        names = [n for n in WEIGHT_KEYS if n in weights and (with_gate or not n.startswith("gate"))]
        params = [weights[n] for n in names]

        def step_fn(step: int):
            loss, grads = self.loss_and_grads(weights, prepared[step % len(prepared)])
            return loss, [grads[n] for n in names]

        losses = training.fit(params, step_fn, steps=steps, lr=lr, warmup_steps=warmup_steps,
                              weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=progress,
                              desc="nsa")
        self.set_params(weights={n: w.astype(np.float32) for n, w in weights.items()})
        return NSATrainResult(dict(self.params["weights"]), losses)

    def readouts(self) -> Dict[str, Any]:
        return {k: self.last_info[k] for k in ("blocks_per_row", "compressed_tokens") if k in self.last_info}


__all__ = ["NSA", "NSACompressedCache", "NSATrainResult", "load_weights", "rope_rotate_half", "WEIGHT_KEYS"]
