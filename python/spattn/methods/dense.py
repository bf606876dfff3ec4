"""Dense: exact attention, the baseline every method is measured against.

FlashAttention-style tiling (Dao et al., 2022) in the C++ core; no mask is read.
"""

from __future__ import annotations

from ..kernels import attention
from ..masks import BlockMask
from .._validation import check_positive_int
from .base import Capabilities, Method, register


@register
class Dense(Method):
    """Exact attention (the baseline every method is measured against).

    Parameters
    ----------
    block_size : int, default 64
        Block size of the full BlockMask ``estimate`` returns (for metrics only; the kernel
        reads no mask).
    """

    name = "dense"
    paper = "exact attention (FlashAttention-style tiling, Dao et al. 2022)"
    pattern = "all blocks"
    extra_defaults = {"block_size": 64}  # no C++ estimator: the full mask is built here
    capabilities = Capabilities(mask_format="none", exact=True)

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        bs = self.params["block_size"]
        return BlockMask.full(q.shape[0], 1, q.shape[2], k.shape[2], bs, bs)

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
