"""AdaSpa: exact blockified softmax-mass search at a few denoising steps, head-adaptive block
budgets around the mean sparsity, forced text and first-frame blocks, the mask reused between
searches.

Xia et al., "Training-free and Adaptive Sparse Attention for Efficient Long Video Generation",
arXiv 2502.21079 (ICCV 2025). The authors' repository was not found; this follows the vendored
copy in ``flagos-ai/FlagScale`` ``flagscale/inference/core/diffusion/adaspa/``:
``adasparse/attn_func.py`` (``adaptive_sparse_attn``, ``search_block_mask``), the Triton search
kernels ``_flash_attn_triton_search`` / ``_flash_attn_triton_search_cache_lse`` and
``adasparse_args.py``; see /shared/methods/stateful/adaspa.md.

Per call (one denoising step of one layer; ``state.step`` is the official
``global_counter // num_layers % num_steps``, so the run restarts after ``num_steps`` calls):

- ``step < search_steps[0]``: exact attention (warm-up);
- ``step in search_steps``: the search. q and k are zero-padded to a multiple of ``block_size``
  (the padded keys are not masked, as in the official kernel: each adds ``exp(0 - lse)``) and
  ``W[I, J] = sum_{i in I, j in J} exp(s_ij - lse_i)`` is the exact softmax mass of every
  block. The first search takes ``lse`` from the same pass and stores it; a later search, with
  ``cache_lse``, uses the stored ``lse`` instead (the official one-pass cached search).
  Block selection (``select_blocks``): per (batch, head) ``round((1 - s) * M)`` key blocks per
  query-block row (``row_wise``; else ``round((1 - s) * M^2)`` over the whole map), with
  ``head_adaptive`` three levels: the heads whose recall at ``s_up = (1 + s) / 2`` reaches
  ``min_recall`` (at most ``B*H // 2``, best recall first) take ``s_up``, as many of the others
  with the lowest recall at ``s_down = (3 s - 1) / 2`` take ``s_down``, the rest ``s``. Then the
  first-frame rows and columns (``first_frame_len`` tokens), the text rows and columns (blocks
  from ``(N - text_len) // block_size`` on, ``text_sink``) and, with ``random_select``, 1 % of
  all entries drawn from the unselected ones are forced on;
- every step from ``search_steps[0]`` on runs block-sparse attention with the stored mask (the
  search step with its new mask).

The block masses come from spattn's ``block_attention_map`` (the cached-LSE search pools the
per-row masses of the same kernel, rescaled by ``exp(lse_now - lse_cached)``), execution from
the dense and block-sparse kernels; nothing else computes Q K^T. spattn's full search is already
one pass, so the cached search reproduces the official values rather than saving time here.

Deviations: the official W is float32 from bf16 inputs and ``torch.topk`` / ``torch.argsort``
leave ties unspecified; here ties keep the lower block / head index. ``random_select`` draws
from numpy's generator seeded by ``seed`` (official: ``torch.randperm``, unseeded). The
official wrapper moves CogVideoX's 226 leading text tokens to the end and truncates
Hunyuan/Wan padding; here the text is expected last (``text_len`` tokens) and nothing is
truncated. The official code needs Nq == Nk and MHA; GQA runs here (the mask is per query head).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from .._validation import as_causal, as_scale, check_int, check_positive_int, check_qkv
from .. import _core
from ..kernels import attention, block_sparse_attention, plan
from ..masks import BlockMask
from ..state import Schedule
from ._stateful import StatefulMethod
from .base import Capabilities, register
from .rettention import _check_real

_CHUNK_BLOCKS = 16  # query blocks per pass of the cached-LSE search (bounds its per-row buffer)


def _pad_rows(x: np.ndarray, length: int) -> np.ndarray:
    n = x.shape[2]
    if n == length:
        return np.ascontiguousarray(x)
    out = np.zeros(x.shape[:2] + (length,) + x.shape[3:], dtype=np.float32)
    out[:, :, :n] = x
    return out


def block_mass(q: np.ndarray, k: np.ndarray, block_size: int = 64, scale: Optional[float] = None,
               cached_lse: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The official search: exact softmax mass per (query block, key block) on zero-padded q, k.

    Returns ``(W, lse)``: W (B, Hq, M, M) float32 with M = ceil(N / block_size); lse (B, Hq, M *
    block_size), natural log, of this call's padded rows. With `cached_lse` (B, Hq, M *
    block_size; natural log) the masses are taken against it instead (the official
    ``_flash_attn_triton_search_cache_lse``); the returned lse is still this call's.
    """
    N = q.shape[2]
    M = -(-N // block_size)
    P = M * block_size
    qp, kp = _pad_rows(q, P), _pad_rows(k, P)
    if cached_lse is None:
        return _core.block_attention_map(qp, kp, block_size, block_size, False, scale, "sum")
    cached_lse = np.asarray(cached_lse, dtype=np.float32)
    if cached_lse.shape != (q.shape[0], q.shape[1], P):
        raise ValueError(f"cached_lse must have shape {(q.shape[0], q.shape[1], P)}, got {cached_lse.shape}")
    B, H = q.shape[:2]
    W = np.empty((B, H, M, M), dtype=np.float32)
    lse = np.empty((B, H, P), dtype=np.float32)
    for b0 in range(0, M, _CHUNK_BLOCKS):
        b1 = min(M, b0 + _CHUNK_BLOCKS)
        r0, r1 = b0 * block_size, b1 * block_size
        rows, l_now = _core.block_attention_map(np.ascontiguousarray(qp[:, :, r0:r1]), kp, 1, block_size, False,
                                                scale, "sum")
        rows *= np.exp(l_now - cached_lse[:, :, r0:r1])[..., None]
        W[:, :, b0:b1] = rows.reshape(B, H, b1 - b0, block_size, M).sum(axis=3)
        lse[:, :, r0:r1] = l_now
    return W, lse


def _keep_count(sparsity: float, n: int) -> int:
    """The official ``round((1.0 - s) * n)`` clipped to [0, n] (Python's round: half to even)."""
    return min(max(round((1.0 - sparsity) * n), 0), n)


def _top_mask(W: np.ndarray, sparsity: float, row_wise: bool) -> np.ndarray:
    """``row_wise_topk_mask_all``: the top round((1-s) M) blocks per row, or the top
    round((1-s) M^2) of the whole map; (X, M, M) -> bool (ties: lower index)."""
    X, M, _ = W.shape
    out = np.zeros(W.shape, dtype=bool)
    if _keep_count(sparsity, M) == 0:  # official: an empty mask whenever the per-row count is 0
        return out
    if row_wise:
        kk = _keep_count(sparsity, M)
        idx = np.argsort(-W, axis=-1, kind="stable")[..., :kk]
        np.put_along_axis(out, idx, True, axis=-1)
    else:
        kk = min(max(round((1.0 - sparsity) * M * M), 0), M * M)
        flat = out.reshape(X, M * M)
        idx = np.argsort(-W.reshape(X, M * M), axis=-1, kind="stable")[:, :kk]
        np.put_along_axis(flat, idx, True, axis=-1)
    return out


def _recall(W: np.ndarray, total: np.ndarray, sparsity: float, row_wise: bool) -> np.ndarray:
    """``compute_recall_for_sparsity_all``: chosen mass / (all mass + 1e-9) per head."""
    chosen = np.where(_top_mask(W, sparsity, row_wise), W, 0).sum(axis=(1, 2), dtype=np.float64)
    return chosen / (total + 1e-9)


def select_blocks(W: np.ndarray, sparsity: float = 0.8, min_recall: float = 0.9, *, head_adaptive: bool = True,
                  row_wise: bool = True) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """AdaSpa's block selection on the block masses W (B, H, M, M) (before the forced blocks).

    Returns the mask (B, H, M, M) bool and the per-(batch*head) level: ``{"level": int array
    (B*H,)}`` with 1 for s_up, -1 for s_down, 0 for s (all 0 without `head_adaptive`).
    """
    W = np.asarray(W, dtype=np.float32)
    B, H, M, _ = W.shape
    BH = B * H
    W3 = W.reshape(BH, M, M)
    level = np.zeros(BH, dtype=np.int64)
    if not head_adaptive:
        kk = min(max(round(M * M * (1 - sparsity)), 0), M * M)
        out = np.zeros((BH, M * M), dtype=bool)
        idx = np.argsort(-W3.reshape(BH, M * M), axis=-1, kind="stable")[:, :kk]
        np.put_along_axis(out, idx, True, axis=-1)
        return out.reshape(B, H, M, M), {"level": level}
    total = W3.sum(axis=(1, 2), dtype=np.float64)
    s_up = (1.0 + sparsity) / 2.0
    s_down = (3.0 * sparsity - 1.0) / 2.0
    rec_up = _recall(W3, total, s_up, row_wise)
    cand = np.nonzero(rec_up >= min_recall)[0]
    n_up = min(len(cand), BH // 2)
    heads_up = cand[np.argsort(-rec_up[cand], kind="stable")[:n_up]]
    left = np.setdiff1d(np.arange(BH), heads_up)
    rec_down = _recall(W3, total, s_down, row_wise)
    heads_down = left[np.argsort(rec_down[left], kind="stable")[:min(len(left), n_up)]]
    level[heads_up], level[heads_down] = 1, -1
    out = _top_mask(W3, sparsity, row_wise)
    out[heads_up] = _top_mask(W3[heads_up], s_up, row_wise)
    out[heads_down] = _top_mask(W3[heads_down], s_down, row_wise)
    return out.reshape(B, H, M, M), {"level": level}


def force_blocks(mask: np.ndarray, N: int, block_size: int, *, first_frame_len: int = 0, text_sink: bool = True,
                 text_len: int = 0, random_select: bool = False, seed: int = 0) -> np.ndarray:
    """The official forced blocks, in place on `mask` (B, H, M, M): first-frame rows and columns,
    text rows and columns from block ``(N - text_len) // block_size`` on, then 1 % random picks."""
    if first_frame_len > 0:
        fb = (first_frame_len - 1) // block_size + 1
        mask[..., :fb, :] = True
        mask[..., :, :fb] = True
    if text_sink:
        vb = (N - text_len) // block_size
        mask[..., vb:, :] = True
        mask[..., :, vb:] = True
    if random_select:
        free = np.flatnonzero(~mask)
        n = min(len(free), int(mask.size * 0.01))
        pick = np.random.default_rng(seed).permutation(len(free))[:n]
        mask.reshape(-1)[free[pick]] = True
    return mask


@register
class AdaSpa(StatefulMethod):
    """AdaSpa (stateful): dense warm-up, exact block softmax-mass searches at ``search_steps``
    (later ones against the first one's cached LSE), head-adaptive top-k with forced first-frame
    and text blocks, the block mask reused between searches.

    Parameters
    ----------
    sparsity : float, default 0.8
        Share of blocks dropped (the mean over heads with ``head_adaptive``).
    block_size : int, default 64
        Query and key block size.
    search_steps : tuple of int, default (10, 30)
        Steps that search; the steps before the first run dense.
    num_steps : int, default 50
        Steps of one generation: call ``num_steps`` starts a new run (the official step counter
        wraps).
    min_recall : float, default 0.9
        Recall at ``s_up`` a head needs to be sparsified further.
    head_adaptive, cache_lse, row_wise : bool, default True
        The official sparsity modes (the paper setting).
    first_frame_len : int, default 0
        Tokens of the first latent frame ((H/16)(W/16)); their block rows and columns are forced
        (0: off).
    text_sink : bool, default True
        Force the rows and columns from block ``(N - text_len) // block_size`` on (the text and
        any partial last block).
    text_len : int, default 0
        Text tokens at the end of the sequence.
    random_select : bool, default False
        Force 1 % of all blocks at random among the unselected ones (official mode, off here
        because it is unseeded there).
    seed : int, default 0
        Seed of ``random_select``.

    State (``method.state``): ``mask`` (B, Hq, M, M) bool and, with ``cache_lse``, ``lse``
    (B, Hq, M * block_size) float32 natural log (the official base-2 LSE times ln 2).
    """

    name = "adaspa"
    paper = "Training-free and Adaptive Sparse Attention for Efficient Long Video Generation (Xia et al., 2025)"
    pattern = ("exact block softmax-mass top-k, head-adaptive budgets, forced text / first-frame blocks, "
               "searched at steps 10 and 30 (cached LSE) and reused (stateful)")
    extra_defaults = {"sparsity": 0.8, "block_size": 64, "search_steps": (10, 30), "num_steps": 50,
                      "min_recall": 0.9, "head_adaptive": True, "cache_lse": True, "row_wise": True,
                      "first_frame_len": 0, "text_sink": True, "text_len": 0, "random_select": False, "seed": 0}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, mask_format="block",
                                own_output=True, stateful=True)

    def __init__(self, **params: Any):
        self._plan = None
        self._plan_of = None
        super().__init__(**params)

    def __getstate__(self) -> Dict[str, Any]:  # copies (the transformers backend) drop the compiled plan
        d = dict(self.__dict__)
        d["_plan"] = d["_plan_of"] = None
        return d

    def _check_params(self) -> None:
        p = self.params
        _check_real(p["sparsity"], "sparsity", 0.0, 1.0)
        _check_real(p["min_recall"], "min_recall", 0.0, 1.0)
        check_positive_int(p["block_size"], "block_size")
        check_positive_int(p["num_steps"], "num_steps")
        check_int(p["first_frame_len"], "first_frame_len")
        check_int(p["text_len"], "text_len")
        check_int(p["seed"], "seed")
        for flag in ("head_adaptive", "cache_lse", "row_wise", "text_sink", "random_select"):
            if not isinstance(p[flag], (bool, np.bool_)):
                raise TypeError(f"{flag} must be a bool, got {type(p[flag]).__name__}")
        steps = p["search_steps"]
        if not isinstance(steps, (tuple, list)) or not steps:
            raise TypeError(f"search_steps must be a non-empty tuple of ints, got {steps!r}")
        for s in steps:
            check_int(s, "search_steps")
        if max(steps) >= p["num_steps"]:
            raise ValueError(f"search_steps must lie below num_steps={p['num_steps']}, got {tuple(steps)}")

    def schedule(self) -> Schedule:
        steps = tuple(sorted(int(s) for s in self.params["search_steps"]))
        return Schedule(dense_steps=steps[0], search_steps=steps)

    def _ready_to_reuse(self) -> bool:
        return "mask" in self.state

    def search(self, q, k, scale, cached_lse: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, Dict]:
        """One search on (q, k): (mask (B, Hq, M, M), this call's padded LSE, selection info)."""
        p = self.params
        W, lse = block_mass(q, k, p["block_size"], scale, cached_lse)
        mask, info = select_blocks(W, p["sparsity"], p["min_recall"], head_adaptive=p["head_adaptive"],
                                   row_wise=p["row_wise"])
        force_blocks(mask, q.shape[2], p["block_size"], first_frame_len=p["first_frame_len"],
                     text_sink=p["text_sink"], text_len=p["text_len"], random_select=p["random_select"],
                     seed=p["seed"])
        return mask, lse, info

    def _block_mask(self, blocks: np.ndarray, N: int) -> BlockMask:
        bs = self.params["block_size"]
        return BlockMask(blocks, bs, bs, N, N)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        """The stored mask when the state holds one for these shapes, else a full search on (q, k)
        (the state is not changed)."""
        shape = self.state.meta.get("shape")
        if "mask" in self.state and shape is not None and shape[0] == list(q.shape) and shape[1] == list(k.shape):
            return self._block_mask(self.state["mask"], q.shape[2])
        return self._block_mask(self.search(q, k, scale)[0], q.shape[2])

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        """Run the current step of the schedule on (q, k, v) and advance it."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        st = self.state
        if st.step >= self.params["num_steps"]:  # official: the step counter wraps, a new generation
            st.reset()
        phase = self._begin_step(q, k, v, causal, scale)
        if phase == "reuse" and "mask" not in st:
            phase = self.last_info["phase"] = "search"
        B, Hq, N, _ = q.shape
        if phase == "dense":
            out, lse = attention(q, k, v, scale=scale, return_lse=True)
            self.last_info["mask"] = BlockMask.full(B, 1, N, N, self.params["block_size"], self.params["block_size"])
        else:
            if phase == "search":
                cached = st.get("lse") if self.params["cache_lse"] else None
                mask, lse_now, info = self.search(q, k, scale, cached)
                st["mask"] = mask
                if self.params["cache_lse"] and cached is None:
                    st["lse"] = lse_now
                self.last_info["levels"] = info["level"]
            mask = self._block_mask(st["mask"], N)
            if self._plan_of is not st.arrays["mask"]:
                self._plan, self._plan_of = plan(mask, q.shape, k.shape, causal=False), st.arrays["mask"]
            out, lse = block_sparse_attention(q, k, v, self._plan, scale=scale, return_lse=True)
            self.last_info["mask"] = mask
        self._end_step()
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        r = super().readouts()
        if "mask" in self.state:
            r["mask_density"] = float(np.mean(self.state["mask"]))
        if "levels" in self.last_info:
            lv = self.last_info["levels"]
            r["heads_up_mid_down"] = [int(np.sum(lv == 1)), int(np.sum(lv == 0)), int(np.sum(lv == -1))]
        return r


__all__ = ["AdaSpa", "block_mass", "select_blocks", "force_blocks"]
