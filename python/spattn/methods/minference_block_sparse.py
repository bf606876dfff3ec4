"""MInference block-sparse: top blocks of mean-pooled q . k scores per query-block row.

Jiang et al., "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse
Attention", NeurIPS 2024; the estimator is ``_core.estimate_minference_block_sparse`` with its
parameters in ``_core.MInferenceBlockSparseParams``.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class MInferenceBlockSparse(Method):
    """MInference's block-sparse pattern, as the official ``block_sparse_attention`` builds it.

    Follows microsoft/MInference ``_build_block_index`` and ``block_sparse_attention``
    (minference/ops/block_sparse_flash_attention.py, HEAD fb56c91):

    1. q and k are zero-padded by ``block_size - (L mod block_size)`` rows (a whole extra block
       when L is a multiple of the block) and mean-pooled per block, padding rows counted;
    2. pooled scores ``qp . kp^T`` (no 1/sqrt(D)), future blocks excluded;
    3. ``top_k' = min(top_k, L_pad / block_size)``; query-block row m keeps the first
       ``min(m + 1, top_k')`` of its top-k' block indices sorted ascending, so rows m < top_k'
       keep every block 0..m and later rows their top_k' best blocks. No block is forced (no
       diagonal, no sink);
    4. the block-sparse kernel applies the causal rule inside the blocks.

    GQA as the official callers (``repeat_kv``): one mask per query head, query head h pooled
    against kv head h // (Hq/Hkv).

    Parameters
    ----------
    top_k : int, default 100
        Blocks per query-block row (the official kernel uses 100).
    block_size : int, default 64
        Pooling and mask block size (official 64).

    Notes
    -----
    Deviations: float32 where the official code runs fp16/bf16; ties among equal pooled scores
    go to the lower block index (torch.topk leaves them unspecified). An older revision of the
    official code (2cd80ca) padded nothing when L is a multiple of the block; HEAD pads a full
    block. The mask is the same either way (top_k' only differs when top_k >= the number of real
    blocks, and then every row keeps all its blocks). Causal prefill (Nq == Nk) only, as in the
    official code.
    """

    name = "minference_block_sparse"
    paper = "Jiang et al., MInference 1.0, NeurIPS 2024 (block-sparse pattern)"
    pattern = "top-k blocks per row of mean-pooled q.k scores"
    params_struct = _core.MInferenceBlockSparseParams
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks = _core.estimate_minference_block_sparse(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])
