"""SparseD: dense attention for the first denoising steps, then per-head block masks with separate
top-k budgets for prompt and generation keys, searched once and reused for every later step.

Wang et al., "SparseD: Sparse Attention for Diffusion Language Models", arXiv 2509.24014
(ICLR 2026). Follows the official ``INV-WZQ/SparseD``: ``models/Dream/modeling_dream.py``
(``DreamAttention.forward``, between "Start SparseD" and "End SparseD"),
``models/Dream/SparseD_utils.py`` (``create_attention_block_mask``) and the defaults of
``dream_generation.py``; see /shared/methods/stateful/sparsed.md.

Per call (one denoising step of one layer; ``state.step`` is the official ``now_step``):

- ``step == 0`` starts a new generation (the stored mask is dropped);
- ``step <= end = int(whole_steps * skip) + 1``: exact attention;
- at ``step == end`` the mask is searched from this step's q, k (after RoPE: what the attention
  backend receives), per query head (GQA keys are shared, as after ``repeat_kv``), with
  ``nb = ceil(T / block_size)`` blocks and ``last`` the first query block ``idx`` with
  ``T - idx * block_size <= new_generation`` (else the final block):

  A. for every query block, the softmax over all keys, pooled per key block (the official mean
     of ``|P|`` over the zero-padded tile; the same order as the block sums used here), keeps
     its ``max(1, int(nb * select) + 1)`` largest key blocks; then every key block ``>= last``
     is cleared;
  B. the same over the generation keys ``K[last * block_size:]`` alone (their own softmax and
     budget ``max(1, int(nb_gen * select) + 1)``), OR-ed into the key blocks ``>= last``;

- ``step > end``: non-causal block-sparse attention with the stored mask.

Execution and the block sums come from spattn's kernels (``block_attention_map``, dense and
block-sparse attention); nothing else computes Q K^T. Deviations: the official block importance
is computed from P cast to the model dtype (bf16) and ``torch.topk(sorted=False)`` leaves ties
unspecified; here P is float32 and ties keep the lower key block. A budget above the number of
blocks (``select >= 1``, where ``torch.topk`` fails) keeps every block. The scale is the call's
(default 1/sqrt(D), as Dream; LLaDA's search divides by sqrt(num_heads), which the spec reads as
a bug).
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


def generation_start_block(T: int, block_size: int, new_generation: int) -> int:
    """The official ``last``: the first query block ``idx`` with ``T - idx * block_size <=
    new_generation``, else the final block."""
    nb = -(-T // block_size)
    for idx in range(nb):
        if T - idx * block_size <= new_generation:
            return idx
    return nb - 1


def _top_blocks(importance: np.ndarray, keep: int) -> np.ndarray:
    """Boolean map keeping the `keep` largest entries of each row (ties: lower index first)."""
    n = importance.shape[-1]
    keep = min(keep, n)
    order = np.argsort(-importance, axis=-1, kind="stable")[..., :keep]
    out = np.zeros(importance.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=-1)
    return out


def search_mask(q: np.ndarray, k: np.ndarray, *, block_size: int = 128, select: float = 0.3,
                new_generation: int = 128, scale: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """SparseD's two-region block-mask search on one step's (q, k).

    Returns the boolean map (B, Hq, nb, nb) and ``last`` (the first generation key block).
    """
    T = q.shape[2]
    nb = -(-T // block_size)
    last = generation_start_block(T, block_size, new_generation)
    pooled, _ = _core.block_attention_map(q, k, block_size, block_size, False, scale, "sum")
    blocks = _top_blocks(pooled, max(1, int(nb * select) + 1))
    blocks[..., last:] = False
    k_gen = np.ascontiguousarray(k[:, :, last * block_size:])
    pooled_gen, _ = _core.block_attention_map(q, k_gen, block_size, block_size, False, scale, "sum")
    n_gen = pooled_gen.shape[-1]
    blocks[..., last:] |= _top_blocks(pooled_gen, max(1, int(n_gen * select) + 1))
    return blocks, last


@register
class SparseD(StatefulMethod):
    """SparseD (stateful): dense warm-up, then one per-head block mask (prompt and generation keys
    with their own budgets) searched at the switch step and reused for all later steps.

    Parameters
    ----------
    skip : float, default 0.2
        Share of the steps run dense: steps ``0 .. int(whole_steps * skip) + 1``.
    select : float, default 0.3
        Keep ratio per query-block row in each key region (``int(n * select) + 1`` blocks; the
        README uses 0.5 with block_size 32 for short contexts).
    block_size : int, default 128
        Query and key block size of the mask.
    whole_steps : int, default 128
        Denoising steps of the generation (``--steps``).
    new_generation : int, default 128
        Generated tokens (``--seq_len``): the last ones of the sequence; key blocks from the
        first query block within them on are the generation region.

    State (``method.state``): ``mask`` (B, Hq, nb, nb) bool and ``last`` (scalar).
    """

    name = "sparsed"
    paper = "SparseD: Sparse Attention for Diffusion Language Models (Wang et al., 2025)"
    pattern = "per-head block top-k, prompt and generation keys budgeted apart, searched once after dense warm-up (stateful)"
    extra_defaults = {"skip": 0.2, "select": 0.3, "block_size": 128, "whole_steps": 128, "new_generation": 128}
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
        _check_real(p["skip"], "skip", 0.0, 1.0)
        _check_real(p["select"], "select", 0.0, 1.0)
        check_positive_int(p["block_size"], "block_size")
        check_int(p["whole_steps"], "whole_steps")
        check_int(p["new_generation"], "new_generation")

    def switch_step(self) -> int:
        """The official ``end_time = int(whole_steps * skip) + 1``: the last dense step, where the
        mask is searched."""
        return int(self.params["whole_steps"] * self.params["skip"]) + 1

    def schedule(self) -> Schedule:
        end = self.switch_step()
        return Schedule(dense_steps=end, search_steps=(end,))

    def _ready_to_reuse(self) -> bool:
        return "mask" in self.state

    def _search(self, q, k, scale) -> Tuple[np.ndarray, int]:
        p = self.params
        return search_mask(q, k, block_size=p["block_size"], select=p["select"],
                           new_generation=p["new_generation"], scale=scale)

    def _block_mask(self, blocks: np.ndarray, T: int) -> BlockMask:
        bs = self.params["block_size"]
        return BlockMask(blocks, bs, bs, T, T)

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        """The stored mask when the state holds one for these shapes, else the search on (q, k)
        (the state is not changed)."""
        T = q.shape[2]
        shape = self.state.meta.get("shape")
        if "mask" in self.state and shape is not None and shape[0] == list(q.shape) and shape[1] == list(k.shape):
            return self._block_mask(self.state["mask"], T)
        return self._block_mask(self._search(q, k, scale)[0], T)

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        """Run the current step of the schedule on (q, k, v) and advance it."""
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        st = self.state
        if st.step == 0:  # official: now_step == 0 starts a new generation
            st.arrays.clear()
        phase = self._begin_step(q, k, v, causal, scale)
        if phase == "reuse" and "mask" not in st:
            phase = self.last_info["phase"] = "search"
        B, Hq, T, _ = q.shape
        if phase == "reuse":
            mask = self._block_mask(st["mask"], T)
            if self._plan_of is not st.arrays["mask"]:
                self._plan, self._plan_of = plan(mask, q.shape, k.shape, causal=False), st.arrays["mask"]
            out, lse = block_sparse_attention(q, k, v, self._plan, scale=scale, return_lse=True)
            self.last_info["mask"] = mask
        else:
            out, lse = attention(q, k, v, scale=scale, return_lse=True)
            if phase == "search":
                blocks, last = self._search(q, k, scale)
                st["mask"], st["last"] = blocks, np.int64(last)
            bs = self.params["block_size"]
            self.last_info["mask"] = BlockMask.full(B, 1, T, T, bs, bs)
        self._end_step()
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        r = super().readouts()
        if "mask" in self.state:
            r["mask_density"] = float(np.mean(self.state["mask"]))
        return r


__all__ = ["SparseD", "search_mask", "generation_start_block"]
