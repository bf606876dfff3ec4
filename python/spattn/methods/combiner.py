"""Combiner: full attention at sparse cost, remote keys reached through span summaries.

Ren et al., "Combiner: Full Attention Transformer with Sparse Computation Cost", NeurIPS 2021
(arXiv 2107.05768); official code google-research/google-research ``combiner/``:
``tf/approx_attention.py::sqrt_fixed_full`` (Combiner-Fixed) and ``jax/model/layer.py::
_SelfAttLogn`` (Combiner-Logsparse). Every pass runs on spattn's kernels: the token-sparse kernel
over real and virtual (summary) keys, the dense kernel, and the exact (out, lse) merge.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._validation import as_causal, as_float_array, as_scale, check_int
from ..kernels import attention, merge_states, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

VARIANTS = ("fixed", "logsparse")
POOLS = ("max", "mean", "sum")


def _pool(x: np.ndarray, starts: np.ndarray, ends: np.ndarray, pool: str) -> np.ndarray:
    """Pool x (B, H, N, D) over the token spans [starts[i], ends[i]) -> (B, H, len(starts), D)."""
    out = np.empty(x.shape[:2] + (len(starts), x.shape[3]), dtype=np.float32)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        seg = x[:, :, a:b]
        out[:, :, i] = seg.max(axis=2) if pool == "max" else seg.mean(axis=2) if pool == "mean" else seg.sum(axis=2)
    return out


def _span_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(len(starts), max span) int32: the key positions of each span, -1 padded."""
    width = int((ends - starts).max()) if len(starts) else 0
    idx = starts[:, None] + np.arange(width, dtype=np.int64)[None, :]
    return np.where(idx < ends[:, None], idx, -1).astype(np.int32)


def _tokens(idx: np.ndarray, B: int, H: int, group: int, kv_len: int) -> TokenIndices:
    return TokenIndices(np.broadcast_to(idx, (B, H) + idx.shape), group_size=group, kv_len=kv_len,
                        assume_sorted=True)


