"""NATTEN: 1D neighbourhood attention on (B, H, N, D) as a registry method.

Hassani et al., "Neighborhood Attention Transformer", CVPR 2023, with the stride of "Generalized
Neighborhood Attention" (2025); semantics of SHI-Labs/NATTEN's ``na1d`` (see
:mod:`spattn.neighborhood`). The multi-dimensional forms (images, video) are
:func:`spattn.na2d` / :func:`spattn.na3d`; this entry is the 1D form the method harnesses can run.
"""

from __future__ import annotations

import numpy as np

from .._validation import check_int
from ..masks import TokenIndices
from ..neighborhood import na_mask
from .base import Capabilities, Method, register


@register
class Natten(Method):
    """1D neighbourhood attention (NATTEN ``na1d``), compiled to TokenIndices.

    Parameters
    ----------
    kernel_size : int, default 1024
        Keys per query (NATTEN has no default; 1024 matches the streaming entry's window). A
        sequence shorter than the kernel is covered whole (NATTEN would refuse it); ``stride``
        is then capped at the kernel.
    dilation : int, default 1
        Dilation (keys of the query's residue class); kernel_size * dilation must fit the sequence.
    stride : int, default 1
        GNA stride, 1 <= stride <= kernel_size.

    With ``causal=True`` the window ends at the query (NATTEN ``is_causal=True``). ``estimate``
    compiles the pattern to TokenIndices (for the metrics); the call runs the dedicated in-place
    kernel :func:`spattn.na1d` (``layout="heads_first"``), which gives the same result without
    the O(N * kernel_size) indices.
    """

    name = "natten"
    paper = "Hassani et al., Neighborhood Attention Transformer, CVPR 2023 (+ GNA stride, 2025)"
    pattern = "1D neighbourhood (shifted window of kernel_size keys; dilation, stride, causal)"
    params_struct = None
    extra_defaults = {"kernel_size": 1024, "dilation": 1, "stride": 1}
    capabilities = Capabilities(chunked=False, decode=False, mask_format="token")

    def _check_params(self) -> None:
        for name in ("kernel_size", "dilation", "stride"):
            self.params[name] = check_int(self.params[name], f"{self.name}: {name}", lo=1)
        if self.params["stride"] > self.params["kernel_size"]:
            raise ValueError(f"{self.name}: stride must be <= kernel_size={self.params['kernel_size']}, "
                             f"got {self.params['stride']}")

    def __call__(self, q, k, v, *, causal: bool = False, scale=None, return_lse: bool = False):
        from .._validation import as_causal, as_float_array
        from ..neighborhood import na1d

        q, k = as_float_array(q, "q"), as_float_array(k, "k")
        causal = as_causal(causal)
        self.check_call(q, k, causal)
        N = q.shape[2]
        if N == 0:
            return super().__call__(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
        kernel = min(self.params["kernel_size"], N)
        stride = min(self.params["stride"], kernel)
        return na1d(q, k, v, kernel, dilation=self.params["dilation"], stride=stride, is_causal=causal, scale=scale,
                    layout="heads_first", return_lse=return_lse)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, N, _ = q.shape
        if N == 0:
            return TokenIndices(np.zeros((B, Hq, 0, 0), np.int32), 1, 0)
        kernel = min(self.params["kernel_size"], N)
        stride = min(self.params["stride"], kernel)
        return na_mask((N,), kernel, self.params["dilation"], stride, causal, batch=B, heads=Hq)
