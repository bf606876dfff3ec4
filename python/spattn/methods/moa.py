"""MoA: Mixture of Attention spans, elastic sink + local window per head from a searched plan.

Fu et al., "MoA: Mixture of Sparse Attention for Automatic Large Language Model Compression",
arXiv 2406.14909; thu-nics/MoA (commit e224fe3): the per-head span rule of
``MoA/attention/cache_utils.py`` ``moa_config_to_cache_config`` and the prefill block rule of
``MoA/kernels/block_sparse_attention_prefill.py`` (``_sparse_attention_prefill_moa_fwd_kernel``).
The pattern is built here (a per-head BlockMask for prefill, per-head TokenIndices for decode)
and runs on the block-sparse / token-sparse kernels.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Mapping, Tuple

import numpy as np

from .._validation import check_int
from ..masks import BlockMask, TokenIndices
from .base import Capabilities, Method, register

BLOCK = 64        # BLOCK_M = BLOCK_N of the official kernels
SPLIT = 64        # split_size of moa_config_to_cache_config
MIN_CACHE = 128   # minimum_cache_size
SINK = 64         # sink_size


def load_plan(source) -> Dict[str, List[List[float]]]:
    """An official MoA plan: a path to (or the dict of) ``{"alphas": [[per head] per layer],
    "betas": [[...]]}`` (``examples/*/moa_alpha_beta.json``)."""
    plan = source
    if not isinstance(source, Mapping):
        with open(source) as fh:
            plan = json.load(fh)
    if not isinstance(plan, Mapping) or "alphas" not in plan or "betas" not in plan:
        raise ValueError("a MoA plan must hold 'alphas' and 'betas' (lists per layer of values per head)")
    alphas, betas = plan["alphas"], plan["betas"]
    if len(alphas) != len(betas) or any(len(a) != len(b) for a, b in zip(alphas, betas)):
        raise ValueError("a MoA plan's alphas and betas must have the same layers and heads")
    return {"alphas": [list(map(float, a)) for a in alphas], "betas": [list(map(float, b)) for b in betas]}


def head_spans(alphas, betas, n: int) -> List[Tuple[int, int]]:
    """(sink G, local W) per head for N = n tokens (prompt + max_new_tokens), as
    ``moa_config_to_cache_config``: S = min(int(alpha + N beta), N); S = ceil(max(S, 128) / 64) * 64;
    G = min(S, 64); W = S - G."""
    out = []
    for a, b in zip(alphas, betas):
        s = min(int(a + n * b), n)
        s = math.ceil(max(s, MIN_CACHE) / SPLIT) * SPLIT
        g = min(s, SINK)
        out.append((g, s - g))
    return out


@register
class MoA(Method):
    """MoA's per-head elastic spans, as the official inference code applies a searched plan:

    * head h of the layer keeps a span S_h = alpha_h + beta_h * N tokens (N = prompt length +
      ``max_new_tokens``, official 1024), rounded as ``moa_config_to_cache_config`` (at least 128,
      up to a multiple of 64, at most N), split into a sink of G = 64 tokens and a window of
      W = S - G;
    * prefill (Nq == Nk): 64 x 64 blocks, query block m visits key block b iff b <= m and
      (b < G / 64 or b >= m + 1 - W / 64), causal inside (the Triton kernel's rule; dense when
      Nk <= 64);
    * decode (Nq == 1): the first G and the last W positions per head (the circular cache).

    Parameters
    ----------
    alphas, betas : list of float, one per query head
        The layer's row of an official plan (:func:`load_plan`; ``MoA.from_plan(plan, layer)``).
        Default None: a uniform baseline (alpha 1024, beta 0.125 for every head; values from the
        official rule grid), not a searched plan.
    max_new_tokens : int, default 1024

    Notes
    -----
    The plan search (influence profiling, MILP) is not reproduced: plans come from the official
    pipeline. A decode call computes the spans from the cache length minus one (a stateless call
    does not know the prompt length; the official code fixes the spans from it for the whole
    request). The official code requires multi-head attention (GQA models converted first);
    spattn applies the plan per query head on any GQA layout (Hq must equal the plan's heads).
    """

    name = "moa"
    paper = "Fu et al., MoA: Mixture of Sparse Attention, 2024"
    pattern = "per-head elastic span: 64 sink tokens + a window of alpha + beta N (searched plan)"
    params_struct = None
    extra_defaults = {"alphas": None, "betas": None, "max_new_tokens": 1024}
    capabilities = Capabilities(noncausal=False, chunked=False)

    @classmethod
    def from_plan(cls, plan, layer: int, **params) -> "MoA":
        """The method for `layer` of an official plan (a path or dict, see :func:`load_plan`)."""
        p = load_plan(plan)
        layer = check_int(layer, "layer")
        if layer >= len(p["alphas"]):
            raise ValueError(f"layer {layer} is not in the plan ({len(p['alphas'])} layers)")
        return cls(alphas=p["alphas"][layer], betas=p["betas"][layer], **params)

    def _check_params(self) -> None:
        a, b = self.params["alphas"], self.params["betas"]
        if a is not None or b is not None:
            if a is None or b is None or len(a) != len(b) or len(a) == 0:
                raise ValueError(f"moa: alphas and betas must be lists of one value per head, got {a!r} and {b!r}")
            self.params["alphas"] = [float(x) for x in a]
            self.params["betas"] = [float(x) for x in b]
        self.params["max_new_tokens"] = check_int(self.params["max_new_tokens"], "moa: max_new_tokens")

    def spans(self, Hq: int, n_prompt: int) -> List[Tuple[int, int]]:
        a, b = self.params["alphas"], self.params["betas"]
        if a is None:  # no plan: the uniform baseline (every head alpha 1024, beta 0.125)
            a, b = [1024.0] * Hq, [0.125] * Hq
        if len(a) != Hq:
            raise ValueError(f"moa: the plan has {len(a)} heads, q has Hq={Hq}")
        return head_spans(a, b, n_prompt + self.params["max_new_tokens"])

    def _estimate(self, q, k, causal, scale):
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        if Nq == 1 and Nk > 1:  # decode: first G and last W positions per head
            spans = self.spans(Hq, Nk - 1)
            rows = [np.unique(np.concatenate([np.arange(min(g, Nk)), np.arange(max(Nk - w, 0), Nk)])) for g, w in spans]
            K = max(r.size for r in rows)
            idx = np.full((B, Hq, 1, K), -1, np.int32)
            for h, r in enumerate(rows):
                idx[:, h, 0, :r.size] = r
            return TokenIndices(idx, 1, Nk, assume_sorted=True)
        spans = self.spans(Hq, Nk)
        nb = -(-Nk // BLOCK)
        m = np.arange(-(-Nq // BLOCK))[:, None]
        bcol = np.arange(nb)[None, :]
        blocks = np.zeros((B, Hq, m.shape[0], nb), bool)
        for h, (g, w) in enumerate(spans):
            if Nk <= BLOCK:
                keep = np.ones((m.shape[0], nb), bool)
            else:
                keep = (bcol <= m) & ((bcol < g // BLOCK) | (bcol >= m + 1 - w // BLOCK))
            blocks[:, h] = keep
        return BlockMask(blocks, BLOCK, BLOCK, Nq, Nk)


__all__ = ["MoA", "load_plan", "head_spans"]
