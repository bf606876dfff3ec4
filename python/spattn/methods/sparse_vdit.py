"""Sparse-vDiT: per-head static patterns (diagonal, multi-diagonal, vertical stripe, skip, dense)
chosen offline by an error-bounded, cost-aware search.

Chen et al., "Sparse-vDiT: Unleashing the Power of Sparse Attention to Accelerate Video
Diffusion Transformers", arXiv 2506.03065, 2025. **No official code exists** (the repository
Peyton-Chen/Sparse-vDiT holds only a README at a6eb7ea): every rule here is a paper-level reading
(see /shared/methods/structured/sparse_vdit.md), not a port.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .._validation import as_causal, as_scale, check_qkv
from .. import _core
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

TAGS = ("diag", "multidiag", "vstripe", "skip", "dense")
_KEYS = {"diag": {"w"}, "multidiag": {"w", "tokens_per_frame", "frames"}, "vstripe": {"w", "cols"},
         "skip": set(), "dense": set()}


def check_spec(spec: Any, where: str = "pattern") -> Dict[str, Any]:
    """A head pattern as a normalised dict (ValueError/TypeError naming the field otherwise).

    ``{"tag": "diag", "w": w}``: key j visible to the query at position p iff ``|j - p| <= w``.
    ``{"tag": "multidiag", "w": w, "tokens_per_frame": T, "frames": M}``: iff ``|j - p - m T| <= w``
    for some ``|m| <= M`` (the same spatial position in the M neighbouring frames).
    ``{"tag": "vstripe", "w": w, "cols": [...]}``: iff j is one of ``cols`` or ``|j - p| <= w``.
    ``{"tag": "skip"}``: the head's output is 0. ``{"tag": "dense"}``: every key.
    """
    if not isinstance(spec, dict):
        raise TypeError(f"{where} must be a dict with a 'tag', got {type(spec).__name__}")
    tag = spec.get("tag")
    if tag not in TAGS:
        raise ValueError(f"{where}: tag must be one of {TAGS}, got {tag!r}")
    extra = set(spec) - {"tag"} - _KEYS[tag]
    missing = _KEYS[tag] - set(spec)
    if extra or missing:
        raise ValueError(f"{where}: a {tag!r} pattern takes {sorted(_KEYS[tag])}; "
                         f"missing {sorted(missing)}, unknown {sorted(extra)}")
    out: Dict[str, Any] = {"tag": tag}
    for name, lo in (("w", 0), ("tokens_per_frame", 1), ("frames", 0)):
        if name in spec:
            val = spec[name]
            if isinstance(val, (bool, np.bool_)) or not isinstance(val, (int, np.integer)):
                raise TypeError(f"{where}: {name} must be an int, got {type(val).__name__}")
            if not lo <= int(val) < 2 ** 31:
                raise ValueError(f"{where}: {name} must lie in [{lo}, 2**31), got {val}")
            out[name] = int(val)
    if "cols" in spec:
        cols = np.asarray(spec["cols"])
        if cols.ndim != 1 or (cols.size and not np.issubdtype(cols.dtype, np.integer)):
            raise TypeError(f"{where}: cols must be a 1-d list of ints")
        if cols.size and (cols.min() < 0 or cols.max() >= 2 ** 31):
            raise ValueError(f"{where}: cols must be key positions >= 0")
        out["cols"] = sorted({int(c) for c in cols})
    return out


def _offsets(spec: Dict[str, Any]) -> np.ndarray:
    """Sorted distinct key offsets j - p of a band pattern."""
    band = np.arange(-spec["w"], spec["w"] + 1, dtype=np.int64)
    if spec["tag"] == "multidiag":
        m = np.arange(-spec["frames"], spec["frames"] + 1, dtype=np.int64) * spec["tokens_per_frame"]
        band = (m[:, None] + band[None, :]).ravel()
    return np.unique(band)


def head_keys(spec: Dict[str, Any], Nq: int, Nk: int) -> np.ndarray:
    """(Nq, K) key positions of a diag / multidiag / vstripe head, -1 where out of range (rows
    unsorted when stripes are added; TokenIndices sorts and deduplicates)."""
    p = np.arange(Nq, dtype=np.int64)[:, None] + (Nk - Nq)
    keys = p + _offsets(spec)[None, :]
    if spec["tag"] == "vstripe":
        cols = np.asarray([c for c in spec["cols"] if c < Nk], np.int64)
        keys = np.concatenate([np.broadcast_to(cols, (Nq, cols.size)), keys], axis=1)
    return np.where((keys >= 0) & (keys < Nk), keys, -1)


@dataclass
class SearchResult:
    """What :func:`search` returns.

    plan : list of dict, one pattern per query head.
    choice : (Hq,) int, the index of the chosen candidate per head.
    errors, costs : (Hq, n_candidates) float, relative MSE of each candidate's head output and its cost.
    order : (Hq,) int, the heads sorted by tag (stable), for fused execution: ``q[:, order]``.
    """

    plan: List[Dict[str, Any]]
    choice: np.ndarray
    errors: np.ndarray
    costs: np.ndarray
    order: np.ndarray


@register
class SparseVDiT(Method):
    """Per-head static attention patterns of video DiTs (paper-level; no official code exists).

    Each query head follows one pattern of ``plan`` (a list of dicts, one per query head, see
    :func:`check_spec`): DIAG(w) band, MULTIDIAG(w, offsets m * tokens_per_frame for |m| <= frames),
    VSTRIPE(cols) unioned with DIAG(w), SKIP (head output 0), DENSE. Positions are bottom-right
    aligned (query i sits at p = i + Nk - Nq) and ``causal`` adds the rule j <= p (the 1-D causal
    form). Without a plan every head is DIAG(``window``).

    Execution is token-exact: one call of the token-sparse kernel for every band / stripe head
    (the heads fused in one launch; bands are contiguous key runs the kernel reads in place), the
    DENSE heads on the dense kernel, SKIP heads set to 0. No Nq x Nk buffer is built by
    ``__call__``. ``estimate`` returns :class:`TokenIndices` (group_size 1) with the keys of every
    head; DENSE heads list every key (K = Nk: an Nq x Nk index array, meant for metrics on
    moderate sizes) and SKIP heads none. Because SKIP heads give 0 rather than attention over an
    empty mask, the method declares ``own_output`` (its mask is the output's support);
    ``last_info["mask"]`` records the executed mask when the plan has no DENSE head (with DENSE
    heads it is left out rather than built).

    :func:`search` is the paper's offline sparse-diffusion search on captured (q, k, v).

    Parameters
    ----------
    plan : list of dict, optional
        One pattern per query head (``to_dict`` / ``from_dict`` round-trip it as JSON).
    window : int, default 64
        Band half-width w of the default DIAG plan (a proposal: the paper gives no number).

    Notes
    -----
    Paper-level throughout: band widths, frame offsets, stripe columns, how SKIP is applied
    (here: output 0, before any output projection) and the cost model are not published. Text
    tokens, if any, are ordinary positions (give them as stripe columns).
    """

    name = "sparse_vdit"
    paper = "Chen et al., Sparse-vDiT: Sparse Attention to Accelerate Video Diffusion Transformers, 2025"
    pattern = "per-head static diagonal / multi-diagonal / vertical-stripe / skip / dense, chosen by offline search"
    extra_defaults = {"plan": None, "window": 64}
    capabilities = Capabilities(mask_format="token", own_output=True)

    def _check_params(self) -> None:
        p = self.params
        w = p["window"]
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)):
            raise TypeError(f"sparse_vdit: window must be an int, got {type(w).__name__}")
        if not 0 <= int(w) < 2 ** 31:
            raise ValueError(f"sparse_vdit: window must lie in [0, 2**31), got {w}")
        if p["plan"] is not None:
            if not isinstance(p["plan"], (list, tuple)) or not p["plan"]:
                raise TypeError("sparse_vdit: plan must be a non-empty list of dicts, one per query head")
            p["plan"] = [check_spec(s, f"plan[{h}]") for h, s in enumerate(p["plan"])]

    def head_plan(self, Hq: int) -> List[Dict[str, Any]]:
        """The pattern of every query head for a call with Hq heads."""
        plan = self.params["plan"]
        if plan is None:
            return [{"tag": "diag", "w": int(self.params["window"])}] * Hq
        if len(plan) != Hq:
            raise ValueError(f"sparse_vdit: plan has {len(plan)} head patterns, q has Hq={Hq} heads")
        return plan

    def to_dict(self) -> Dict[str, Any]:
        """The plan and window as a JSON-ready dict."""
        return {"window": int(self.params["window"]), "plan": copy.deepcopy(self.params["plan"])}

    @classmethod
    def from_dict(cls, d: Union[Dict[str, Any], str]) -> "SparseVDiT":
        """A method from :meth:`to_dict`'s dict (or its JSON text)."""
        if isinstance(d, str):
            d = json.loads(d)
        return cls(**d)

    def _indices(self, plan, B: int, Nq: int, Nk: int, dense_rows: bool) -> TokenIndices:
        per_head = []
        for spec in plan:
            if spec["tag"] in ("diag", "multidiag", "vstripe"):
                per_head.append(head_keys(spec, Nq, Nk))
            elif spec["tag"] == "dense" and dense_rows:
                per_head.append(np.broadcast_to(np.arange(Nk, dtype=np.int64), (Nq, Nk)))
            else:
                per_head.append(np.full((Nq, 0), -1, np.int64))
        K = max(1, max(x.shape[1] for x in per_head))
        idx = np.full((1, len(plan), Nq, K), -1, np.int32)
        for h, x in enumerate(per_head):
            idx[0, h, :, :x.shape[1]] = x
        return TokenIndices(np.broadcast_to(idx, (B,) + idx.shape[1:]), 1, Nk)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        return self._indices(self.head_plan(q.shape[1]), q.shape[0], q.shape[2], k.shape[2], True)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Run every head's pattern (see the class docstring); with ``return_lse`` SKIP heads give
        lse = -inf."""
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        B, Hq, Nq, _ = q.shape
        Nk, G = k.shape[2], Hq // k.shape[1]
        plan = self.head_plan(Hq)
        mask = self._indices(plan, B, Nq, Nk, False)
        out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        dense = [h for h, s in enumerate(plan) if s["tag"] == "dense"]
        if dense:
            kv = [h // G for h in dense]
            od, ld = attention(np.ascontiguousarray(q[:, dense]), np.ascontiguousarray(k[:, kv]),
                               np.ascontiguousarray(v[:, kv]), causal=causal, scale=scale, return_lse=True)
            out[:, dense], lse[:, dense] = od, ld
        self.last_info = {"plan": plan}
        if not dense:  # the executed mask is estimate's mask (DENSE heads would need Nq x Nk indices)
            self.last_info["mask"] = mask
        return (out, lse) if return_lse else out


def search(q, k, v, candidates: Sequence[Dict[str, Any]], error_bound: float, *,
           cost: Union[None, Sequence[float], Callable[[Dict[str, Any]], float]] = None,
           causal: bool = False, scale: Optional[float] = None) -> SearchResult:
    """The paper's offline search on one captured call (paper-level reading; no official code).

    Per query head, each candidate pattern's head output is compared with dense attention
    (relative MSE ``||o_c - o||^2 / ||o||^2`` over batch, queries and channels); its cost is the
    candidate's density (share of visible pairs it computes, per head; SKIP 0, DENSE 1) or the
    user's latency table (``cost``: one number per candidate, or a function of the pattern). The
    cheapest candidate whose error is within ``error_bound`` is chosen (ties: the earlier
    candidate); when none is, DENSE (error 0). Heads are then sorted by tag (stable) for fused
    execution.

    Returns
    -------
    SearchResult
    """
    q, k, v = check_qkv(q, k, v)
    specs = [check_spec(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    if not specs:
        raise ValueError("candidates must hold at least one pattern")
    bound = float(error_bound)
    if not bound >= 0:
        raise ValueError(f"error_bound must be >= 0, got {error_bound}")
    Hq = q.shape[1]
    ref = attention(q, k, v, causal=causal, scale=scale).astype(np.float64)
    norm = np.maximum((ref ** 2).sum(axis=(0, 2, 3)), np.finfo(np.float64).tiny)
    errors = np.zeros((Hq, len(specs)))
    costs = np.zeros((Hq, len(specs)))
    if cost is not None and not callable(cost):
        table = np.asarray(cost, np.float64)
        if table.shape != (len(specs),):
            raise ValueError(f"cost must hold one number per candidate ({len(specs)}), got shape {table.shape}")
    for c, spec in enumerate(specs):
        m = SparseVDiT(plan=[spec] * Hq)
        out = m(q, k, v, causal=causal, scale=scale).astype(np.float64)
        errors[:, c] = ((out - ref) ** 2).sum(axis=(0, 2, 3)) / norm
        if cost is None:
            if spec["tag"] in ("skip", "dense"):
                costs[:, c] = 0.0 if spec["tag"] == "skip" else 1.0
            else:
                costs[:, c] = m.estimate(q, k, causal=causal).density(q_len=q.shape[2], causal=causal).mean(axis=0)
        else:
            costs[:, c] = float(cost(spec)) if callable(cost) else table[c]
    plan, choice = [], np.zeros(Hq, np.int64)
    for h in range(Hq):
        ok = np.flatnonzero(errors[h] <= bound)
        if ok.size:
            choice[h] = int(ok[np.argmin(costs[h, ok])])
            plan.append(specs[choice[h]])
        else:
            choice[h] = -1
            plan.append({"tag": "dense"})
    order = np.array(sorted(range(Hq), key=lambda h: TAGS.index(plan[h]["tag"])), np.int64)
    return SearchResult(plan, choice, errors, costs, order)
