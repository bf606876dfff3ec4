"""HiP attention: hierarchically pruned top-k key blocks per query block.

Lee et al., "A Training-Free Sub-quadratic Cost Transformer Model Serving Framework With
Hierarchically Pruned Attention", ICLR 2025 (arXiv 2406.09827), following the authors' v1.0 code
(DeepAuto-AI/hip-attention ``hip_attn/v1_0``). The estimator is ``_core.estimate_hip``
(cpp/src/estimators/hip.cpp) with its parameters in ``_core.HipParams``; attention runs on the
token-sparse kernel.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from .. import _core
from .._validation import as_causal, as_scale, check_qkv
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register


@register
class Hip(Method):
    """HiP's tree-searched key blocks, as the official v1.0 ``hip_attention`` computes them.

    Per query head and block of ``block_size_q`` queries starting at ``b0``, with ``tsrc`` = the keys
    searched (``min(b0 + max(bq, bk) + Nk - Nq, Nk)``; ``Nk`` when not causal) (``hip_attention_mask``
    and ``masking_iteration``):

    1. nodes = key blocks of ``block_size_k`` at the width ``w = round(w_start / scale_up)`` with
       ``w_start = ceil(mask_k * scale_up)``: nodes ``0 .. ceil(min(tsrc, w) / bk) - 1``;
    2. while ``w < tsrc``: ``w' = min(w * scale_up, tsrc)``; node ``j`` at resolution
       ``b = ceil(w / bk)`` splits into children ``floor(j b' / b) .. floor((j + 1) b' / b) - 1`` at
       ``b' = ceil(w' / bk)``; a child ``c`` is scored by its first key block ("first" sampling)
       ``t = floor(c tsrc / b')`` (clamped, rounded down to a multiple of bk): the max of
       ``q_i . k_t'`` over ``t' in [t, t + bk)`` and the scoring rows (every ``reduce_stride``-th query of
       the block, the official row layout), pairs with ``i + Nk - Nq < t' + max(0, window - bq - bk)``
       ignored when causal; the ``max(n_patches / bk, floor(min(1, (mask_k / bk) / ceil(tsrc / bk)) b'))``
       best children are kept (``_masking_iteration_topk``);
    3. final node ``j`` becomes the key block ``col = ceil(j tsrc / (bk ceil(tsrc / bk)))``, pushed to
       at least the previous col + 1 (``safe_indices``);
    4. attended keys: ``num_sink * bk`` sink keys, the selected blocks and the ``sliding_window_size``
       keys before the block's end (``calc_prob_return_context``); the kernel applies the causal rule.

    With ``estimator_lower_resolution = r > 1`` (used when ``ceil(mask_k / bk) > 64``, as the official)
    the search runs with ``mask_k``, ``w_start`` and ``n_patches`` divided by ``r`` and each result is
    repeated ``r`` times before step 3. Causal prompts (``Nq > 32``) attend densely for their first
    ``dense_queries_exp - Nk + Nq`` queries (``dense_queries_exp`` default
    ``int((log2(Nk / mask_k / 2) mask_k + mask_k) 3)``: 693 of 700 queries at Nk = 700, 9216 at
    32k), where the mask rows hold the whole causal prefix.

    ``estimate`` returns TokenIndices with ``group_size = min(block_size_q, next_pow2(sparse queries))``;
    ``last_info`` holds ``mask``, ``ks`` (B, Hq, groups: selected leaves of bk keys per group, the
    official ``ks``; -1 for dense-prefix groups) and ``dense_queries``.

    Parameters
    ----------
    mask_k : int, default 512
    block_size_q : int, default 32
    block_size_k : int, default 2
    scale_up : int, default 2
    reduce_stride : int, default 2
    sliding_window_size : int, default 128
        0 turns off the window and the sink (the official ``using_sliding_window=False``).
    num_sink : int or None, default None
        Sink blocks of ``block_size_k`` keys; None: the official ``ceil(32 / block_size_k)``.
    dense_queries_exp : int or None, default None
        None: the official formula above; 0: no dense prefix.
    estimator_lower_resolution : int, default 2

    Notes
    -----
    Deviations from the official code: node, representative and column positions in exact integer
    arithmetic (the official float32/float64 locations can move one by a position); the top-k keeps,
    as the official cumsum slots, the first ``k - 1`` children at or above the k-th largest score in
    position order, and its last slot (written by several children in an unspecified order on the GPU)
    goes to the best of the rest; children whose every scoring pair is ignored rank after all others, by
    their largest dot product (the official scores them ``32000 - dot`` in float32 against padding
    slots scored 32000, and with ``reduce_stride > 1`` runs its top-k even when every child is kept: such
    a child with a negative largest dot then loses its slot to a padding entry of location 0, which the
    column collision rule turns into the block after the last selected one; spattn keeps the child.
    These children lie in the ignored band just before the block's end, inside the sliding window);
    float32 dot products (the official: fp16 tensor-core
    products of max-scaled q and k); the dense prefix is rounded up to a whole query block so groups
    stay aligned (when every query is dense the groups are ``min(block_size_q, next_pow2(Nq))``);
    ``scale_up`` is an integer (the official float, default 2); a block whose search never iterates (``tsrc <= w``) keeps all its nodes (the
    official leaves its ``ws``/``ks`` uninitialised). Not ported: SparQ (``enable_sparq``, on by default
    officially only for ``mask_k / bk >= 128`` and ``Nk >= 2048``), the default "random" sampling (the
    deterministic "first" is used), and the grid-strided search of the official short-query path
    (``Nq <= 32``, decode included: 16 interleaved sub-searches; here the prompt search runs, with
    ``block_size_q = min(bq, next_pow2(Nq))`` as the official). ``Nq > Nk`` is refused, as the official
    asserts. GQA: query head ``h``
    reads kv head ``h // (Hq / Hkv)``, selection per query head, as the official
    ``KV_REPEAT_INTERLEAVE``.
    """

    name = "hip"
    aliases = ("hip_attention",)
    paper = ("Lee et al., A Training-Free Sub-quadratic Cost Transformer Model Serving Framework With "
             "Hierarchically Pruned Attention (HiP), ICLR 2025")
    pattern = "per 32-query block: tree-searched top-512 keys (2-token leaves) + 32 sink + 128 window; dense prefix"
    params_struct = _core.HipParams
    capabilities = Capabilities(mask_format="token")

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        idx, group_size, ks, dense = _core.estimate_hip(q, k, causal, self.cparams)
        mask = TokenIndices(idx, group_size, k.shape[2], assume_sorted=True)
        self.last_info = {"mask": mask, "ks": ks, "dense_queries": dense}
        return mask

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False,
                 q_gate=None, k_gate=None):
        """HiP's attention: the dense prefix's queries by the dense kernel (reading their causal key
        range in place), the others by the token-sparse kernel over their searched keys; equal to
        the token-sparse kernel over ``estimate``'s mask, without its prefix rows (each as wide as
        the prefix's key range: O(N^2 / block_size_q) indices at 32k)."""
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        idx, group_size, ks, dense = _core.estimate_hip(q, k, causal, self.cparams, False)
        Nq, Nk = q.shape[2], k.shape[2]
        self.last_info = {"ks": ks, "dense_queries": dense}
        if dense == 0:
            return token_sparse_attention(q, k, v, TokenIndices(idx, group_size, Nk, assume_sorted=True),
                                          causal=causal, scale=scale, return_lse=return_lse)
        # the prefix (causal only): rows r < dense see keys [0, r + Nk - Nq], the first dense + Nk - Nq keys in place
        o1, l1 = attention(q[:, :, :dense], k, v, kv_len=dense + Nk - Nq, causal=True, scale=scale, return_lse=True)
        if dense == Nq:
            return (o1, l1) if return_lse else o1
        rest = TokenIndices(np.ascontiguousarray(idx[:, :, dense // group_size:]), group_size, Nk, assume_sorted=True)
        o2, l2 = token_sparse_attention(q[:, :, dense:], k, v, rest, causal=True, scale=scale, return_lse=True)
        out = np.concatenate([o1, o2], axis=2)
        return (out, np.concatenate([l1, l2], axis=2)) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        ks = self.last_info["ks"]
        return {"dense_queries": int(self.last_info["dense_queries"]),
                "mean_ks": float(np.mean(ks[ks >= 0])) if (ks >= 0).any() else 0.0}


__all__ = ["Hip"]
