"""SeerAttention-R: the decode gate, its block-key state on the KV cache, its training by distillation.

Gao et al., "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning" (2025), following
microsoft/SeerAttention (HEAD aba03e3): ``seer_attn/decode_sparse/attn_gate_inf.py`` (decode
gate, selection), ``attn_gate_training.py`` (gate at training), ``cache_utils.py``
(``KCompressionCache``), ``qwen3/modeling_qwen3_seerattn_{inference,training}.py`` (gate inputs,
RoPE positions, ground truth, loss), ``kernels/varlen/attn_pooling_qkv_varlen_1d.py`` (ground
truth kernel), ``distillation_decode.py`` and ``scripts/run_distillation_decode.sh`` (training
defaults).

- **Gate** (``AttnGate`` with ``HeadPoolingLinear``): the decode query's heads are pooled over
  each GQA group by a learned map, ``q_pooling`` = ``"Qproj"`` (default: weight
  (Hkv, G, D, hidden), ``einsum('kgi,kgio->ko')``), ``"Qavgproj"`` (mean over the group, then a
  per-kv-head (D, hidden) map) or ``"Qavg"`` (mean only; hidden == D); the cache keys are pooled
  per block of ``block_size`` with ``k_pool`` (default max, min, avg, channels concatenated in that
  order) and mapped per kv head by (len(k_pool) * D, hidden); optional RMSNorm on both (weight
  (hidden,), eps 1e-6; ``use_qk_norm``); rotate-half RoPE on both (``use_rope``): the query at its
  position (kv_len - 1), block b at its start position b * block_size; logits
  ``qg . kg / sqrt(hidden)`` per **kv head**; the last block while it is partial has no key (the
  official cache holds zeros there, so its logit is 0); softmax over the blocks.
- **Selection** (C++ ``_core.seer_r_select``): top ``token_budget // block_size`` blocks (every
  block when there are no more) or probability > ``threshold``, plus the last block always; the
  query heads of a group share their kv head's blocks; attention on the selected tokens by the
  token-sparse kernel (through :class:`CacheDecode`).
- **State on the KV cache** (:class:`SeerRBlocks`): the pooled keys of every block, updated on
  append for the blocks the new rows touch (the official ``KCompressionCache`` pools a block once it
  is full; spattn also keeps the partial block's pooling, unused by the gate), plus the projected,
  normed, rotated keys of the full blocks for the gate in use, extended as blocks fill.
- **Ground truth** (``attn_pooling_qkv_varlen``): exact causal softmax probabilities of each query
  row, max-pooled per key block (``_core.block_attention_map`` with block_q = 1, pool "max");
  max over the query heads of a GQA group (``F.max_pool3d`` over heads); only the blocks *before*
  the query's block are kept (the training ``_gen_block_mask``: block tril with diagonal -1; the
  query's own block is the forced one at decode); each row normalised by ``sum + 1e-9``.
- **Loss**: ``gate_loss_scale`` (10, the script default) times ``KLDivLoss()`` (mean over all
  (kv head, row, block) entries, masked ones included) between the log-softmax of the masked gate
  logits (-1e20 outside the mask) and the ground truth, over rows at positions
  ``>= int(N * loss_slice_ratio)`` (0.5), averaged over the batch.
- **Training**: the shared AdamW fit (:mod:`spattn.training`) with the script's defaults: lr 1e-3,
  weight decay 0, 20 warmup steps, cosine decay, weights normal(0, 0.02) (the model's
  ``_init_weights``), norm weights 1; gradients exact in numpy float64 (projections, norms).

Deviations (also in :class:`SeerAttentionR`): computed in float32/float64 (official bf16); RoPE
position of a block is its start for every block, while the official decode path rotates a block
that fills *during* generation at the position of its last token (``position_embeddings`` of the
completing step; prefill-built blocks use the block start, as training does) -- spattn's cache
state is then the same whether built by appends or from scratch; the official
``seerattn_sliding_window_size`` is read by the model but not by the gate, and is not offered;
the official config's default selection is ``threshold`` 0.0 (which keeps every block), spattn's
default is the README's token budget 4096; ties in the top-k go to the lower block; the ground
truth for training is computed on the rows used by the loss only, from exact float32
probabilities (official: bf16 Triton kernel); a training item's batch rows share one length (no
varlen packing); ``loss_slice_ratio`` is applied to the item's own length N (a decode pair, q of
one row, always keeps its row); the training schedule decays to 0 (official cosine_with_min_lr to
1e-5); the official gate-only model config defaults ``seerattn_use_qk_norm`` to False while its
training script (and so the released gates) turns it on: spattn's fresh gate follows the script;
without a model config the gate's RoPE theta is 10000 over the whole hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _core, training
from .._validation import as_float_array, check_int, check_positive_int
from ..cache import KVCache
from ..masks import TokenIndices
from ._decode import CacheDecode
from .base import Capabilities, Method, _check_gate_input, register
from .seerattention import _check_pool, _check_rope_scaling, _rope, _rope_backward, rope_from_config, rope_inv_freq

Q_POOLINGS = ("Qproj", "Qavgproj", "Qavg")
DEFAULT_HIDDEN = 128   # seerattn_gate_hidden_size (config and run_distillation_decode.sh)
DEFAULT_BLOCK = 64     # seerattn_gate_block_size
NORM_EPS = 1e-6        # RMSNorm(gate_hidden_size, eps=1e-06) in AttnGate
MASK_LOGIT = -1e20     # attn.masked_fill(~mask, -1e20)


# ---------------------------------------------------------------------------- pooling and norms
def pool_blocks(k: np.ndarray, block_size: int, k_pool: Sequence[str], first: int = 0,
                stop: Optional[int] = None) -> np.ndarray:
    """Blocks ``first .. ceil(stop / block_size) - 1`` of k (B, H, >= stop, D) pooled with each of
    `k_pool` (max, min, avg; ceil mode, a partial block over its real rows), channels concatenated
    in that order: (B, H, nblocks, len(k_pool) * D) float32 (avg summed in float64)."""
    stop = k.shape[2] if stop is None else stop
    bs = block_size
    seg = k[:, :, first * bs:stop]
    n = seg.shape[2]
    if n == 0:
        return np.zeros(k.shape[:2] + (0, len(k_pool) * k.shape[3]), np.float32)
    cuts = np.arange(0, n, bs)
    out = []
    for kind in k_pool:
        if kind == "max":
            out.append(np.maximum.reduceat(seg, cuts, axis=2).astype(np.float32))
        elif kind == "min":
            out.append(np.minimum.reduceat(seg, cuts, axis=2).astype(np.float32))
        else:
            cnt = np.minimum(bs, n - cuts).astype(np.float64)
            s = np.add.reduceat(seg.astype(np.float64), cuts, axis=2)
            out.append((s / cnt[:, None]).astype(np.float32))
    return np.concatenate(out, axis=-1)


def _rms_norm(x: np.ndarray, w: Optional[np.ndarray]):
    """RMSNorm over the last axis (official ``RMSNorm``): (y, r) with r = 1/sqrt(mean(x^2) + eps)."""
    if w is None:
        return x, None
    r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + NORM_EPS)
    return w * (x * r), r


def _rms_norm_backward(dy: np.ndarray, x: np.ndarray, r: np.ndarray, w: np.ndarray):
    """(dx, dw) of y = w * x * r."""
    n = x.shape[-1]
    g = dy * w
    dx = r * g - x * r ** 3 * (g * x).sum(-1, keepdims=True) / n
    dw = (dy * x * r).reshape(-1, n).sum(0)
    return dx, dw


def gate_rope_from_config(config, hidden: int) -> Dict[str, Any]:
    """The decode gate's RoPE from a model config: ``{"rope_theta", "rope_scaling", "rope_dim"}``.

    The official gate rotary embedding is the model's, built from a copy of the config whose
    hidden_size is ``gate_hidden * num_attention_heads``: its rotary size is the config's
    ``head_dim`` when the config has one (Qwen3), else the gate hidden size (Qwen2). rope_dim None
    means all `hidden` channels."""
    r = rope_from_config(config)
    head_dim = config.get("head_dim") if isinstance(config, Mapping) else getattr(config, "head_dim", None)
    rd = None if head_dim is None or int(head_dim) == hidden else int(head_dim)
    return {"rope_theta": r["rope_theta"], "rope_scaling": r["rope_scaling"], "rope_dim": rd}


# ---------------------------------------------------------------------------- the gate
@dataclass(eq=False)
class SeerRGate:
    """Weights and configuration of one layer's SeerAttention-R decode gate.

    wk : (Hkv, len(k_pool) * D, hidden) float32 (``attngate_linear_k``)
    wq : (Hkv, G, D, hidden) for "Qproj" (``HeadPoolingLinear``), (Hkv, D, hidden) for
        "Qavgproj", None for "Qavg" (``attngate_linear_q``)
    q_norm, k_norm : (hidden,) float32 or None (``attngate_qnorm`` / ``attngate_knorm``)

    Treat a gate as immutable: the cache state keeps its projected block keys under the gate's
    identity (``version``), so new weights go into a new gate (:meth:`with_params`, as
    :func:`train_gate` does).
    """

    wk: np.ndarray
    wq: Optional[np.ndarray] = None
    q_norm: Optional[np.ndarray] = None
    k_norm: Optional[np.ndarray] = None
    q_pooling: str = "Qproj"
    k_pool: Tuple[str, ...] = ("max", "min", "avg")
    block_size: int = DEFAULT_BLOCK
    use_rope: bool = True
    rope_theta: float = 10000.0
    rope_scaling: Optional[Dict[str, Any]] = None
    rope_dim: Optional[int] = None  # rotary channels (the model's head_dim); None: all `hidden`

    def __post_init__(self):
        if self.q_pooling not in Q_POOLINGS:
            raise ValueError(f"q_pooling must be one of {Q_POOLINGS}, got {self.q_pooling!r}")
        self.k_pool = _check_pool(self.k_pool, "k_pool")
        self.block_size = check_positive_int(self.block_size, "block_size")
        _check_rope_scaling(self.rope_scaling)
        self.rope_scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
        self.use_rope = bool(self.use_rope)
        self.rope_theta = float(self.rope_theta)
        self.wk = np.ascontiguousarray(self.wk, dtype=np.float32)
        if self.wk.ndim != 3 or self.wk.shape[1] % len(self.k_pool) or 0 in self.wk.shape:
            raise ValueError(f"wk must have shape (Hkv, len(k_pool) * D, hidden), got {self.wk.shape}")
        Hkv, D, h = self.kv_heads, self.head_dim, self.hidden
        if self.q_pooling == "Qavg":
            if self.wq is not None:
                raise ValueError("wq must be None for q_pooling 'Qavg' (no q projection)")
            if h != D:
                raise ValueError(f"q_pooling 'Qavg' needs hidden == head dim, got hidden {h}, D {D}")
        else:
            if self.wq is None:
                raise ValueError(f"wq is required for q_pooling {self.q_pooling!r}")
            self.wq = np.ascontiguousarray(self.wq, dtype=np.float32)
            want = "(Hkv, G, D, hidden)" if self.q_pooling == "Qproj" else "(Hkv, D, hidden)"
            nd = 4 if self.q_pooling == "Qproj" else 3
            if self.wq.ndim != nd or self.wq.shape[0] != Hkv or self.wq.shape[-2:] != (D, h) or self.wq.shape[1] < 1:
                raise ValueError(f"wq must have shape {want} = ({Hkv}, {'G, ' if nd == 4 else ''}{D}, {h}), "
                                 f"got {self.wq.shape}")
        for name in ("q_norm", "k_norm"):
            w = getattr(self, name)
            if w is not None:
                w = np.ascontiguousarray(w, dtype=np.float32)
                if w.shape != (h,):
                    raise ValueError(f"{name} must have shape (hidden,) = ({h},), got {w.shape}")
                setattr(self, name, w)
        if (self.q_norm is None) != (self.k_norm is None):
            raise ValueError("q_norm and k_norm must both be given (use_qk_norm) or both be None")
        if self.rope_dim is not None:
            self.rope_dim = check_positive_int(self.rope_dim, "rope_dim")
            if self.rope_dim % 2 or self.rope_dim > h:
                raise ValueError(f"rope_dim must be even and <= hidden ({h}), got {self.rope_dim}")
        elif self.use_rope and h % 2:
            raise ValueError(f"RoPE needs an even hidden size, got {h}")
        self.version = object()  # identifies these weights for the cached projected block keys

    # ------------------------------------------------------------------ shape
    @property
    def hidden(self) -> int:
        return int(self.wk.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.wk.shape[1] // len(self.k_pool))

    @property
    def kv_heads(self) -> int:
        return int(self.wk.shape[0])

    @property
    def group(self) -> Optional[int]:
        """The GQA group size the q map was built for ("Qproj"), else None (any)."""
        return int(self.wq.shape[1]) if self.q_pooling == "Qproj" else None

    @property
    def use_qk_norm(self) -> bool:
        return self.q_norm is not None

    def check_fits(self, Hq: int, Hkv: int, D: int) -> None:
        """ValueError unless the gate fits Hq query heads, Hkv kv heads and head dim D."""
        G = Hq // Hkv if Hkv and Hq % Hkv == 0 else None
        if self.kv_heads != Hkv or self.head_dim != D or (self.group is not None and self.group != G):
            raise ValueError(f"gate (wk {self.wk.shape}, wq {None if self.wq is None else self.wq.shape}) does not "
                             f"fit Hq={Hq}, Hkv={Hkv}, D={D}")

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies (rope_dim // 2,) float64."""
        dim = self.hidden if self.rope_dim is None else self.rope_dim
        return rope_inv_freq(self.rope_theta, dim, self.rope_scaling)

    def rope_tables(self, positions: np.ndarray):
        """(cos, sin), each (len(positions), rope_dim // 2), float64."""
        ang = np.asarray(positions, np.float64)[:, None] * self.inv_freq()[None, :]
        return np.cos(ang), np.sin(ang)

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, head_dim: int, q_heads: int, kv_heads: int, *, hidden: int = DEFAULT_HIDDEN,
             q_pooling: str = "Qproj", k_pool: Sequence[str] = ("max", "min", "avg"), block_size: int = DEFAULT_BLOCK,
             use_qk_norm: bool = True, use_rope: bool = True, rope_theta: float = 10000.0,
             rope_scaling: Optional[Mapping] = None, rope_dim: Optional[int] = None, rope_config=None,
             seed: int = 0, init_std: float = 0.02) -> "SeerRGate":
        """A fresh gate: projections normal(0, init_std) (the official ``_init_weights``), norm
        weights 1. Defaults are ``run_distillation_decode.sh``'s: Qproj, Kmaxminavg, hidden 128,
        block 64, qk norm on, RoPE on. ``rope_config`` (a model config) sets rope_theta,
        rope_scaling and rope_dim as :func:`gate_rope_from_config` reads them. With "Qavg" the
        hidden size is the head dim (no q projection)."""
        head_dim, q_heads, kv_heads = (check_positive_int(head_dim, "head_dim"), check_positive_int(q_heads, "q_heads"),
                                       check_positive_int(kv_heads, "kv_heads"))
        if q_heads % kv_heads:
            raise ValueError(f"q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
        hidden = check_positive_int(hidden, "hidden")
        if q_pooling == "Qavg":
            hidden = head_dim
        if rope_config is not None:
            r = gate_rope_from_config(rope_config, hidden)
            rope_theta, rope_scaling, rope_dim = r["rope_theta"], r["rope_scaling"], r["rope_dim"]
        k_pool = _check_pool(k_pool, "k_pool")
        G = q_heads // kv_heads
        rng = np.random.default_rng(seed)
        wk = rng.normal(0.0, init_std, (kv_heads, len(k_pool) * head_dim, hidden))
        wq = {"Qproj": lambda: rng.normal(0.0, init_std, (kv_heads, G, head_dim, hidden)),
              "Qavgproj": lambda: rng.normal(0.0, init_std, (kv_heads, head_dim, hidden)),
              "Qavg": lambda: None}.get(q_pooling, lambda: None)()
        norm = np.ones(hidden, np.float32) if use_qk_norm else None
        return cls(wk, wq, norm, None if norm is None else norm.copy(), q_pooling, k_pool, block_size, use_rope,
                   rope_theta, rope_scaling, rope_dim)

    def params(self) -> List[np.ndarray]:
        """The trainable arrays, float64 copies: wk, [wq], [q_norm, k_norm]."""
        out = [self.wk.astype(np.float64)]
        if self.wq is not None:
            out.append(self.wq.astype(np.float64))
        if self.q_norm is not None:
            out += [self.q_norm.astype(np.float64), self.k_norm.astype(np.float64)]
        return out

    def with_params(self, params: Sequence[np.ndarray]) -> "SeerRGate":
        """A copy of the gate carrying `params` (the order of :meth:`params`)."""
        it = iter(params)
        wk = next(it)
        wq = next(it) if self.wq is not None else None
        qn, kn = (next(it), next(it)) if self.q_norm is not None else (None, None)
        return SeerRGate(wk, wq, qn, kn, self.q_pooling, self.k_pool, self.block_size, self.use_rope,
                         self.rope_theta, self.rope_scaling, self.rope_dim)

    def copy(self) -> "SeerRGate":
        return self.with_params(self.params())

    def config(self) -> Dict[str, Any]:
        return {"q_pooling": self.q_pooling, "k_pool": list(self.k_pool), "block_size": self.block_size,
                "use_rope": self.use_rope, "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling,
                "rope_dim": self.rope_dim}

    # ------------------------------------------------------------------ forward pieces (float64)
    def project_query(self, q: np.ndarray, positions: np.ndarray, params=None):
        """Gate query (B, Hkv, R, hidden) of q (B, Hq, R, D) at `positions` (R,), with what the
        backward pass needs."""
        p = self._param_dict(params)
        B, Hq, R, D = q.shape
        Hkv = self.kv_heads
        qg = q.astype(np.float64).reshape(B, Hkv, Hq // Hkv, R, D)
        if self.q_pooling == "Qproj":
            x = np.einsum("bkgri,kgio->bkro", qg, p["wq"])
        else:
            qa = qg.mean(2)
            x = qa if self.q_pooling == "Qavg" else np.einsum("bkri,kio->bkro", qa, p["wq"])
        y, r = _rms_norm(x, p.get("q_norm"))
        cs = self.rope_tables(positions) if self.use_rope else None
        out = _rope(y, *cs) if cs is not None else y
        return out, (qg, x, r, cs)

    def project_keys(self, pooled: np.ndarray, first_block: int = 0, params=None):
        """Gate keys (B, Hkv, n, hidden) of pooled block keys (B, Hkv, n, len(k_pool) * D) of
        blocks first_block .. first_block + n - 1 (RoPE at the block starts)."""
        p = self._param_dict(params)
        n = pooled.shape[2]
        x = np.einsum("bknc,kco->bkno", pooled.astype(np.float64), p["wk"])
        y, r = _rms_norm(x, p.get("k_norm"))
        cs = self.rope_tables((first_block + np.arange(n)) * self.block_size) if self.use_rope else None
        out = _rope(y, *cs) if cs is not None else y
        return out, (x, r, cs)

    def _param_dict(self, params) -> Dict[str, np.ndarray]:
        if params is None:
            d = {"wk": self.wk.astype(np.float64)}
            if self.wq is not None:
                d["wq"] = self.wq.astype(np.float64)
            if self.q_norm is not None:
                d["q_norm"], d["k_norm"] = self.q_norm.astype(np.float64), self.k_norm.astype(np.float64)
            return d
        names = ["wk"] + (["wq"] if self.wq is not None else []) + (["q_norm", "k_norm"] if self.q_norm is not None else [])
        return dict(zip(names, params))

    def block_probs(self, q: np.ndarray, blocks: "SeerRBlocks") -> np.ndarray:
        """Decode gate probabilities (B, Hkv, nb) float32 of q (B, Hq, 1, D) over the blocks of
        `blocks` (the official ``AttnGate.forward`` decode branch: q at position kv_len - 1, the
        partial last block's logit 0, softmax over the blocks)."""
        L = blocks.kv_len
        nb = blocks.num_blocks
        B, Hkv = q.shape[0], self.kv_heads
        if nb == 0:
            return np.zeros((B, Hkv, 0), np.float32)
        qg, _ = self.project_query(q, np.array([L - 1]))
        kg = blocks.gate_keys(self)                      # (B, Hkv, n_full, hidden)
        logits = np.zeros((B, Hkv, nb), np.float64)      # a partial last block keeps logit 0
        nf = kg.shape[2]
        logits[:, :, :nf] = np.einsum("bko,bkno->bkn", qg[:, :, 0], kg) / math.sqrt(self.hidden)
        m = logits.max(-1, keepdims=True)
        e = np.exp(logits - m)
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------- cache state
class SeerRBlocks:
    """SeerAttention-R's block keys of one cache layer: ``pooled`` (B, Hkv, block_capacity,
    len(k_pool) * D) float32, the max / min / avg of each block of `block_size` keys (blocks
    aligned at position 0; the last one possibly partial, pooled over its real rows). Registered on
    a :class:`spattn.KVCache` it is updated on every append: only the blocks holding the new rows
    are recomputed, from the keys in the cache. :meth:`gate_keys` keeps the projected (normed,
    rotated) keys of the full blocks for each gate in use (the last few) and extends them as
    blocks fill."""

    MAX_GATES = 4  # projected keys kept for this many gates (methods sharing the cache)

    def __init__(self, block_size: int, k_pool: Sequence[str] = ("max", "min", "avg")):
        self.block_size = check_positive_int(block_size, "block_size")
        self.k_pool = _check_pool(k_pool, "k_pool")
        self.pooled: Optional[np.ndarray] = None
        self.num_blocks = 0
        self.kv_len = 0
        self._proj: Dict[Any, List] = {}  # gate version -> [projected keys (B, Hkv, cap, hidden), blocks done]

    @property
    def full_blocks(self) -> int:
        return self.kv_len // self.block_size

    def update(self, k_buffer: np.ndarray, start: int, stop: int) -> None:
        """Rows [start, stop) of `k_buffer` (B, Hkv, capacity, D) were written (start is the
        previous length, or 0 to build from scratch)."""
        bs = self.block_size
        B, H, _, D = k_buffer.shape
        nb = -(-stop // bs)
        width = len(self.k_pool) * D
        if self.pooled is None or self.pooled.shape[2] < nb:
            cap = max(nb, 16 if self.pooled is None else 2 * self.pooled.shape[2])
            new = np.empty((B, H, cap, width), np.float32)
            if self.pooled is not None and start > 0:
                keep = -(-start // bs)
                new[:, :, :keep] = self.pooled[:, :, :keep]
            self.pooled = new
        if start == 0:
            self._proj.clear()
        if stop > start:
            b0 = start // bs
            self.pooled[:, :, b0:nb] = pool_blocks(k_buffer, bs, self.k_pool, b0, stop)
        self.num_blocks, self.kv_len = nb, stop

    def gate_keys(self, gate: SeerRGate) -> np.ndarray:
        """Projected gate keys (B, Hkv, full_blocks, hidden) float64 of the full blocks for `gate`,
        cached: only blocks filled since the last call are projected."""
        if gate.k_pool != self.k_pool or gate.block_size != self.block_size:
            raise ValueError(f"gate (block_size {gate.block_size}, k_pool {gate.k_pool}) does not match the cache "
                             f"state (block_size {self.block_size}, k_pool {self.k_pool})")
        nf = self.full_blocks
        entry = self._proj.pop(gate.version, None)
        if entry is None:
            entry = [None, 0]
        while len(self._proj) >= self.MAX_GATES:  # keep the most recently used gates' keys
            self._proj.pop(next(iter(self._proj)))
        self._proj[gate.version] = entry
        proj, done = entry
        if proj is None or proj.shape[2] < nf:
            B, H = self.pooled.shape[:2]
            cap = max(nf, 16 if proj is None else 2 * proj.shape[2])
            new = np.empty((B, H, cap, gate.hidden), np.float64)
            if proj is not None:
                new[:, :, :done] = proj[:, :, :done]
            proj = entry[0] = new
        if done < nf:
            proj[:, :, done:nf] = gate.project_keys(self.pooled[:, :, done:nf], done)[0]
            entry[1] = nf
        return proj[:, :, :nf]


# ---------------------------------------------------------------------------- ground truth, loss
def ground_truth(q, k, block_size: int = DEFAULT_BLOCK, *, scale: Optional[float] = None) -> np.ndarray:
    """Distillation target (B, Hkv, R, nb) float64 of query rows q (B, Hq, R, D) at the last R
    positions of k (B, Hkv, N, D): exact causal probabilities max-pooled per key block, max over
    each GQA group, blocks before the row's own block only, rows normalised by ``sum + 1e-9``
    (the official ``attn_pooling_qkv_varlen`` + the training attention's post-processing)."""
    q = as_float_array(q, "q")
    k = as_float_array(k, "k")
    bs = check_positive_int(block_size, "block_size")
    if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] \
            or q.shape[1] % max(k.shape[1], 1) or q.shape[2] > k.shape[2]:
        raise ValueError(f"q (B, Hq, R, D) and k (B, Hkv, N >= R, D) must match, got {q.shape} and {k.shape}")
    B, Hq, R, _ = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    pmax, _ = _core.block_attention_map(q, k, 1, bs, True, scale, "max")   # (B, Hq, R, nb)
    gt = pmax.astype(np.float64).reshape(B, Hkv, Hq // Hkv, R, -1).max(2)
    gt *= _block_mask(N, R, bs)
    return gt / (gt.sum(-1, keepdims=True) + 1e-9)


def _block_mask(N: int, R: int, bs: int) -> np.ndarray:
    """(R, nb) bool: the blocks strictly before the block of each row (rows at N-R .. N-1)."""
    t = np.arange(N - R, N)
    return np.arange(-(-N // bs))[None, :] < (t // bs)[:, None]


@dataclass
class _Sample:
    q: np.ndarray        # gate query rows (B, Hq, R, D) float64
    pooled: np.ndarray   # pooled gate keys (B, Hkv, nb, len(k_pool) * D) float64
    positions: np.ndarray  # (R,)
    mask: np.ndarray     # (R, nb) bool
    target: np.ndarray   # (B, Hkv, R, nb) float64


def _prepare(item, gate: SeerRGate, loss_slice_ratio: float) -> _Sample:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 4):
        raise ValueError("training items must be (q, k) or (q, k, q_gate, k_gate)")
    q, k = as_float_array(item[0], "q"), as_float_array(item[1], "k")
    qg, kg = (q, k) if len(item) == 2 else (_check_gate_input(item[2], q.shape, "q_gate"),
                                             _check_gate_input(item[3], k.shape, "k_gate"))
    if q.ndim != 4 or k.ndim != 4 or q.shape[2] > k.shape[2] or q.shape[2] < 1:
        raise ValueError(f"training items need q (B, Hq, R, D) with 1 <= R <= N and k (B, Hkv, N, D), got "
                         f"{q.shape} and {k.shape}")
    gate.check_fits(q.shape[1], k.shape[1], q.shape[3])
    N, R = k.shape[2], q.shape[2]
    t = np.arange(N - R, N)
    rows = np.nonzero(t >= int(N * loss_slice_ratio))[0]
    if rows.size == 0:
        rows = np.array([R - 1])
    q, qg = q[:, :, rows[0]:], qg[:, :, rows[0]:]
    Ru = q.shape[2]
    target = ground_truth(np.ascontiguousarray(q), k, gate.block_size)
    return _Sample(qg.astype(np.float64), pool_blocks(kg, gate.block_size, gate.k_pool).astype(np.float64),
                   np.arange(N - Ru, N), _block_mask(N, Ru, gate.block_size), target)


def gate_loss_and_grads(gate: SeerRGate, sample: _Sample, params: Optional[Sequence[np.ndarray]] = None,
                        loss_scale: float = 10.0):
    """The official distillation loss of one training item and its exact gradients (float64), in
    the order of :meth:`SeerRGate.params`. Returns (loss, grads, masked gate logits)."""
    params = gate.params() if params is None else list(params)
    p = gate._param_dict(params)
    qr, (qg, qx, q_r, qcs) = gate.project_query(sample.q, sample.positions, params)
    kr, (kx, k_r, kcs) = gate.project_keys(sample.pooled, 0, params)
    B, Hkv, R, _ = qr.shape
    nb = kr.shape[2]
    inv = 1.0 / math.sqrt(gate.hidden)
    S = np.einsum("bkro,bkno->bkrn", qr, kr) * inv
    S = np.where(sample.mask, S, MASK_LOGIT)
    live = sample.mask.any(-1)                               # rows that see a block
    Sl = np.where(sample.mask, S, -np.inf)[:, :, live]
    m = Sl.max(-1, keepdims=True)
    logq = Sl - m - np.log(np.exp(Sl - m).sum(-1, keepdims=True))
    T = sample.target[:, :, live]
    count = Hkv * R * nb                                     # KLDivLoss mean: every entry of the slice
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(T > 0, T * (np.log(np.where(T > 0, T, 1.0)) - np.where(T > 0, logq, 0.0)), 0.0)
    c = loss_scale / (count * B)
    loss = c * kl.sum()
    dS = np.zeros_like(S)
    dS[:, :, live] = np.where(sample.mask[live], c * (np.exp(logq) * T.sum(-1, keepdims=True) - T), 0.0)
    dqr = np.einsum("bkrn,bkno->bkro", dS, kr) * inv
    dkr = np.einsum("bkrn,bkro->bkno", dS, qr) * inv
    if qcs is not None:
        dqr, dkr = _rope_backward(dqr, *qcs), _rope_backward(dkr, *kcs)
    grads = {}
    if "q_norm" in p:
        dqx, grads["q_norm"] = _rms_norm_backward(dqr, qx, q_r, p["q_norm"])
        dkx, grads["k_norm"] = _rms_norm_backward(dkr, kx, k_r, p["k_norm"])
    else:
        dqx, dkx = dqr, dkr
    grads["wk"] = np.einsum("bknc,bkno->kco", sample.pooled, dkx)
    if gate.q_pooling == "Qproj":
        grads["wq"] = np.einsum("bkgri,bkro->kgio", qg, dqx)
    elif gate.q_pooling == "Qavgproj":
        grads["wq"] = np.einsum("bkri,bkro->kio", qg.mean(2), dqx)
    names = ["wk"] + (["wq"] if "wq" in p else []) + (["q_norm", "k_norm"] if "q_norm" in p else [])
    return float(loss), [grads[n] for n in names], S


@dataclass
class TrainResult:
    gate: SeerRGate
    losses: List[float] = field(default_factory=list)


def train_gate(data: Iterable, gate: Optional[SeerRGate] = None, *, steps: int = 800, lr: float = 1e-3,
               warmup_steps: int = 20, batch_size: int = 1, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
               betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, loss_slice_ratio: float = 0.5,
               gate_loss_scale: float = 10.0, seed: int = 0, progress: bool = True, **gate_kwargs) -> TrainResult:
    """Fit a decode gate by distillation on captured attention inputs.

    Parameters
    ----------
    data : iterable of (q, k) or (q, k, q_gate, k_gate)
        q (B, Hq, R, D): query rows at the last R positions of k (B, Hkv, N, D) -- a decode
        step's (q, cache K) pair has R = 1, a prefill capture R = N (every row is a decode query,
        as official training). The ground truth uses q, k; the gate sees q_gate, k_gate (the
        model's q / k before RoPE, as the official gate; default q, k).
    gate : SeerRGate, optional
        Starting point; default ``SeerRGate.init(D, Hq, Hkv, seed=seed, **gate_kwargs)``.
    steps, lr, warmup_steps, weight_decay, max_grad_norm, betas, eps
        AdamW, linear warmup then cosine decay, gradient clipping (``run_distillation_decode.sh``:
        800 steps, lr 1e-3, 20 warmup steps, weight decay 0; the HF Trainer's clip 1.0; its
        schedule ends at min_lr 1e-5, spattn's cosine at 0).
    batch_size : int
        Items averaged per step (seeded draw; the script's global batch is 16 sequences).
    loss_slice_ratio : float
        Rows at positions < int(N * ratio) are left out of the loss (script default 0.5).
    gate_loss_scale : float
        Loss scale (script default 10).

    Returns
    -------
    TrainResult with the trained gate and the loss of every step.
    """
    items = list(data)
    if not items:
        raise ValueError("data must hold at least one (q, k) item")
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not 0.0 <= float(loss_slice_ratio) < 1.0:
        raise ValueError(f"loss_slice_ratio must lie in [0, 1), got {loss_slice_ratio}")
    if gate is None:
        q0, k0 = np.shape(items[0][0]), np.shape(items[0][1])
        if len(q0) != 4 or len(k0) != 4:
            raise ValueError(f"training items need q (B, Hq, R, D) and k (B, Hkv, N, D), got {q0} and {k0}")
        gate = SeerRGate.init(q0[3], q0[1], k0[1], seed=seed, **gate_kwargs)
    elif not isinstance(gate, SeerRGate):
        raise TypeError(f"gate must be a SeerRGate, got {type(gate).__name__}")
    samples = training.prepare_samples(items, lambda it: _prepare(it, gate, float(loss_slice_ratio)),
                                       desc="ground truth", progress=progress)
    rng = np.random.default_rng(seed)
    params = gate.params()

    def loss_and_grads(step: int):
        grads = [np.zeros_like(p) for p in params]
        loss = 0.0
        for idx in rng.integers(0, len(samples), size=batch_size):
            lv, gs, _ = gate_loss_and_grads(gate, samples[idx], params, gate_loss_scale)
            loss += lv / batch_size
            for g, d in zip(grads, gs):
                g += d / batch_size
        return loss, grads

    losses = training.fit(params, loss_and_grads, steps=steps, lr=lr, warmup_steps=warmup_steps, betas=betas,
                          eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=progress,
                          desc="train decode gate")
    return TrainResult(gate.with_params(params), losses)


# ---------------------------------------------------------------------------- artifacts
def save_gates(path: str, gates: Sequence[SeerRGate]) -> None:
    """Save one decode gate per layer to an .npz (``layer{i}.wk`` / ``.wq`` / ``.q_norm`` /
    ``.k_norm`` plus the json config)."""
    arrays = {}
    for i, g in enumerate(gates):
        if not isinstance(g, SeerRGate):
            raise TypeError(f"gates[{i}] must be a SeerRGate, got {type(g).__name__}")
        for name in ("wk", "wq", "q_norm", "k_norm"):
            if getattr(g, name) is not None:
                arrays[f"layer{i}.{name}"] = getattr(g, name)
    training.save_npz(path, arrays, [g.config() for g in gates])


def load_gates(path: str) -> List[SeerRGate]:
    """Load the decode gates written by :func:`save_gates`."""
    z, cfg = training.load_npz(path)
    return [SeerRGate(z[f"layer{i}.wk"], z.get(f"layer{i}.wq"), z.get(f"layer{i}.q_norm"), z.get(f"layer{i}.k_norm"),
                      c["q_pooling"], tuple(c["k_pool"]), int(c["block_size"]), bool(c["use_rope"]),
                      float(c["rope_theta"]), c.get("rope_scaling"), c.get("rope_dim"))
            for i, c in enumerate(cfg)]


_OFFICIAL_PARTS = {"attngate_linear_k": "wk", "attngate_linear_q": "wq", "attngate_qnorm": "q_norm",
                   "attngate_knorm": "k_norm"}


def parse_k_pooling(name: str) -> Tuple[str, ...]:
    """The official ``seerattn_k_seq_pooling_type`` (e.g. ``"Kmaxminavg"``) as a k_pool tuple."""
    import re

    m = re.fullmatch(r"K((?:max|min|avg)+)", str(name))
    if not m:
        raise ValueError(f"k pooling type must look like 'Kmaxminavg', got {name!r}")
    return _check_pool(tuple(re.findall("max|min|avg", m.group(1))), "k pooling type")


def load_official_gates(source, *, config: Optional[Mapping] = None) -> List[SeerRGate]:
    """Decode gates trained by the official ``distillation_decode.py``.

    Parameters
    ----------
    source : str, path or dict
        ``attn_gate_weights.pth`` (a torch state dict with, per layer i,
        ``model.layers.{i}.self_attn.attn_gate.attngate_linear_k.weight`` (Hkv, len(k_pool) * D,
        hidden; k channels in max, min, avg order), ``attngate_linear_q.weight`` ((Hkv, G, D,
        hidden) for Qproj, (Hkv, D, hidden) for Qavgproj, absent for Qavg) and, with qk norm,
        ``attngate_qnorm.weight`` / ``attngate_knorm.weight`` (hidden,)), the directory holding it
        (its ``config.json`` gives ``seerattn_q_head_pooling_type``, ``seerattn_k_seq_pooling_type``,
        ``seerattn_gate_block_size``, ``seerattn_use_rope`` and the model's RoPE), or the state
        dict itself.
    config : dict, optional
        The model config.json as a dict (overrides the directory's); defaults: Qproj,
        Kmaxminavg, block 64, RoPE on, theta 10000.

    torch is needed only to read a ``.pth`` file.
    """
    import json
    import os
    import re

    state, cfg = source, dict(config) if config is not None else None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            cj = os.path.join(path, "config.json")
            if cfg is None and os.path.exists(cj):
                with open(cj) as f:
                    cfg = json.load(f)
            path = os.path.join(path, "attn_gate_weights.pth")
        if not os.path.exists(path):
            raise ValueError(f"source: no such file {path!r}")
        try:
            import torch
        except ImportError as exc:
            raise ImportError("load_official_gates needs torch to read a .pth file, or pass the state dict") from exc
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    cfg = cfg or {}
    q_pooling = cfg.get("seerattn_q_head_pooling_type", "Qproj")
    k_pool = parse_k_pooling(cfg.get("seerattn_k_seq_pooling_type", "Kmaxminavg"))
    block_size = int(cfg.get("seerattn_gate_block_size", DEFAULT_BLOCK))
    use_rope = bool(cfg.get("seerattn_use_rope", True))
    key = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.attn_gate\.(" + "|".join(_OFFICIAL_PARTS) + r")\.weight$")
    per_layer: Dict[int, Dict[str, np.ndarray]] = {}
    for name, val in state.items():
        m = key.search(str(name))
        if m:
            arr = val.detach().float().cpu().numpy() if hasattr(val, "detach") else np.asarray(val, np.float32)
            per_layer.setdefault(int(m.group(1)), {})[_OFFICIAL_PARTS[m.group(2)]] = arr
    if not per_layer:
        raise ValueError("source holds no '...layers.{i}.self_attn.attn_gate.attngate_linear_k.weight' entries")
    if sorted(per_layer) != list(range(len(per_layer))):
        raise ValueError(f"source: gate layers must be 0 .. L-1, got {sorted(per_layer)}")
    gates = []
    for i in range(len(per_layer)):
        w = per_layer[i]
        if "wk" not in w:
            raise ValueError(f"source: layer {i} has no attngate_linear_k.weight")
        hidden = int(np.shape(w["wk"])[-1])
        rope = gate_rope_from_config(cfg, hidden) if cfg else {"rope_theta": 10000.0, "rope_scaling": None,
                                                               "rope_dim": None}
        gates.append(SeerRGate(w["wk"], w.get("wq"), w.get("q_norm"), w.get("k_norm"), q_pooling, k_pool, block_size,
                               use_rope, rope["rope_theta"], rope["rope_scaling"], rope["rope_dim"]))
    return gates


# ---------------------------------------------------------------------------- the method
@register
class SeerAttentionR(CacheDecode, Method):
    """SeerAttention-R's decode gate: learned block selection over the KV cache, per KV head.

    Gao et al., "SeerAttention-R: Sparse Attention Adaptation for Long Reasoning", 2025; follows
    microsoft/SeerAttention's ``decode_sparse`` code (see this module's docstring for the gate,
    the cache state, the ground truth and the loss). A decode step: append the step's k / v to
    the :class:`spattn.KVCache` (the current token's block is then the last block, always kept),
    then ``select(q, cache, layer=i)`` / ``m(q, cache, layer=i)``. The gate scores the cache's
    blocks from the query pooled over each GQA group and the blocks' pooled keys
    (:class:`SeerRBlocks`, kept on the cache); the selected blocks' tokens run on the
    token-sparse kernel. Prefill (Nq > 1) is dense, as in the official model. On plain arrays
    ``estimate(q, k)`` / ``m(q, k, v)`` build the block state from k for that call.

    Train a gate with :meth:`fit` (:func:`train_gate`, by distillation on captured (q, k)
    pairs) or load one (:func:`load_gates`, :func:`load_official_gates`).

    Parameters
    ----------
    gate : SeerRGate or dict {layer: SeerRGate}, optional
        The gate (one per layer for calls over a cache with several layers). Default None: a
        fresh, *untrained* gate (seed ``seed``) sized from the inputs, a baseline only.
    token_budget : int, default 4096
        Token-budget mode: the top ``token_budget // block_size`` blocks per kv head plus the
        last block; every block while the cache holds no more than that.
    threshold : float, optional
        Threshold mode: blocks whose gate probability is > threshold, plus the last block.
    dense_layers : int, default 0
        Layers 0 .. dense_layers - 1 run dense (official ``seerattn_start_layer`` 0).
    seed : int, default 0
    layer_plan : spattn.LayerPlan or dict, optional
        The role of each layer (default: the first ``dense_layers`` dense, the others sparse).

    Gate inputs (``capabilities.gate_inputs``): the official gate sees the model's q / k
    *before* RoPE. On arrays ``estimate(q, k, q_gate=, k_gate=)``; over a cache
    ``select(q, cache, layer=i, q_gate=, gate_cache=)`` where ``gate_cache`` is a second
    :class:`spattn.KVCache` fed with the pre-RoPE keys (default: the attention cache itself).
    Under the transformers backend (``decode_method="seerattention_r"``) the gate gets the
    pre-RoPE q and keys from the attention module's q_proj / k_proj (the prompt's keys kept
    from the prefill call, one row appended per step); when they are not available (e.g. a
    cache filled before :func:`spattn.integrations.hf.use`) it falls back to the post-RoPE ones,
    counted in ``hf.stats``.

    Notes
    -----
    Deviations from the official code:

    * float32 storage / float64 gate arithmetic (official bf16);
    * every block's key is rotated at its start position, also for blocks that fill during
      generation (official: at the position of the completing token, the decode step's
      ``position_embeddings``), so the state does not depend on how the cache was filled;
    * default selection is the README's token budget 4096 (the config's default is threshold
      0.0, which keeps every block); ties in the top-k go to the lower block (torch.topk leaves
      them unspecified);
    * no sliding-window option (``seerattn_sliding_window_size`` is read by the official model
      but not used by its gate) and no "Qorig" q pooling (refused by the official config);
    * training: see :func:`train_gate` (cosine schedule to 0 instead of min_lr 1e-5; items are
      captured arrays instead of packed 32k-token sequences).
    """

    name = "seerattention_r"
    paper = "Gao et al., SeerAttention-R: Sparse Attention Adaptation for Long Reasoning, 2025"
    pattern = "decode: learned gate over pooled cache blocks per KV head (q pooled over the GQA group), top blocks + last"
    params_struct = _core.SeerAttentionRParams
    extra_defaults = {"gate": None, "layer_plan": None}
    capabilities = Capabilities(mask_format="token", needs_fit=True, fittable=True, gate_inputs=True)
    learned_param = "gate"

    def _check_params(self) -> None:
        super()._check_params()
        g = self.params["gate"]
        gates = g.values() if isinstance(g, dict) else [] if g is None else [g]
        if isinstance(g, dict):
            for key in g:
                check_int(key, "gate layer")
        for x in gates:
            if not isinstance(x, SeerRGate):
                raise TypeError(f"gate must be a spattn.methods.seerattention_r.SeerRGate (or a dict of them), "
                                f"got {type(x).__name__}")

    # ------------------------------------------------------------------ the gate of a call
    def gate_for(self, Hq: int, Hkv: int, D: int, layer: Optional[int] = None) -> SeerRGate:
        """The gate of `layer` (the given one, or an untrained one sized from the shapes)."""
        g = self.params["gate"]
        if isinstance(g, dict):
            if layer is None:
                raise ValueError("seerattention_r: gate is a per-layer dict; call over a spattn.KVCache with layer=")
            if layer not in g:
                raise ValueError(f"seerattention_r: gate has no entry for layer {layer}; layers: {sorted(g)}")
            g = g[layer]
        if g is None:
            key = (Hq, Hkv, D, self.params["seed"])
            cached = self.__dict__.get("_default_gate")
            if cached is None or cached[0] != key:
                cached = (key, SeerRGate.init(D, Hq, Hkv, seed=self.params["seed"]))
                self._default_gate = cached
            g = cached[1]
        g.check_fits(Hq, Hkv, D)
        return g

    def _select(self, q: np.ndarray, blocks: SeerRBlocks, gate: SeerRGate) -> TokenIndices:
        probs = gate.block_probs(q, blocks)
        idx = _core.seer_r_select(probs, q.shape[1], gate.block_size, blocks.kv_len, self.cparams)
        self.last_info = {"kv_len": blocks.kv_len, "tokens": int(idx.shape[-1]), "probs": probs}
        return TokenIndices(idx, 1, blocks.kv_len, assume_sorted=True)

    # ------------------------------------------------------------------ plain arrays
    def _estimate(self, q, k, causal, scale, q_gate=None, k_gate=None) -> TokenIndices:
        B, Hq, Nq, D = q.shape
        Nk = k.shape[2]
        if Nq != 1:
            return self._dense_indices(B, Hq, Nq, Nk)
        q_gate = q if q_gate is None else q_gate
        k_gate = k if k_gate is None else k_gate
        gate = self.gate_for(Hq, k.shape[1], D)
        blocks = SeerRBlocks(gate.block_size, gate.k_pool)
        blocks.update(k_gate, 0, Nk)
        return self._select(q_gate, blocks, gate)

    # ------------------------------------------------------------------ decode over a KVCache
    def blocks(self, cache: KVCache, layer: int, gate: SeerRGate) -> SeerRBlocks:
        """The block-key state on `layer` of `cache` for `gate`'s block size and pooling
        (registered on first use)."""
        bs, kp = gate.block_size, gate.k_pool
        return cache.state(layer, ("seerattention_r", bs, kp), lambda: SeerRBlocks(bs, kp))

    def _select_cache(self, q: np.ndarray, cache: KVCache, layer: int, q_gate=None,
                      gate_cache: Optional[KVCache] = None) -> TokenIndices:
        gate_cache = cache if gate_cache is None else gate_cache
        if not isinstance(gate_cache, KVCache):
            raise TypeError(f"gate_cache must be a spattn.KVCache, got {type(gate_cache).__name__}")
        kb = cache.buffers(layer)[0]
        gkb = gate_cache.buffers(layer)[0]
        if gkb.shape[:2] != kb.shape[:2] or gkb.shape[3] != kb.shape[3] or gate_cache.length(layer) != cache.length(layer):
            raise ValueError(f"gate_cache layer {layer} must hold as many keys ({cache.length(layer)}) of the same "
                             f"(B, Hkv, D) as the cache, got length {gate_cache.length(layer)}, shape {gkb.shape}")
        q_gate = q if q_gate is None else _check_gate_input(q_gate, q.shape, "q_gate")
        gate = self.gate_for(q.shape[1], kb.shape[1], kb.shape[3], layer if isinstance(self.params["gate"], dict) else None)
        return self._select(q_gate, self.blocks(gate_cache, layer, gate), gate)

    def select(self, q, cache: KVCache, *, layer: int = 0, q_gate=None, gate_cache: Optional[KVCache] = None) -> TokenIndices:
        """The key positions attended by q (B, Hq, 1, D) on `layer` of `cache` (after the step's
        append), as :meth:`CacheDecode.select`. ``q_gate`` / ``gate_cache``: the gate's inputs
        (pre-RoPE query, a KVCache of pre-RoPE keys), default q / cache."""
        return super().select(q, cache, layer=layer, q_gate=q_gate, gate_cache=gate_cache)

    def __call__(self, q, k, v=None, *, layer: Optional[int] = None, causal: bool = False,
                 scale: Optional[float] = None, return_lse: bool = False, q_gate=None, k_gate=None,
                 gate_cache: Optional[KVCache] = None):
        """``m(q, cache, layer=i, q_gate=, gate_cache=)`` over a :class:`spattn.KVCache` (see
        :meth:`select`), or ``m(q, k, v, q_gate=, k_gate=)`` on arrays."""
        if not isinstance(k, KVCache):
            if layer is not None or gate_cache is not None:
                raise TypeError("layer and gate_cache apply to a call over a spattn.KVCache, not to arrays")
            return Method.__call__(self, q, k, v, causal=causal, scale=scale, return_lse=return_lse,
                                   q_gate=q_gate, k_gate=k_gate)
        if k_gate is not None:
            raise TypeError("k_gate applies to arrays; over a cache pass gate_cache (a KVCache of the gate keys)")
        return super().__call__(q, k, v, layer=layer, causal=causal, scale=scale, return_lse=return_lse,
                                q_gate=q_gate, gate_cache=gate_cache)

    # ------------------------------------------------------------------ learned state
    def fit(self, samples: Sequence, **kwargs: Any) -> TrainResult:
        """Train the gate by distillation (:func:`train_gate`; starts from the current gate when
        one is set) and keep it as ``params["gate"]``.

        Parameters
        ----------
        samples : sequence of (q, k) or (q, k, q_gate, k_gate)
            q (B, Hq, R, D) rows at the last R positions of k (B, Hkv, N, D): decode pairs
            (R = 1) or whole captured sequences (R = N).
        **kwargs
            Options of :func:`train_gate` (``steps``, ``lr``, ``batch_size``, ``seed``, ``progress``, ...).
        """
        g = self.params["gate"]
        if isinstance(g, dict):
            raise ValueError("seerattention_r: fit trains one gate; fit a method per layer for a per-layer dict")
        res = train_gate(samples, g, **kwargs)
        self.set_params(gate=res.gate)
        return res


__all__ = ["SeerAttentionR", "SeerRGate", "SeerRBlocks", "TrainResult", "gate_loss_and_grads", "gate_rope_from_config",
           "ground_truth", "load_gates", "load_official_gates", "parse_k_pooling", "pool_blocks", "save_gates",
           "train_gate"]
