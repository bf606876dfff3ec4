"""Oracle top-k: the exact smallest set of kv blocks holding gamma of the attention mass.

An upper bound for every block estimator, not a practical method: it reads the exact
block-pooled attention map (``_core.estimate_oracle_topk``), so it is for evaluation only.
"""

from __future__ import annotations

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class OracleTopK(Method):
    """Exact per-(head, q-block) smallest set of kv blocks whose true attention mass reaches gamma.

    An upper bound, not a practical method: it reads the exact block-pooled attention map
    (mass of a block = sum of softmax probabilities over it, averaged over the q-block's rows
    that see a key). Ties go to the lower block index.

    Parameters
    ----------
    block_size : int, default 64
    gamma : float in (0, 1], default 0.9
    """

    name = "oracle_topk"
    paper = "oracle (exact block attention mass), upper bound for every estimator"
    pattern = "exact top blocks per q-block"
    params_struct = _core.OracleParams
    capabilities = Capabilities(exact_reference_only=True)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks = _core.estimate_oracle_topk(q, k, causal, scale, self.cparams)
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])
