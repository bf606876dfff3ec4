"""ProxyAttn-like: block ranking from a pooled proxy head per GQA group, per-head dynamic budgets.

PROVISIONAL, FROM PAPER SUMMARIES, OFFICIAL CODE NOT READ: "ProxyAttn: Guided Sparse
Attention via Representative Heads", arXiv 2509.24745 (ICLR 2026); the official repository
(wyxstriker/ProxyAttn) was not available. The estimator is ``_core.estimate_proxyattn`` with its
parameters in ``_core.ProxyAttnParams``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .. import _core
from ..masks import BlockMask
from .base import Capabilities, Method, register


@register
class ProxyAttn(Method):
    """ProxyAttn-like block mask (provisional rule; official code not read).

    Written from the paper's abstract and third-party summaries only (see
    ``../shared/methods/prefill/proxyattn.md``, "Suggested provisional spec"); the grouping,
    pooling, score aggregation, budget rule and defaults are NOT verified against the authors'
    code. Per batch and GQA group (the query heads reading one kv head):

    1. proxy query = mean of the group's query heads (row by row); the proxy key is the kv head;
    2. proxy block scores ``W`` = the proxy's exact softmax probabilities summed over
       ``block_size x block_size`` tiles (the block-map statistics pass, causal or not);
    3. one shared ranking per group and query-block row: the visible key blocks by ``W``,
       descending (ties to the lower block);
    4. per head h, budget ``k_h`` = the smallest k such that head h's own mean attention mass
       (exact, over the rows of its last query block) on the proxy's top-k blocks of that last
       row reaches ``gamma`` (all blocks when it never does);
    5. head h keeps in every row the first ``min(k_h, visible)`` blocks of the row's proxy
       ranking, plus block column 0 and the diagonal block (not counted in the budget).

    The block-sparse kernel then applies the causal rule inside the blocks. ``last_info["budgets"]``
    holds the per-head budgets (B, Hq).

    Parameters
    ----------
    block_size : int, default 128
        Square block size of the proxy scores and of the mask (provisional).
    gamma : float, default 0.9
        Share of a head's last-block attention mass its budget must cover, in (0, 1]
        (provisional).

    Notes
    -----
    Cost: the proxy pass is an exact two-pass softmax over all query rows for every kv head
    (1/G of a dense attention's products, twice), plus each head's last query block. The paper
    reports a much cheaper estimate; its exact form (how many proxy heads, which queries) is
    unknown here. Prefill (Nq == Nk) only, causal or not.
    """

    name = "proxyattn"
    paper = ("ProxyAttn: Guided Sparse Attention via Representative Heads, ICLR 2026 "
             "(provisional: from paper summaries, official code not read)")
    pattern = ("GQA-group proxy head block ranking shared by the group, per-head budget from last-block mass; "
               "block 0 + diagonal")
    params_struct = _core.ProxyAttnParams
    capabilities = Capabilities(chunked=False, decode=False)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        blocks, budgets = _core.estimate_proxyattn(q, k, causal, scale, self.cparams)
        self.last_info = {"budgets": budgets}
        return BlockMask(blocks, bs, bs, q.shape[2], k.shape[2])

    def readouts(self) -> Dict[str, Any]:
        if not self.last_info:
            return {}
        return {"mean_budget": float(np.mean(self.last_info["budgets"]))}
