"""SeNER's arrow attention: a symmetric band, a global first token, LogN scaling of its row.

SeNER (arXiv 2502.07286, AAAI 2025), THUDM/scholar-profiling ``sener/modeling_deberta.py``
``Arrow_Attention``; the band runs on :func:`spattn.kernels.window_attention`, the global row on
the dense kernel.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .._validation import as_causal, as_float_array, as_scale, check_int
from ..kernels import attention, window_attention
from ..masks import WindowMask
from .base import Capabilities, Method, register


@register
class SeNERArrow(Method):
    """SeNER's arrow-shaped attention, as ``Arrow_Attention`` builds it (THUDM/scholar-profiling,
    snapshot ed3a4be, ``sener/modeling_deberta.py``; every DeBERTa layer gets
    ``Arrow_Attention(config, 128)``):

    * query 0 (the global [CLS] token) attends every key, its logits multiplied by
      ``log(N_pad) / log(512)`` (LogN scaling; N_pad = N rounded up to a multiple of 2w, the
      length the official code pads to, 512 its pretraining length);
    * every other query i attends key 0 and the keys j with |i - j| <= w (the Longformer band,
      clipped at the sequence ends), key 0 counted once.

    Bidirectional (non-causal) self-attention, Nq == Nk, one pattern for every head.
    ``estimate`` returns the band + first column as a :class:`spattn.WindowMask` (what rows
    1..N-1 attend); the call adds the global row (dense, LogN-scaled) on top.

    Parameters
    ----------
    window : int, default 128
        One-sided window w (``one_sided_attn_window_size``).
    logn_scaling : bool, default True
    pretrain_len : int, default 512

    Notes
    -----
    Not reproduced: DeBERTa's disentangled relative-position terms (c2p / p2c, and the
    ``sqrt(D * 3)`` scale they come with) -- spattn takes q and k as given and scales by
    ``scale`` (default 1/sqrt(D)); the official LogN factor multiplies those terms too, it
    multiplies q.k here. Padding is not needed: the band is clipped at the true end.
    """

    name = "sener_arrow"
    paper = "SeNER, Arrow Attention with LogN scaling, AAAI 2025"
    pattern = "static: symmetric band of w + global first token (row and column), LogN-scaled global row"
    params_struct = None
    extra_defaults = {"window": 128, "logn_scaling": True, "pretrain_len": 512}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="window")

    def _check_params(self) -> None:
        self.params["window"] = check_int(self.params["window"], f"{self.name}: window", lo=1)
        self.params["pretrain_len"] = check_int(self.params["pretrain_len"], f"{self.name}: pretrain_len", lo=2)
        if not isinstance(self.params["logn_scaling"], (bool, np.bool_)):
            raise TypeError(f"{self.name}: logn_scaling must be a bool, got {self.params['logn_scaling']!r}")

    def logn_factor(self, n: int) -> float:
        """The factor of the global row's logits for a sequence of n tokens."""
        if not self.params["logn_scaling"]:
            return 1.0
        w2 = 2 * self.params["window"]
        n_pad = -(-n // w2) * w2
        return math.log(n_pad) / math.log(self.params["pretrain_len"])

    def _estimate(self, q, k, causal, scale) -> WindowMask:
        w = self.params["window"]
        return WindowMask(q.shape[2], k.shape[2], sinks=1, left=w, right=w)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
        causal, scale = as_causal(causal), as_scale(scale)
        self.check_call(q, k, causal)
        mask = self._estimate(q, k, causal, scale)
        w = self.params["window"]
        out, lse = window_attention(q, k, v, sinks=1, left=w, right=w, causal=False, scale=scale, return_lse=True)
        out, lse = np.array(out), np.array(lse)
        if q.shape[2] > 0:
            q0 = np.ascontiguousarray(q[:, :, :1] * np.float32(self.logn_factor(q.shape[2])))
            o0, l0 = attention(q0, k, v, causal=False, scale=scale, return_lse=True)
            out[:, :, :1], lse[:, :, :1] = o0, l0
        self.last_info = {"mask": mask, "logn_factor": self.logn_factor(q.shape[2])}
        return (out, lse) if return_lse else out


__all__ = ["SeNERArrow"]
