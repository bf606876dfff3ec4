"""GUI-KV: one-time KV eviction after prefill, SnapKV scores plus spatial saliency and temporal
redundancy across screenshots.

Huang et al., "GUI-KV: Efficient GUI Agents via KV Cache with Spatio-Temporal Awareness",
arXiv 2510.00536 (Salesforce). Follows the official ``SalesforceAIResearch/GUI-KV``
``gui_kv/gui_kv_utils.py`` (``GUIKVCluster.update_kv``), see /shared/methods/stateful/gui_kv.md.

Per layer, on the prefill's q (B, Hq, L, D) and k (B, Hkv, L, D), with capacity
``cap = int(L * budget_percent / 100)`` and window ``w = min(window_size, cap - 2)``:

1. SnapKV score: the exact softmax probabilities of the last w queries (causal corner), summed
   over them, for keys 0..L-w-1 (spattn's ``block_attention_map`` statistics pass, one block of w
   query rows and 1-key columns: no L x L buffer), then ``avg_pool1d(kernel_size, stride 1,
   padding kernel_size // 2)`` with zero padding counted (PyTorch's default), or max pooling.
2. Spatial saliency (when ``hidden_states`` and ``spans`` are given): on the current screenshot
   span [a, b) (the last span), n_t = ||h_t||_2, z = (n - mean) / (std_unbiased + 1e-8),
   ``s[a:b] += alpha * softmax(z / temperature)`` for every head.
3. Temporal redundancy (also only with ``hidden_states``, as officially, and >= 2 spans): per
   query head, Q = the first r = min(max_rank, n_cur, D) columns of the reduced QR of the current
   span's keys transposed (a basis of the span of its first r keys, not an SVD); for each token j
   of the earlier spans the residual ||k_j - Q Q^T k_j||; the ``int((1 - cap / L) * N_prev)``
   smallest residuals get score 0.
4. The top ``cap - w`` scores over positions 0..L-w-1, plus the last w positions, are kept.

GQA: selection is per *query* head (the official code ``repeat_kv``'s k and v first), so the
kept lists are (B, Hq, cap) and a compacted cache (:meth:`KVCache.compact`) stores Hq heads.

Output and use: ``estimate`` returns the kept lists as TokenIndices (one group for all queries);
``m(q, k, v)`` runs the token-sparse kernel over them (causal): what attention over the compressed
cache gives. The official flow, exact prefill then a compressed cache for decoding, is
:meth:`GuiKV.prefill` (dense output, the layer of a :class:`spattn.KVCache` compacted) followed
by :meth:`GuiKV.decode` (dense attention over the compacted cache; nothing is re-scored).

Fallbacks and deviations: without ``hidden_states`` the score is plain SnapKV (the official
code also skips both GUI terms then; ``spans`` alone are ignored). Spans must lie before the last
w tokens (the official slice would otherwise fail on a shape mismatch) and the current span needs
>= 2 tokens (its unbiased std is undefined otherwise). Ties in the top-k (``torch.topk``:
unspecified) are broken towards the lower position, also among equal residuals; the kept lists are
returned sorted (the official cache is in top-k order, then the window: attention does not depend
on the order). When ``cap < 3`` (no room for a window of >= 1 and one selected key; the official
code asserts) nothing is evicted. The pooling and the residuals are computed in float64 (official:
float32), the probabilities in float32 as officially. Only odd ``kernel_size`` is accepted (an
even one changes the pooled length in PyTorch).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import _core
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..cache import KVCache
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register


def _check_real(value, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or x > hi or x < lo or (lo_open and x == lo):
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
    return x


def pool1d(s: np.ndarray, kernel_size: int, pooling: str) -> np.ndarray:
    """PyTorch's ``avg_pool1d`` / ``max_pool1d`` with stride 1 and padding kernel_size // 2 (odd
    kernel: same length) along the last axis; average pooling divides by kernel_size at the edges
    too (count_include_pad)."""
    p = kernel_size // 2
    if pooling == "avgpool":
        padded = np.pad(s.astype(np.float64), [(0, 0)] * (s.ndim - 1) + [(p, p)])
        c = np.concatenate([np.zeros(s.shape[:-1] + (1,)), np.cumsum(padded, axis=-1)], axis=-1)
        return (c[..., kernel_size:] - c[..., :-kernel_size]) / kernel_size
    padded = np.pad(s.astype(np.float64), [(0, 0)] * (s.ndim - 1) + [(p, p)], constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(padded, kernel_size, axis=-1)
    return win.max(axis=-1)


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest entries of the last axis, ties towards the lower index (unsorted
    by position)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :n]


@register
class GuiKV(Method):
    """GUI-KV: one-time prefill KV eviction (SnapKV score + hidden-state saliency on the current
    screenshot - temporal redundancy against it), per query head; see the module docstring.

    Parameters
    ----------
    budget_percent : float, default 10.0
        Kept share of the prefill, ``cap = int(L * budget_percent / 100)`` (the official scripts
        sweep 1, 3, 5, 10, 15, 20, 40, 80; 10 is spattn's pick of a default).
    window_size : int, default 8
        Last tokens always kept and whose queries score the others; ``min(window_size, cap - 2)``.
    alpha : float, default 2.0
        Weight of the spatial saliency.
    temperature : float, default 3.5
        Softmax temperature of the standardised hidden-state norms.
    kernel_size : int, default 5
        Pooling width (odd).
    pooling : str, default "avgpool"
        "avgpool" or "maxpool".
    max_rank : int, default 32
        Rank cap of the current screenshot's key basis.
    """

    name = "gui_kv"
    aliases = ("gui-kv", "guikv")
    paper = "GUI-KV: Efficient GUI Agents via KV Cache with Spatio-Temporal Awareness (Huang et al., 2025)"
    pattern = ("one-time prefill KV eviction per query head: SnapKV window score + hidden-state saliency "
               "- temporal redundancy (QR residual), last tokens kept")
    extra_defaults = {"budget_percent": 10.0, "window_size": 8, "alpha": 2.0, "temperature": 3.5, "kernel_size": 5,
                      "pooling": "avgpool", "max_rank": 32}
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="token")

    def _check_params(self) -> None:
        p = self.params
        _check_real(p["budget_percent"], "budget_percent", 0.0, 100.0, lo_open=True)
        check_int(p["window_size"], "window_size", lo=1)
        _check_real(p["alpha"], "alpha", 0.0, 1e6)
        _check_real(p["temperature"], "temperature", 0.0, 1e6, lo_open=True)
        ks = check_int(p["kernel_size"], "kernel_size", lo=1)
        if ks % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {ks}")
        if p["pooling"] not in ("avgpool", "maxpool"):
            raise ValueError(f"pooling must be 'avgpool' or 'maxpool', got {p['pooling']!r}")
        check_int(p["max_rank"], "max_rank", lo=1)

    # ------------------------------------------------------------------ sizes and inputs
    def capacity(self, L: int) -> Tuple[int, int]:
        """(cap, w) for a prefill of L tokens; cap == L when nothing is evicted."""
        cap = int(L * float(self.params["budget_percent"]) / 100)
        if cap < 3:
            return L, 0
        return cap, min(int(self.params["window_size"]), cap - 2)

    @staticmethod
    def _check_spans(spans, limit: int) -> Optional[Tuple[Tuple[int, int], ...]]:
        if spans is None:
            return None
        if not isinstance(spans, (list, tuple, np.ndarray)) or len(spans) == 0:
            raise TypeError("spans must be a non-empty sequence of (start, end) screenshot token spans")
        out = []
        for i, sp in enumerate(spans):
            if not isinstance(sp, (list, tuple, np.ndarray)) or len(sp) != 2:
                raise TypeError(f"spans[{i}] must be a (start, end) pair, got {sp!r}")
            a, b = check_int(sp[0], f"spans[{i}][0]"), check_int(sp[1], f"spans[{i}][1]")
            if not a < b <= limit:
                raise ValueError(f"spans[{i}] must satisfy 0 <= start < end <= {limit} (the tokens before the "
                                 f"last window), got ({a}, {b})")
            out.append((a, b))
        if out[-1][1] - out[-1][0] < 2:
            raise ValueError(f"the current (last) span needs >= 2 tokens, got {out[-1]}")
        return tuple(out)

    def _inputs(self, q, k, causal, scale, hidden_states, spans):
        q, k, _ = check_qkv(q, k)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, None, scale)
        self.check_call(q, k, causal)
        B, _, L, _ = q.shape
        if hidden_states is not None:
            hidden_states = as_float_array(hidden_states, "hidden_states")
            if hidden_states.ndim != 3 or hidden_states.shape[:2] != (B, L):
                raise ValueError(f"hidden_states must have shape (B={B}, L={L}, C), got {hidden_states.shape}")
        cap, w = self.capacity(L)
        spans = self._check_spans(spans, L - w)
        return q, k, causal, scale, hidden_states, spans

    # ------------------------------------------------------------------ selection
    def evict(self, q, k, *, scale: Optional[float] = None, hidden_states=None,
              spans: Optional[Sequence[Tuple[int, int]]] = None) -> np.ndarray:
        """The kept key positions per query head, int32 (B, Hq, cap), sorted ascending.

        Parameters
        ----------
        q, k : array_like, (B, Hq, L, D) and (B, Hkv, L, D)
            The prefill's queries and keys (after RoPE).
        hidden_states : array_like (B, L, C), optional
            The input of the attention module (Qwen2.5-VL: the input_layernorm output); without
            it the score is plain SnapKV.
        spans : sequence of (start, end), optional
            Token spans of the screenshots, in prompt order; the last is the current one.
        """
        q, k, _, scale, hs, spans = self._inputs(q, k, True, scale, hidden_states, spans)
        return self._evict(q, k, scale, hs, spans)

    def _evict(self, q, k, scale, hs, spans) -> np.ndarray:
        p = self.params
        B, Hq, L, D = q.shape
        G = Hq // k.shape[1]
        cap, w = self.capacity(L)
        self.last_info = {"capacity": cap, "window": w, "kv_len": L}
        if cap >= L:
            return np.ascontiguousarray(np.broadcast_to(np.arange(L, dtype=np.int32), (B, Hq, L)))
        qw = np.ascontiguousarray(q[:, :, L - w:])
        mass, _ = _core.block_attention_map(qw, k, w, 1, True, scale, "sum")  # (B, Hq, 1, L)
        s = pool1d(mass[:, :, 0, :L - w], int(p["kernel_size"]), p["pooling"])  # (B, Hq, L - w), float64
        if hs is not None and spans is not None:
            a, b = spans[-1]
            n = np.linalg.norm(hs[:, a:b].astype(np.float64), axis=-1)  # (B, n_cur)
            z = (n - n.mean(axis=1, keepdims=True)) / (n.std(axis=1, ddof=1, keepdims=True) + 1e-8)
            z = z / float(p["temperature"])
            g = np.exp(z - z.max(axis=1, keepdims=True))
            g /= g.sum(axis=1, keepdims=True)
            s[:, :, a:b] += float(p["alpha"]) * g[:, None, :]
            if len(spans) > 1:
                self._zero_redundant(s, k, spans, cap / L, G)
        sel = top_positions(s, cap - w)
        keep = np.concatenate([sel, np.broadcast_to(np.arange(L - w, L), (B, Hq, w))], axis=-1)
        return np.sort(keep, axis=-1).astype(np.int32)

    def _zero_redundant(self, s: np.ndarray, k: np.ndarray, spans, budget: float, G: int) -> None:
        a, b = spans[-1]
        prev = np.concatenate([np.arange(x, y) for x, y in spans[:-1]])
        n0 = int((1.0 - budget) * len(prev))
        if n0 <= 0:
            return
        D = k.shape[3]
        r = min(int(self.params["max_rank"]), b - a, D)
        B, Hkv = k.shape[:2]
        for bi in range(B):
            for hk in range(Hkv):  # the G query heads of a kv head see the same keys
                basis, _ = np.linalg.qr(k[bi, hk, a:b].astype(np.float64).T)  # (D, min(D, n_cur))
                basis = basis[:, :r]
                x = k[bi, hk, prev].astype(np.float64)  # (N_prev, D)
                e = np.linalg.norm(x - (x @ basis) @ basis.T, axis=-1)
                drop = prev[np.argsort(e, kind="stable")[:n0]]
                s[bi, hk * G:(hk + 1) * G, drop] = 0.0

    # ------------------------------------------------------------------ Method interface
    def estimate(self, q, k, *, causal: bool = True, scale: Optional[float] = None, q_gate=None, k_gate=None,
                 v=None, hidden_states=None, spans=None) -> TokenIndices:
        """The kept lists as TokenIndices (B, Hq, 1, cap), one group for all queries (see
        :meth:`evict` for `hidden_states` and `spans`)."""
        if v is not None:
            raise TypeError(f"{self.name} takes no v in estimate; only methods with capabilities.value_inputs do")
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, causal, scale, hs, spans = self._inputs(q, k, causal, scale, hidden_states, spans)
        keep = self._evict(q, k, scale, hs, spans)
        return TokenIndices(keep[:, :, None, :], max(q.shape[2], 1), k.shape[2], assume_sorted=True)

    def __call__(self, q, k, v, *, causal: bool = True, scale: Optional[float] = None, return_lse: bool = False,
                 hidden_states=None, spans=None):
        """Attention of q over the keys the eviction keeps (causal, token-sparse kernel)."""
        mask = self.estimate(q, k, causal=causal, scale=scale, hidden_states=hidden_states, spans=spans)
        return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)

    def prefill(self, q, k, v, cache: KVCache, *, layer: int = 0, scale: Optional[float] = None,
                hidden_states=None, spans=None, return_lse: bool = False):
        """The official prefill step of one layer: exact causal attention output, then the layer of
        `cache` (which must hold no keys yet) is filled with k, v and compacted to the kept lists
        (per query head, so it holds Hq heads afterwards). Returns the exact output."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a spattn.KVCache, got {type(cache).__name__}")
        layer = check_int(layer, "layer")
        if cache.length(layer):
            raise ValueError(f"layer {layer} of the cache already holds {cache.length(layer)} keys; GUI-KV "
                             "compresses a prefill written to an empty layer")
        q, k, _, scale, hs, spans = self._inputs(q, k, True, scale, hidden_states, spans)
        keep = self._evict(q, k, scale, hs, spans)
        res = attention(q, k, v, causal=True, scale=scale, return_lse=return_lse)
        cache.append(layer, k, v)
        cache.compact(layer, keep)
        return res

    def decode(self, q, cache: KVCache, *, layer: int = 0, scale: Optional[float] = None,
               return_lse: bool = False):
        """Attention of decode queries q (B, Hq, Nq, D) over the (compacted) layer of `cache`: every
        cached key, nothing re-scored (causal bottom-right when Nq > 1)."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a spattn.KVCache, got {type(cache).__name__}")
        kb, vb, n = cache.buffers(check_int(layer, "layer"))
        return attention(q, kb, vb, kv_len=n, causal=True, scale=scale, return_lse=return_lse)

    def readouts(self):
        return {k: self.last_info[k] for k in ("capacity", "window", "kv_len") if k in self.last_info}
