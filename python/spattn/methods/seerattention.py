"""SeerAttention: the method, its learned block gate (AttnGate), the ground truth and the training on CPU.

Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs" (2024), following
microsoft/SeerAttention's prefill gate and distillation code:

- **Gate** (C++ forward): q and k pooled per block of ``block_size`` (ceil mode; partial block
  over its real rows); q with ``q_pool`` (default avg), k with ``k_pool`` (default max, min, avg;
  channels concatenated in that order); per-head linear maps without bias (the q map is the
  identity when there is one q pooling and hidden == D, as in the official default, and then each
  *query* head has its own k weight, shape (Hq, 3D, hidden)); rotate-half RoPE on the projected
  vectors at block-start positions; scores ``Qg Kg^T / sqrt(hidden)``; causal block mask;
  softmax per query-block row.
- **Ground truth** (C++): exact causal attention max-pooled per (query block, key block) with the
  final row statistics (flash-style, two passes, no N x N buffer), each row normalised to 1.
- **Loss**: ``10 * KLDiv(log_softmax(gate logits), GT)`` with PyTorch's default ``mean``
  reduction over all (batch, head, row, column) entries of rows ``>= nb // 4`` (the official
  code drops the first quarter of rows "for training stability").
- **Training**: AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0), 20 warmup steps then
  cosine decay, gradient-norm clip 1.0, weights initialised normal(0, 0.02); gradients in numpy
  float64 (the gate is tiny; the exact-attention ground truth is the cost and runs in C++).

Deviations: float32/float64 where the official code runs bf16; the gate RoPE uses plain
``rope_theta`` (no llama3 frequency scaling); inputs are (B, H, N, D) as everywhere in spattn.
The gate should see the model's q/k *before* RoPE and the ground truth the attention's q/k
*after* RoPE: pass 4-tuples ``(q, k, q_gate, k_gate)`` to :func:`train_gate` when they differ.

The fit loop, optimiser and ``.npz`` artifacts are the shared ones of :mod:`spattn.training`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core, training
from .._validation import check_positive_int, check_qkv
from ..masks import BlockMask
from .base import Capabilities, Method, register

POOL_KINDS = ("max", "min", "avg")


def _check_pool(pool: Sequence[str], name: str) -> Tuple[str, ...]:
    pool = tuple(pool)
    if not pool or any(p not in POOL_KINDS for p in pool) or len(set(pool)) != len(pool):
        raise ValueError(f"{name} must be a non-empty subset of {POOL_KINDS}, got {pool}")
    return tuple(p for p in POOL_KINDS if p in pool)  # official channel order: max, min, avg


@dataclass
class SeerGate:
    """Weights and configuration of one layer's AttnGate.

    wk : (Hq or Hkv, len(k_pool) * D, hidden) float32
    wq : (Hq, len(q_pool) * D, hidden) float32, or None for the identity q map
    """

    wk: np.ndarray
    wq: Optional[np.ndarray] = None
    q_pool: Tuple[str, ...] = ("avg",)
    k_pool: Tuple[str, ...] = ("max", "min", "avg")
    block_size: int = 64
    rope_theta: float = 10000.0

    def __post_init__(self):
        self.q_pool = _check_pool(self.q_pool, "q_pool")
        self.k_pool = _check_pool(self.k_pool, "k_pool")
        check_positive_int(self.block_size, "block_size")
        self.wk = np.ascontiguousarray(self.wk, dtype=np.float32)
        if self.wk.ndim != 3:
            raise ValueError(f"wk must have shape (heads, len(k_pool) * D, hidden), got {self.wk.shape}")
        if self.wq is not None:
            self.wq = np.ascontiguousarray(self.wq, dtype=np.float32)
            if self.wq.ndim != 3 or self.wq.shape[2] != self.hidden:
                raise ValueError(f"wq must have shape (Hq, len(q_pool) * D, hidden={self.hidden}), got {self.wq.shape}")

    @property
    def hidden(self) -> int:
        return int(self.wk.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.wk.shape[1] // len(self.k_pool))

    @classmethod
    def init(cls, head_dim: int, q_heads: int, kv_heads: Optional[int] = None, *, hidden: Optional[int] = None,
             q_pool: Sequence[str] = ("avg",), k_pool: Sequence[str] = ("max", "min", "avg"),
             block_size: int = 64, rope_theta: float = 10000.0, seed: int = 0, init_std: float = 0.02) -> "SeerGate":
        """A fresh gate, weights normal(0, init_std) (the official initialisation).

        With one q pooling and hidden == head_dim the q map is the identity and k has one weight
        per query head (official default); otherwise q has Hq weights and k has Hkv weights.
        """
        hidden = head_dim if hidden is None else hidden
        q_pool, k_pool = _check_pool(q_pool, "q_pool"), _check_pool(k_pool, "k_pool")
        kv_heads = q_heads if kv_heads is None else kv_heads
        rng = np.random.default_rng(seed)
        identity_q = len(q_pool) == 1 and hidden == head_dim
        wk_heads = q_heads if identity_q else kv_heads
        wk = rng.normal(0.0, init_std, (wk_heads, len(k_pool) * head_dim, hidden)).astype(np.float32)
        wq = None if identity_q else rng.normal(0.0, init_std, (q_heads, len(q_pool) * head_dim, hidden)).astype(np.float32)
        return cls(wk, wq, q_pool, k_pool, block_size, rope_theta)

    def scores(self, q, k) -> np.ndarray:
        """Gate scores (B, Hq, nb, nb): softmax per query-block row, 0 above the diagonal (C++)."""
        q, k, _ = check_qkv(q, k)
        if q.shape[3] != self.head_dim:
            raise ValueError(f"gate was built for head dim {self.head_dim}, q has {q.shape[3]}")
        return _core.seer_gate_scores(q, k, self.wq, self.wk, list(self.q_pool), list(self.k_pool),
                                      self.hidden, float(self.rope_theta), self.block_size)

    def config(self) -> Dict:
        return {"q_pool": list(self.q_pool), "k_pool": list(self.k_pool), "block_size": self.block_size,
                "rope_theta": self.rope_theta}


def save_gates(path: str, gates: Sequence[SeerGate]) -> None:
    """Save one gate per layer to an .npz (``layer{i}.wk``, ``layer{i}.wq``, json config)."""
    arrays = {}
    for i, g in enumerate(gates):
        arrays[f"layer{i}.wk"] = g.wk
        if g.wq is not None:
            arrays[f"layer{i}.wq"] = g.wq
    training.save_npz(path, arrays, [g.config() for g in gates])


def load_gates(path: str) -> List[SeerGate]:
    """Load the gates written by :func:`save_gates`."""
    z, cfg = training.load_npz(path)
    return [SeerGate(z[f"layer{i}.wk"], z.get(f"layer{i}.wq"), tuple(c["q_pool"]), tuple(c["k_pool"]),
                     int(c["block_size"]), float(c["rope_theta"]))
            for i, c in enumerate(cfg)]


def ground_truth(q, k, block_size: int = 64, *, scale: Optional[float] = None) -> np.ndarray:
    """Training target (B, Hq, nb, nb): causal attention max-pooled per block pair, rows sum to 1."""
    q, k, _ = check_qkv(q, k)
    return _core.seer_ground_truth(q, k, block_size, scale)


# ---------------------------------------------------------------------------- numpy training path
def _pool(x: np.ndarray, bs: int, kinds: Sequence[str]) -> np.ndarray:
    """(B, H, N, D) -> (B, H, nb, len(kinds) * D), ceil mode, partial block over real rows."""
    B, H, N, D = x.shape
    nb = math.ceil(N / bs)
    pad = nb * bs - N
    x = x.astype(np.float64)
    out = []
    for kind in kinds:
        if kind == "avg":
            s = np.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(B, H, nb, bs, D).sum(3)
            cnt = np.full(nb, bs, np.float64)
            cnt[-1] = bs - pad
            out.append(s / cnt[:, None])
        else:
            fill = -np.inf if kind == "max" else np.inf
            xp = np.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=fill).reshape(B, H, nb, bs, D)
            out.append(xp.max(3) if kind == "max" else xp.min(3))
    return np.concatenate(out, axis=-1)


def _rope_tables(nb: int, bs: int, hidden: int, theta: float):
    half = hidden // 2
    inv = theta ** (-2.0 * np.arange(half) / hidden)
    ang = (np.arange(nb) * bs)[:, None] * inv[None, :]
    return np.cos(ang), np.sin(ang)


def _rope(x, cos, sin):
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _rope_backward(dy, cos, sin):
    h = dy.shape[-1] // 2
    da, db = dy[..., :h], dy[..., h:]
    return np.concatenate([da * cos + db * sin, db * cos - da * sin], axis=-1)


@dataclass
class _Sample:
    qp: np.ndarray      # (B, Hq, nb, Cq)
    kp: np.ndarray      # (B, Hq, nb, Ck), k heads repeated to Hq
    target: np.ndarray  # (B, Hq, nb, nb)


def _prepare(item, gate: SeerGate) -> _Sample:
    if len(item) == 2:
        q, k = item
        qg, kg = q, k
    elif len(item) == 4:
        q, k, qg, kg = item
    else:
        raise ValueError("training items must be (q, k) or (q, k, q_gate, k_gate)")
    q, k, _ = check_qkv(q, k)
    qg, kg, _ = check_qkv(qg, kg)
    if qg.shape[3] != gate.head_dim:
        raise ValueError(f"gate was built for head dim {gate.head_dim}, q_gate has {qg.shape[3]}")
    G = qg.shape[1] // kg.shape[1]
    target = ground_truth(q, k, gate.block_size).astype(np.float64)
    return _Sample(_pool(qg, gate.block_size, gate.q_pool),
                   np.repeat(_pool(kg, gate.block_size, gate.k_pool), G, axis=1), target)


def gate_loss_and_grads(gate: SeerGate, sample: _Sample, loss_scale: float = 10.0):
    """Official loss and its exact gradients w.r.t. wk (and wq), float64.

    Returns (loss, dwk, dwq or None, gate logits with -inf above the diagonal).
    """
    B, Hq, nb, _ = sample.qp.shape
    Hw = gate.wk.shape[0]
    wk = gate.wk.astype(np.float64)
    whead = np.arange(Hq) if Hw == Hq else np.arange(Hq) // (Hq // Hw)
    kgp = np.einsum("bhnc,hco->bhno", sample.kp, wk[whead])
    qgp = sample.qp if gate.wq is None else np.einsum("bhnc,hco->bhno", sample.qp, gate.wq.astype(np.float64))
    use_rope = gate.rope_theta > 0
    if use_rope:
        cos, sin = _rope_tables(nb, gate.block_size, gate.hidden, gate.rope_theta)
        qr, kr = _rope(qgp, cos, sin), _rope(kgp, cos, sin)
    else:
        qr, kr = qgp, kgp
    inv = 1.0 / math.sqrt(gate.hidden)
    S = np.einsum("bhid,bhjd->bhij", qr, kr) * inv
    upper = np.triu(np.ones((nb, nb), bool), 1)
    S = np.where(upper, -np.inf, S)
    r0 = nb // 4
    Sr = S[:, :, r0:]
    m = Sr.max(-1, keepdims=True)
    logq = Sr - m - np.log(np.exp(Sr - m).sum(-1, keepdims=True))
    T = sample.target[:, :, r0:]
    count = T.size
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(T > 0, T * (np.log(np.where(T > 0, T, 1)) - logq), 0.0)
    loss = loss_scale * kl.sum() / count
    dSr = loss_scale / count * (np.exp(logq) * T.sum(-1, keepdims=True) - T)
    dS = np.zeros_like(S)
    dS[:, :, r0:] = np.where(upper[r0:], 0.0, dSr)
    dqr = np.einsum("bhij,bhjd->bhid", dS, kr) * inv
    dkr = np.einsum("bhij,bhid->bhjd", dS, qr) * inv
    if use_rope:
        dqr, dkr = _rope_backward(dqr, cos, sin), _rope_backward(dkr, cos, sin)
    dwk_h = np.einsum("bhnc,bhno->hco", sample.kp, dkr)
    dwk = np.zeros_like(wk)
    np.add.at(dwk, whead, dwk_h)
    dwq = None if gate.wq is None else np.einsum("bhnc,bhno->hco", sample.qp, dqr)
    return float(loss), dwk, dwq, S


@dataclass
class TrainResult:
    gate: SeerGate
    losses: List[float] = field(default_factory=list)


def train_gate(data: Iterable, gate: Optional[SeerGate] = None, *, steps: int = 500, lr: float = 1e-3,
               warmup_steps: int = 20, batch_size: int = 1, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
               betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, seed: int = 0,
               progress: bool = True, **gate_kwargs) -> TrainResult:
    """Fit a gate to captured (q, k) pairs by minimising the official KL loss.

    Parameters
    ----------
    data : iterable of (q, k) or (q, k, q_gate, k_gate)
        Captured attention inputs (B, Hq, N, D) / (B, Hkv, N, D), Nq == Nk; the ground truth
        (computed once per item, in C++) uses q, k; the gate sees q_gate, k_gate (default q, k).
    gate : SeerGate, optional
        Starting point; default ``SeerGate.init(D, Hq, Hkv, seed=seed, **gate_kwargs)``.
    steps, lr, warmup_steps, weight_decay, max_grad_norm, betas, eps
        AdamW with linear warmup then cosine decay to 0 and gradient-norm clipping (official
        values: 500 steps, 1e-3, 20, 0.0, 1.0, (0.9, 0.999), 1e-8).
    batch_size : int
        Items averaged per step (drawn with a seeded generator).
    Returns
    -------
    TrainResult with the trained gate and the loss of every step.
    """
    items = list(data)
    if not items:
        raise ValueError("data must hold at least one (q, k) item")
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    if gate is None:
        q0, k0 = items[0][-2], items[0][-1]
        gate = SeerGate.init(q0.shape[3], q0.shape[1], k0.shape[1], seed=seed, **gate_kwargs)
    else:
        gate = SeerGate(gate.wk.copy(), None if gate.wq is None else gate.wq.copy(), gate.q_pool, gate.k_pool,
                        gate.block_size, gate.rope_theta)
    samples = training.prepare_samples(items, lambda it: _prepare(it, gate), desc="ground truth", progress=progress)
    rng = np.random.default_rng(seed)
    params = [gate.wk.astype(np.float64)] + ([gate.wq.astype(np.float64)] if gate.wq is not None else [])

    def loss_and_grads(step: int):
        grads = [np.zeros_like(p) for p in params]
        loss = 0.0
        for idx in rng.integers(0, len(samples), size=batch_size):
            lv, dwk, dwq, _ = gate_loss_and_grads(_with_params(gate, params), samples[idx])
            loss += lv / batch_size
            grads[0] += dwk / batch_size
            if dwq is not None:
                grads[1] += dwq / batch_size
        return loss, grads

    losses = training.fit(params, loss_and_grads, steps=steps, lr=lr, warmup_steps=warmup_steps, betas=betas,
                          eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=progress,
                          desc="train gate")
    gate.wk = params[0].astype(np.float32)
    if gate.wq is not None:
        gate.wq = params[1].astype(np.float32)
    return TrainResult(gate, losses)


def _with_params(gate: SeerGate, params: List[np.ndarray]) -> SeerGate:
    """A view of `gate` carrying the float64 master weights (no validation copy)."""
    g = object.__new__(SeerGate)
    g.__dict__.update(gate.__dict__)
    g.wk = params[0]
    g.wq = params[1] if len(params) > 1 else None
    return g


@register
class SeerAttention(Method):
    """SeerAttention: a learned block gate (AttnGate) predicts the block mask.

    Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs", 2024; follows
    microsoft/SeerAttention's prefill gate (see this module for the gate, its ground truth
    and its training). Train a gate with :meth:`fit` (:func:`train_gate`), or load one with
    :func:`load_gates`.

    Parameters
    ----------
    gate : SeerGate, optional
        The layer's gate. Default None: a fresh, *untrained* gate (normal(0, 0.02) weights,
        seed ``seed``) sized from the inputs; useful only as a baseline.
    threshold : float, default 5e-4
        Keep blocks whose gate score is strictly above it (the README's example value; the
        official code's default is 0.0, its docstring says 2e-3). Used when neither
        ``nz_ratio`` nor ``topk`` is given.
    nz_ratio : float, optional
        Official top-k mode: every row keeps ``int((1 - sqrt(1 - nz_ratio)) * nb)`` blocks (>= 1),
        so the causal density is about nz_ratio.
    topk : int, optional
        Every row keeps this many blocks.
    last_block_dense : bool, default True
        Keep the last two query-block rows whole (official default).
    seed : int, default 0
        Seed of the untrained default gate.

    Nothing else is forced (no diagonal or sink block), as in the official code. Causal prefill
    only (Nq == Nk); decode (Nq == 1) runs dense, as the official gate returns no mask there.
    After ``estimate``, ``last_info["scores"]`` holds the gate scores (B, Hq, nb, nb).
    """

    name = "seerattention"
    paper = "Gao et al., SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs, 2024"
    pattern = "learned block gate (threshold or top-k per row)"
    params_struct = _core.SeerParams
    extra_defaults = {"gate": None}
    capabilities = Capabilities(noncausal=False, chunked=False, needs_fit=True, fittable=True)
    learned_param = "gate"

    def _check_params(self) -> None:
        p = self.params
        if p["gate"] is not None and not isinstance(p["gate"], SeerGate):
            raise TypeError(f"gate must be a spattn.methods.seerattention.SeerGate, got {type(p['gate']).__name__}")

    def gate_for(self, q, k) -> SeerGate:
        """The gate used for (q, k): the given one, or a fresh untrained one sized from them."""
        g = self.params["gate"]
        if g is None:
            g = SeerGate.init(q.shape[3], q.shape[1], k.shape[1], seed=self.params["seed"])
        if g.wk.shape[0] not in (q.shape[1], k.shape[1]) or g.head_dim != q.shape[3]:
            raise ValueError(f"gate (wk {g.wk.shape}) does not fit q {q.shape} / k {k.shape}")
        return g

    def _estimate(self, q, k, causal, scale) -> BlockMask:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        g = self.gate_for(q, k)
        bs = g.block_size
        if Nq == 1:
            self.last_info = {"scores": None}
            return BlockMask.full(B, Hq, Nq, Nk, bs, bs)
        scores = g.scores(q, k)
        blocks = _core.seer_select(scores, Nq, bs, self.cparams)
        self.last_info = {"scores": scores}
        return BlockMask(blocks, bs, bs, Nq, Nk)

    def fit(self, samples: Sequence, **kwargs: Any) -> "TrainResult":
        """Train the gate on captured (q, k) pairs (:func:`train_gate`; starts from the current
        gate when one is set) and keep it as ``params["gate"]``.

        Parameters
        ----------
        samples : sequence of (q, k) or (q, k, q_gate, k_gate)
        **kwargs
            Options of :func:`train_gate` (``steps``, ``lr``, ``batch_size``, ``seed``, ``progress``, ...).

        Returns
        -------
        TrainResult with the gate and the loss of every step.
        """
        res = train_gate(samples, self.params["gate"], **kwargs)
        self.set_params(gate=res.gate)
        return res
