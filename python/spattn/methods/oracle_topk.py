"""Oracle top-k: the exact smallest set of kv blocks holding gamma of the attention mass.

An upper bound for every block estimator, not a practical method: it reads the exact
block-pooled attention map (``_core.estimate_oracle_topk``), so it is for evaluation only.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from .._validation import check_positive_int, check_scale
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
    defaults = {"block_size": 64, "gamma": 0.9}
    capabilities = Capabilities(exact_reference_only=True)

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")
        g = self.params["gamma"]
        if not isinstance(g, (float, int, np.floating)) or not 0 < float(g) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {g!r}")

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        p = self.params
        blocks = _core.estimate_oracle_topk(q, k, causal, check_scale(scale, q.shape[3]),
                                            p["block_size"], float(p["gamma"]))
        return BlockMask(blocks, p["block_size"], p["block_size"], q.shape[2], k.shape[2])