@register
class Combiner(Method):
    """Combiner's factorised full attention: every query keeps support on every earlier key,
    the local ones with exact logits, the remote ones through one summary key / value per span,
    all in one softmax.

    * ``variant="fixed"`` (Combiner-Fixed, TF ``sqrt_fixed_full``): segments of ``segment`` tokens.
      Per segment a summary query q_S = pool(q) and key k_S = pool(k) (``pool``: the official
      ``local_summary`` 'identity-max' by default), and a summary value v_S = softmax_j(q_S . k_j /
      sqrt(D)) v_j over the whole segment. Query i of segment g: one softmax over its own
      segment's keys (causal: j <= i) and the summaries of the segments before g (non-causal:
      every segment's summary, its own included, and all s local keys, as the official code
      applies no mask then).
    * ``variant="logsparse"`` (Combiner-Logsparse, JAX ``_SelfAttLogn``, causal only): query t
      attends itself, and at each level l (spans of 2^l tokens; level 0 = the single key t - 1)
      the span floor(t / 2^l) - 1 iff bit l of t is set: the chosen spans tile [0, t) exactly,
      log2(N) + 1 logits per query. Level-l summaries: max-pooled q and k, and the value
      softmax(q_S . k / sqrt(D)) v over the span (the official code multiplies the pooled,
      pre-scaled query by sqrt(D) and flax divides it again: the same logits).

    Execution: fixed = the token-sparse kernel over each segment's keys (local) and over the
    summaries (remote), merged exactly by their log-sum-exp; logsparse = one token-sparse call
    over a virtual key set [k ; level summaries] with log2(N) + 1 indices per query. O(N (s + N/s))
    and O(N log N) work, O(N) memory (no N x N buffer).

    Parameters
    ----------
    variant : {"fixed", "logsparse"}, default "fixed"
    segment : int, default 128
        Combiner-Fixed's ``max_seg_len`` (the official LM config's 128).
    pool : {"max", "mean", "sum"}, default "max"
        The pooling of ``local_summary`` for the summary query and key (the activation is the
        identity; 'relu' / 'deepset' need weights the paper learns and are not offered).

    Notes
    -----
    * Prefill only (Nq == Nk): the summary queries pool the queries of past spans, which a decode
      step does not have (a cache of them would be needed; not provided).
    * Deviations: the official fixed code asserts N % segment == 0; here the last segment may be
      shorter and its summaries pool its actual tokens. The official logsparse code uses
      ceil(log2(N - 1)) levels, which misses the top span of the last query when N - 1 is a power
      of two; here the levels are the bit length of N - 1, so the spans always tile [0, t).
      Masked logits are excluded (the official code adds -1e9: the same softmax).
    * GQA: summary keys pool each kv head's keys; summary values depend on the query head (their
      softmax uses the pooled query), so they are per query head.
    * ``estimate`` returns the real keys each query attends with an exact logit (its segment, or
      t - 1 and t for logsparse) as TokenIndices; the output also carries the summaries, so it is
      not that mask run by a kernel (``capabilities.own_output``).
    """

    name = "combiner"
    paper = "Ren et al., Combiner, NeurIPS 2021"
    pattern = "factorised full attention: exact local keys + pooled span summaries in one softmax"
    params_struct = None
    extra_defaults = {"variant": "fixed", "segment": 128, "pool": "max"}
    capabilities = Capabilities(chunked=False, decode=False, mask_format="token", own_output=True)
    reads_outside_mask = True  # the span summaries read every key of earlier segments

    def _check_params(self) -> None:
        if self.params["variant"] not in VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {VARIANTS}, got {self.params['variant']!r}")
        if self.params["pool"] not in POOLS:
            raise ValueError(f"{self.name}: pool must be one of {POOLS}, got {self.params['pool']!r}")
        self.params["segment"] = check_int(self.params["segment"], f"{self.name}: segment", lo=1)

    def check_call(self, q, k, causal: bool) -> None:
        super().check_call(q, k, causal)
        if self.params["variant"] == "logsparse" and not causal:
            raise ValueError(f"{self.name}: variant='logsparse' is causal only (Combiner-Logsparse), got causal=False")

    # -- the pattern of real keys ---------------------------------------------------------------
    def _segments(self, n: int):
        s = self.params["segment"]
        starts = np.arange(0, n, s, dtype=np.int64)
        return starts, np.minimum(starts + s, n)

    def _logsparse_local(self, n: int) -> np.ndarray:
        t = np.arange(n, dtype=np.int64)
        prev = np.where(t % 2 == 1, t - 1, -1)
        return np.stack([np.where(prev >= 0, prev, t), np.where(prev >= 0, t, -1)], axis=1).astype(np.int32)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, H, n = q.shape[0], q.shape[1], q.shape[2]
        if self.params["variant"] == "logsparse":
            return _tokens(self._logsparse_local(n), B, H, 1, n)
        starts, ends = self._segments(n)
        return _tokens(_span_runs(starts, ends), B, H, min(self.params["segment"], max(n, 1)), n)

    # -- the call ---------------------------------------------------------------------------------
    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
        causal, scale = as_causal(causal), as_scale(scale)
        self.check_call(q, k, causal)
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(f"v must have the (B, Hkv, Nk) of k {k.shape[:3]}, got {v.shape}")
        sc = float(q.shape[3] ** -0.5) if scale is None else float(scale)
        if self.params["variant"] == "logsparse":
            out, lse = self._logsparse(q, k, v, sc)
        else:
            out, lse = self._fixed(q, k, v, causal, sc)
        self.last_info = {"variant": self.params["variant"], "mask": self._estimate(q, k, causal, sc)}
        return (out, lse) if return_lse else out

    def _summaries(self, q, k, v, starts, ends, sc):
        """Summary keys (B, Hq, S, D) (the kv head's pooled keys, repeated over its query
        heads) and values (B, Hq, S, Dv) of the spans [starts, ends)."""
        B, Hq, n = q.shape[:3]
        G = Hq // k.shape[1]
        pool = self.params["pool"]
        qs = _pool(q, starts, ends, pool)
        ks = np.repeat(_pool(k, starts, ends, pool), G, axis=1)
        vs = token_sparse_attention(qs, k, v, _tokens(_span_runs(starts, ends), B, Hq, 1, n), scale=sc)
        return ks, np.asarray(vs)

    def _fixed(self, q, k, v, causal, sc):
        B, Hq, n = q.shape[:3]
        s = self.params["segment"]
        starts, ends = self._segments(n)
        local = self._estimate(q, k, causal, sc)
        out_l, lse_l = token_sparse_attention(q, k, v, local, causal=causal, scale=sc, return_lse=True)
        nseg = len(starts)
        if nseg == 0 or (causal and nseg == 1):
            return np.asarray(out_l), np.asarray(lse_l)
        ks, vs = self._summaries(q, k, v, starts, ends, sc)
        if causal:  # segment g sees the summaries of segments 0 .. g-1
            g = np.arange(nseg)[:, None]
            j = np.arange(nseg - 1)[None, :]
            idx = np.where(j < g, j, -1).astype(np.int32)
            out_r, lse_r = token_sparse_attention(q, ks, vs, _tokens(idx, B, Hq, s, nseg), scale=sc, return_lse=True)
        else:
            out_r, lse_r = attention(q, ks, vs, scale=sc, return_lse=True)
        return merge_states(out_l, lse_l, out_r, lse_r)

    def _logsparse(self, q, k, v, sc):
        B, Hq, n = q.shape[:3]
        G = Hq // k.shape[1]
        levels = max(1, int(n - 1).bit_length())
        vk, vv = [np.repeat(k, G, axis=1)], [np.repeat(v, G, axis=1)]  # level 0: the keys themselves
        offsets, base = [0], n
        for lvl in range(1, levels):
            span = 1 << lvl
            count = n // span
            offsets.append(base)
            if count == 0:
                continue
            starts = np.arange(count, dtype=np.int64) * span
            ks, vs = self._summaries(q, k, v, starts, starts + span, sc)
            vk.append(ks)
            vv.append(vs)
            base += count
        keys = np.ascontiguousarray(np.concatenate(vk, axis=2))
        vals = np.ascontiguousarray(np.concatenate(vv, axis=2))
        t = np.arange(n, dtype=np.int64)
        cols = [t]  # the self logit
        for lvl in range(levels):
            span_idx = (t >> lvl) - 1
            cols.append(np.where((t >> lvl) & 1 == 1, offsets[lvl] + span_idx, -1))
        idx = np.stack(cols, axis=1)
        idx = np.sort(np.where(idx < 0, np.iinfo(np.int64).max, idx), axis=1)
        idx = np.where(idx == np.iinfo(np.int64).max, -1, idx).astype(np.int32)
        out, lse = token_sparse_attention(q, keys, vals, _tokens(idx, B, Hq, 1, keys.shape[2]), scale=sc,
                                          return_lse=True)
        return np.asarray(out), np.asarray(lse)


__all__ = ["Combiner"]
