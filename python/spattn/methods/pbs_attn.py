"""PBS-Attn: segment-wise key permutation, then block selection on the permuted keys.

Wang et al., "Sparser Block-Sparse Attention via Token Permutation", arXiv 2510.21270, 2025; the
estimator is ``_core.estimate_pbs_attn`` with its parameters in ``_core.PbsAttnParams``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .. import _core
from ..masks import BlockMask, PermutedBlockMask
from .base import Capabilities, Method, register


@register
class PbsAttn(Method):
    """Permuted Block-Sparse Attention, as the official ``permuted_block_sparse_attn_fwd`` runs it.

    Follows xinghaow99/pbs-attn (HEAD 8ce8e02): ``last_block_attn_sorting``
    (pbs_attn/src/permute_states.py), ``permuted_block_selection`` / ``first_token_mask``
    (pbs_attn/src/pbs.py), ``block_pooled_attn`` / ``select_blocks`` (pbs_attn/src/utils.py),
    the naive torch attention path and the HF patch's GQA (``repeat_kv``):

    0. ``L <= segment_size``: dense causal attention (the official SDPA fallback).
    1. Permutation: ``P = softmax(Q[L-b:] K[:nseg*S]^T / sqrt(D))`` over the keys of the
       ``nseg = L // S`` complete segments (no causal mask, tail keys excluded), importance = mean
       of P over the b rows; inside every segment the keys are sorted by importance, descending;
       the tail of ``L % S`` keys keeps its order. Queries are not permuted.
    2. Block selection on (Q, K permuted), both zero-padded to a multiple of b: candidate blocks
       are ``kb <= qb`` outside the query block's segment; mean-pooled (pad rows count)
       ``q . k / sqrt(D)``, softmax over the candidates, then the smallest descending prefix whose
       cumulative sum reaches ``threshold`` (nothing when none does); plus the permuted block that
       holds token 0 (``force_select_first_block``; the sort may move it out of block 0) and every
       block of the query block's own segment.
    3. Attention of each query over the keys of its block's selected permuted blocks, causal on
       original positions (key <= query).

    ``estimate`` returns a :class:`PermutedBlockMask`: the permutation ``perm`` (B, Hq, L)
    (``perm[p]`` = original position of the key at permuted position p) and the permuted block
    mask ``blocks`` (:class:`BlockMask` over permuted key blocks). Step 3 runs on
    :func:`spattn.kernels.permuted_block_attention`, which gathers each tile's keys by the
    permutation (memory: the permutation and the block map; ``to_token_indices()`` lists the keys
    per query block for inspection). ``last_info`` keeps ``perm``, ``blocks`` and ``dense`` (the
    fallback was taken).

    GQA as the official HF patch (``repeat_kv``): one permutation and one mask per query head,
    query head h reading kv head h // (Hq/Hkv).

    Parameters
    ----------
    block_size : int, default 128
        Block size b of the mask and of the query groups.
    segment_size : int, default 256
        Permutation segment S, a multiple of ``block_size``.
    threshold : float or sequence of float, default 0.9
        Cumulative threshold tau in (0, 1], one value or one per query head. 1 takes every
        candidate block (the official path for the int 1).
    force_select_first_block : bool, default True
        Select, for every query block, the permuted key block holding token 0.

    Notes
    -----
    Deviations from the official code: ties in the in-segment sort and in the block sort go to the
    lower index (torch's sorts are not stable; only exactly equal values tie); the pooled softmax
    is computed in double and rounded to float32 (official: float32), its cumulative sum compared
    in float32 as torch does; ``threshold=1.0`` (float) takes every candidate like the official
    int 1 (the official float 1.0 path depends on the float32 rounding of the cumsum); a
    user-given ``scale`` replaces 1/sqrt(D) in both estimation steps (the official code always
    uses 1/sqrt(D)). Causal prefill (Nq == Nk) only, as the official code asserts.
    """

    name = "pbs_attn"
    paper = "Wang et al., Sparser Block-Sparse Attention via Token Permutation (PBS-Attn), 2025"
    pattern = "segment-wise key permutation by last-block attention, pooled cumulative threshold on permuted blocks"
    params_struct = _core.PbsAttnParams
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="permuted")

    def _estimate(self, q, k, causal, scale) -> PermutedBlockMask:
        bs = self.params["block_size"]
        L = k.shape[2]
        perm, blocks, dense = _core.estimate_pbs_attn(q, k, causal, scale, self.cparams)
        mask = BlockMask(blocks, bs, bs, L, L)
        self.last_info = {"perm": perm, "blocks": mask, "dense": bool(dense)}
        return PermutedBlockMask(perm, mask)

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        blocks = self.last_info["blocks"].blocks
        return {"dense_fallback": self.last_info["dense"], "selected_blocks": float(np.mean(blocks.sum(axis=-1)))}
