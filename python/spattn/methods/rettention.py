"""Re-ttention: a fixed band mask whose sparse-step output is reshaped by the softmax mass the band
held at the last full step, plus a cached correction.

Chen et al., "Re-ttention: Ultra Sparse Visual Generation via Attention Statistical Reshape",
arXiv 2505.22918 (NeurIPS 2025). Follows the official ``cccrrrccc/Re-ttention``
``module/pixart_processor.py`` / ``module/hunyuan_processor.py``
(``Rettention_AttnProcessor.__call__``, ``full_attention``, ``window_attention``,
``get_attention_scores_and_ratio``, ``get_attention_scores_with_denominator_ratio``,
``create_local_attention_mask``), see /shared/methods/stateful/rettention.md.

Per call (one denoising step of one layer; ``state.step`` counts them):

- mask: the 1-D band ``|i - j| <= int(N * sparsity) // 2`` (clipped at the edges, every head);
- ``step < full_steps``: exact attention;
- ``step % refresh_period == 0`` (from ``full_steps`` on; PixArt's ``[5, 10, 15]`` over 20 steps
  is ``full_steps=5, refresh_period=5``): exact attention ``O``; the ratio
  ``rho = exp(lse_band - lse_full)`` (the softmax mass inside the band, per (b, h, query)) and the
  correction ``C = O - rho * O_band`` (``O_band``: softmax over the band) are stored;
- otherwise: ``rho * O_band + C``, then ``rho += ratio_drift`` (0.04, the official hard-coded
  per-step drift, no clamp: rho may exceed 1).

``use_ratio=False`` is the official ablation (plain band softmax plus the correction
``C = O - O_band``). All attention runs on spattn's kernels (dense and window, with their LSEs).

Deviations, all numerical: the official code materialises the N x N scores in the model dtype
and adds -1e5 outside the band (exp(-1e5) is 0 in every float format, so it equals excluding
them); rho and C are float32 here. The official correction is taken after the output projection
``to_out`` (linear, bias cancels), so it equals ``C`` per head before it. CogVideoX's mask (text
rows/columns kept, the same in-frame window in every frame) is not built here: pass the band
parameters of PixArt / HunyuanDiT. When ``full_steps`` is not a multiple of ``refresh_period``
(the official code then fails at the first sparse step, having no correction yet), step
``full_steps`` is a refresh too. The returned LSE (``return_lse``) of a reuse step is ``lse_band - log(rho)``, the
normaliser the reshaped softmax uses (the correction term has none).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import as_causal, as_scale, check_int, check_qkv
from .. import _core
from ..kernels import attention, window_attention
from ..masks import BlockMask, WindowMask
from ..state import Schedule
from ._stateful import StatefulMethod
from .base import Capabilities, register


def band_half_width(n: int, sparsity: float) -> int:
    """Half width of the official band: ``int(n * sparsity) // 2`` (``create_local_attention_mask``
    with ``window_size = int(sequence_length * sparsity)``)."""
    return int(n * sparsity) // 2


def _check_real(value: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or x > hi or x < lo or (lo_open and x == lo):
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}], got {value}")
    return x


@register
class Rettention(StatefulMethod):
    """Re-ttention (stateful): band attention reshaped by the last full step's in-band mass ratio,
    plus a cached correction; dense warm-up and periodic full refreshes.

    Parameters
    ----------
    sparsity : float, default 0.03125
        Band width as a share of N: key j is kept for query i iff
        ``|i - j| <= int(N * sparsity) // 2`` (official default 3.125 %; some scripts use 0.0625).
    full_steps : int, default 5
        Warm-up steps run exact (PixArt 5 of 20, HunyuanDiT 10 of 50, CogVideoX 15 of 50).
    refresh_period : int, default 5
        Steps ``s >= full_steps`` with ``s % refresh_period == 0`` run exact and refresh the ratio
        and the correction (0: never after the first).
    ratio_drift : float, default 0.04
        Added to the ratio after every sparse step (the official constant).
    use_ratio : bool, default True
        False: the official ablation without the reshape (band softmax + correction).

    State (``method.state``): ``rho`` (B, Hq, N) and ``correction`` (B, Hq, N, Dv), float32.
    """

    name = "rettention"
    aliases = ("re-ttention",)
    paper = "Re-ttention: Ultra Sparse Visual Generation via Attention Statistical Reshape (Chen et al., 2025)"
    pattern = "1-D band + per-query mass-ratio reshape and cached correction across denoising steps (stateful)"
    extra_defaults = {"sparsity": 0.03125, "full_steps": 5, "refresh_period": 5, "ratio_drift": 0.04,
                      "use_ratio": True}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="window",
                                own_output=True, stateful=True)

    def _check_params(self) -> None:
        p = self.params
        _check_real(p["sparsity"], "sparsity", 0.0, 1.0)
        check_int(p["full_steps"], "full_steps")
        check_int(p["refresh_period"], "refresh_period")
        _check_real(p["ratio_drift"], "ratio_drift", -1.0, 1.0)
        if not isinstance(p["use_ratio"], (bool, np.bool_)):
            raise TypeError(f"use_ratio must be a bool, got {type(p['use_ratio']).__name__}")
        if p["full_steps"] == 0 and p["refresh_period"] == 0:
            raise ValueError("full_steps and refresh_period are both 0: the first step must be a full one")

    def schedule(self) -> Schedule:
        p = self.params
        # the first step after the warm-up refreshes when the period does not land on it
        first = () if p["refresh_period"] and p["full_steps"] % p["refresh_period"] == 0 else (p["full_steps"],)
        return Schedule(dense_steps=p["full_steps"], search_steps=first, refresh_period=p["refresh_period"])

    def _ready_to_reuse(self) -> bool:
        return "correction" in self.state

    def _window(self, n: int) -> WindowMask:
        h = band_half_width(n, self.params["sparsity"])
        return WindowMask(n, n, sinks=0, left=h, right=h)

    def _estimate(self, q, k, causal, scale) -> WindowMask:
        return self._window(q.shape[2])

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        """Run the current step of the schedule on (q, k, v) and advance it."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        phase = self._begin_step(q, k, v, causal, scale)
        st = self.state
        if phase == "reuse" and "correction" not in st:
            phase = self.last_info["phase"] = "search"
        B, Hq, N, _ = q.shape
        win = self._window(N)
        if phase == "reuse":
            ob, lse_b = window_attention(q, k, v, sinks=0, left=win.left, right=win.right, scale=scale,
                                         return_lse=True)
            if self.params["use_ratio"]:
                rho = st["rho"]
                out = rho[..., None] * ob + st["correction"]
                with np.errstate(divide="ignore"):
                    lse = (lse_b - np.log(rho)).astype(np.float32)
            else:
                out, lse = ob + st["correction"], lse_b
            st["rho"] = (st["rho"] + np.float32(self.params["ratio_drift"])).astype(np.float32)
            self.last_info["mask"] = win
        else:
            out, lse = attention(q, k, v, scale=scale, return_lse=True)
            if phase == "search":
                ob, lse_b = window_attention(q, k, v, sinks=0, left=win.left, right=win.right, scale=scale,
                                             return_lse=True)
                rho = np.exp(lse_b - lse).astype(np.float32)
                st["rho"] = rho
                st["correction"] = (out - (rho[..., None] * ob if self.params["use_ratio"] else ob)).astype(np.float32)
            self.last_info["mask"] = BlockMask.full(B, 1, N, N)
        out = np.ascontiguousarray(out, dtype=np.float32)
        self._end_step()
        return (out, np.ascontiguousarray(lse, dtype=np.float32)) if return_lse else out
