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

- **Gate RoPE**: ``rope_theta`` and ``rope_scaling`` (default or llama3) from a model config
  (:func:`rope_from_config`), rotary dimension = the model's head_dim as in the official block
  rotary embedding (when it is below the gate hidden size, the first head_dim channels rotate and
  the rest pass, the official partial rotary); without a config: theta 10000 over all channels.
- **Gate inputs**: the gate sees the model's q/k *before* RoPE, the ground truth and the sparse
  attention the q/k *after* RoPE: ``estimate(q, k, q_gate=..., k_gate=...)``, 4-tuples
  ``(q, k, q_gate, k_gate)`` for :func:`train_gate`; the transformers backend hands both over.
- **Official weights**: :func:`load_official_gates` reads ``attn_gate_weights.pth``.

Deviations: float32/float64 where the official code runs bf16; inputs are (B, H, N, D) as
everywhere in spattn; rope types other than default / linear / llama3 are refused.

The fit loop, optimiser and ``.npz`` artifacts are the shared ones of :mod:`spattn.training`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _core, training
from .._validation import check_positive_int, check_qkv
from ..masks import BlockMask
from .base import Capabilities, Method, register

POOL_KINDS = ("max", "min", "avg")
DEFAULT_HIDDEN = 128  # official seerattn_gate_hidden_size
ROPE_TYPES = ("default", "linear", "llama3")


def _cfg_get(config, name, default=None):
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def rope_from_config(config) -> Dict[str, Any]:
    """The gate's RoPE settings from a model config (a dict such as config.json, or a
    transformers config object): ``{"rope_theta", "rope_scaling", "rope_dim"}``.

    Reads ``rope_theta`` and ``rope_scaling`` (transformers 4) or ``rope_parameters``
    (transformers 5, theta inside it); ``rope_dim`` is the model's head_dim (``head_dim``, else
    hidden_size // num_attention_heads), the rotary size of the official block rotary embedding.
    """
    if config is None:
        raise TypeError("config must be a model config (dict or transformers config), got None")
    if not isinstance(config, Mapping) and not hasattr(config, "hidden_size") and not hasattr(config, "rope_theta") \
            and not hasattr(config, "rope_parameters"):
        raise TypeError(f"config must be a model config (dict or transformers config), got {type(config).__name__}")
    params = _cfg_get(config, "rope_parameters")
    scaling = _cfg_get(config, "rope_scaling")
    theta = _cfg_get(config, "rope_theta")
    if isinstance(params, Mapping):
        theta = params.get("rope_theta", theta)
        if scaling is None:
            scaling = params
    if theta is None:
        theta = 10000.0
    scaling = dict(scaling) if isinstance(scaling, Mapping) else None
    if scaling is not None:
        scaling.pop("rope_theta", None)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scaling = None if kind == "default" else {**scaling, "rope_type": kind}
    head_dim = _cfg_get(config, "head_dim")
    if head_dim is None and _cfg_get(config, "hidden_size") and _cfg_get(config, "num_attention_heads"):
        head_dim = int(_cfg_get(config, "hidden_size")) // int(_cfg_get(config, "num_attention_heads"))
    out = {"rope_theta": float(theta), "rope_scaling": scaling, "rope_dim": None if head_dim is None else int(head_dim)}
    _check_rope_scaling(out["rope_scaling"])
    return out


def _check_rope_scaling(scaling) -> None:
    if scaling is None:
        return
    if not isinstance(scaling, Mapping):
        raise TypeError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not supported by the SeerAttention gate; "
                         f"supported: {ROPE_TYPES}")
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings")}.get(kind, ())
    missing = [n for n in need if scaling.get(n) is None]
    if missing:
        raise ValueError(f"rope_scaling ({kind}) is missing {missing}")


def rope_inv_freq(theta: float, dim: int, scaling: Optional[Mapping] = None) -> np.ndarray:
    """Inverse frequencies (dim // 2,) float64 of rotate-half RoPE: ``theta^(-2f/dim)``, then
    the linear or llama3 frequency scaling of transformers' rope init functions."""
    inv = 1.0 / float(theta) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if scaling is None:
        return inv
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2.0 * math.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1.0 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, out)


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
    rope_scaling: Optional[Dict[str, Any]] = None
    rope_dim: Optional[int] = None  # rotary channels (the model's head_dim); None: all `hidden`

    def __post_init__(self):
        _check_rope_scaling(self.rope_scaling)
        self.rope_scaling = None if self.rope_scaling is None else dict(self.rope_scaling)
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
        if self.rope_dim is not None:
            self.rope_dim = check_positive_int(self.rope_dim, "rope_dim")
            if self.rope_dim % 2 or self.rope_dim > self.hidden:
                raise ValueError(f"rope_dim must be even and <= hidden ({self.hidden}), got {self.rope_dim}")

    @property
    def hidden(self) -> int:
        return int(self.wk.shape[2])

    @property
    def head_dim(self) -> int:
        return int(self.wk.shape[1] // len(self.k_pool))

    def inv_freq(self) -> np.ndarray:
        """The RoPE inverse frequencies (rope_dim // 2,) of the gate (float64)."""
        dim = self.hidden if self.rope_dim is None else self.rope_dim
        return rope_inv_freq(self.rope_theta, dim, self.rope_scaling)

    @classmethod
    def init(cls, head_dim: int, q_heads: int, kv_heads: Optional[int] = None, *, hidden: int = DEFAULT_HIDDEN,
             q_pool: Sequence[str] = ("avg",), k_pool: Sequence[str] = ("max", "min", "avg"),
             block_size: int = 64, rope_theta: float = 10000.0, rope_scaling: Optional[Mapping] = None,
             rope_dim: Optional[int] = None, rope_config=None, seed: int = 0,
             init_std: float = 0.02) -> "SeerGate":
        """A fresh gate, weights normal(0, init_std) (the official initialisation).

        hidden defaults to 128 (official). With one q pooling and hidden == head_dim the q map is
        the identity and k has one weight per query head (official); otherwise q has Hq weights
        and k has Hkv weights. ``rope_config`` (a model config) sets rope_theta, rope_scaling and
        rope_dim as :func:`rope_from_config` reads them.
        """
        if rope_config is not None:
            r = rope_from_config(rope_config)
            rope_theta, rope_scaling = r["rope_theta"], r["rope_scaling"]
            rope_dim = r["rope_dim"] if r["rope_dim"] is not None and r["rope_dim"] != hidden else None
        hidden = check_positive_int(hidden, "hidden")
        q_pool, k_pool = _check_pool(q_pool, "q_pool"), _check_pool(k_pool, "k_pool")
        kv_heads = q_heads if kv_heads is None else kv_heads
        rng = np.random.default_rng(seed)
        identity_q = len(q_pool) == 1 and hidden == head_dim
        wk_heads = q_heads if identity_q else kv_heads
        wk = rng.normal(0.0, init_std, (wk_heads, len(k_pool) * head_dim, hidden)).astype(np.float32)
        wq = None if identity_q else rng.normal(0.0, init_std, (q_heads, len(q_pool) * head_dim, hidden)).astype(np.float32)
        return cls(wk, wq, q_pool, k_pool, block_size, rope_theta, rope_scaling, rope_dim)

    def scores(self, q, k) -> np.ndarray:
        """Gate scores (B, Hq, nb, nb): softmax per query-block row, 0 above the diagonal (C++)."""
        q, k, _ = check_qkv(q, k)
        if q.shape[3] != self.head_dim:
            raise ValueError(f"gate was built for head dim {self.head_dim}, q has {q.shape[3]}")
        inv = self.inv_freq().astype(np.float32) if self.rope_theta > 0 else None
        return _core.seer_gate_scores(q, k, self.wq, self.wk, list(self.q_pool), list(self.k_pool),
                                      self.hidden, float(self.rope_theta), self.block_size, inv)

    def config(self) -> Dict:
        return {"q_pool": list(self.q_pool), "k_pool": list(self.k_pool), "block_size": self.block_size,
                "rope_theta": self.rope_theta, "rope_scaling": self.rope_scaling, "rope_dim": self.rope_dim}

    def copy(self) -> "SeerGate":
        return SeerGate(self.wk.copy(), None if self.wq is None else self.wq.copy(), self.q_pool, self.k_pool,
                        self.block_size, self.rope_theta, self.rope_scaling, self.rope_dim)


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
                     int(c["block_size"]), float(c["rope_theta"]), c.get("rope_scaling"), c.get("rope_dim"))
            for i, c in enumerate(cfg)]


_OFFICIAL_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.attn_gate\.mask_linear_([qk])\.weight$")


def parse_gate_type(gate_type: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The official ``seerattn_gate_type`` name (e.g. ``"Qavg_Kmaxminavg"``) as (q_pool, k_pool)."""
    m = re.fullmatch(r"Q((?:max|min|avg)+)_K((?:max|min|avg)+)", str(gate_type))
    if not m:
        raise ValueError(f"gate_type must look like 'Qavg_Kmaxminavg' (Q and K pooling lists of max, min, avg), "
                         f"got {gate_type!r}")
    split = lambda t: tuple(re.findall("max|min|avg", t))
    return _check_pool(split(m.group(1)), "gate_type (q)"), _check_pool(split(m.group(2)), "gate_type (k)")


def load_official_gates(source, *, gate_type: Optional[str] = None, block_size: Optional[int] = None,
                        rope_config=None) -> List[SeerGate]:
    """Gates trained by the official scripts (microsoft/SeerAttention ``distillation_prefill.py``).

    Parameters
    ----------
    source : str, path or dict
        ``attn_gate_weights.pth`` (a torch state dict with keys
        ``model.layers.{i}.self_attn.attn_gate.mask_linear_k.weight`` of shape
        (H, len(k_pool) * D, hidden), k channels in max, min, avg order, and ``mask_linear_q.weight``
        when the q map is not the identity), the directory holding it (its ``config.json``, when
        present, gives gate type, block size and RoPE), or the state dict itself.
    gate_type, block_size : optional
        ``seerattn_gate_type`` / ``seerattn_gate_block_size``; default from config.json, else
        ``"Qavg_Kmaxminavg"`` and 64 (official defaults).
    rope_config : model config, optional
        Where RoPE theta / scaling / head_dim come from (:func:`rope_from_config`); default
        config.json when present, else theta 10000 over the gate hidden size.

    Returns
    -------
    list of SeerGate, one per layer (layer indices must be 0 .. L-1).

    torch is needed only to read a ``.pth`` file (imported here).
    """
    import json
    import os

    cfg = None
    state = source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            cj = os.path.join(path, "config.json")
            if os.path.exists(cj):
                with open(cj) as f:
                    cfg = json.load(f)
            path = os.path.join(path, "attn_gate_weights.pth")
        if not os.path.exists(path):
            raise ValueError(f"source: no such file {path!r}")
        try:
            import torch
        except ImportError as exc:
            raise ImportError("load_official_gates needs torch to read a .pth file (pip install torch), "
                              "or pass the state dict itself") from exc
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"source must be a path or a state dict, got {type(source).__name__}")
    if gate_type is None:
        gate_type = (cfg or {}).get("seerattn_gate_type", "Qavg_Kmaxminavg")
    if block_size is None:
        block_size = int((cfg or {}).get("seerattn_gate_block_size", 64))
    if rope_config is None and cfg is not None:
        rope_config = cfg
    q_pool, k_pool = parse_gate_type(gate_type)
    per_layer: Dict[int, Dict[str, np.ndarray]] = {}
    for key, val in state.items():
        m = _OFFICIAL_KEY.search(str(key))
        if m:
            arr = val.detach().float().cpu().numpy() if hasattr(val, "detach") else np.asarray(val, np.float32)
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = arr
    if not per_layer:
        raise ValueError("source holds no '...layers.{i}.self_attn.attn_gate.mask_linear_k.weight' entries")
    if sorted(per_layer) != list(range(len(per_layer))):
        raise ValueError(f"source: gate layers must be 0 .. L-1, got {sorted(per_layer)}")
    rope = rope_from_config(rope_config) if rope_config is not None else None
    gates = []
    for i in range(len(per_layer)):
        w = per_layer[i]
        if "k" not in w:
            raise ValueError(f"source: layer {i} has no mask_linear_k.weight")
        wk, wq = w["k"], w.get("q")
        if wk.ndim != 3 or wk.shape[1] % len(k_pool):
            raise ValueError(f"source: layer {i} mask_linear_k.weight has shape {wk.shape}, not "
                             f"(H, {len(k_pool)} * D, hidden) for gate_type {gate_type!r}")
        hidden, D = wk.shape[2], wk.shape[1] // len(k_pool)
        if wq is None and (len(q_pool) != 1 or hidden != D):
            raise ValueError(f"source: layer {i} has no mask_linear_q.weight, which the official gate omits only with "
                             f"one q pooling and hidden == head_dim (gate_type {gate_type!r}, hidden {hidden}, D {D})")
        kw = {}
        if rope is not None:
            rd = rope["rope_dim"]
            kw = {"rope_theta": rope["rope_theta"], "rope_scaling": rope["rope_scaling"],
                  "rope_dim": None if rd is None or rd == hidden else rd}
        gates.append(SeerGate(wk, wq, q_pool, k_pool, block_size, **kw))
    return gates


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


def _rope_tables(nb: int, bs: int, inv: np.ndarray):
    ang = (np.arange(nb) * bs)[:, None] * inv[None, :]
    return np.cos(ang), np.sin(ang)


def _rope(x, cos, sin):
    """Rotate-half RoPE on the first 2 * cos.shape[-1] channels; the rest pass."""
    h = cos.shape[-1]
    a, b = x[..., :h], x[..., h:2 * h]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin, x[..., 2 * h:]], axis=-1)


def _rope_backward(dy, cos, sin):
    h = cos.shape[-1]
    da, db = dy[..., :h], dy[..., h:2 * h]
    return np.concatenate([da * cos + db * sin, db * cos - da * sin, dy[..., 2 * h:]], axis=-1)


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
        cos, sin = _rope_tables(nb, gate.block_size, gate.inv_freq())
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
        gate = gate.copy()
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

    Gate inputs (``capabilities.gate_inputs``): ``estimate(q, k, causal=True, q_gate=..,
    k_gate=..)`` scores blocks from q_gate / k_gate (the model's q / k before RoPE, as the
    official gate sees them; default q, k) while ``__call__`` attends with q, k, v.
    """

    name = "seerattention"
    paper = "Gao et al., SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs, 2024"
    pattern = "learned block gate (threshold or top-k per row)"
    params_struct = _core.SeerParams
    extra_defaults = {"gate": None}
    capabilities = Capabilities(noncausal=False, chunked=False, needs_fit=True, fittable=True, gate_inputs=True)
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

    def _estimate(self, q, k, causal, scale, q_gate=None, k_gate=None) -> BlockMask:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        q_gate = q if q_gate is None else q_gate
        k_gate = k if k_gate is None else k_gate
        g = self.gate_for(q_gate, k_gate)
        bs = g.block_size
        if Nq == 1:
            self.last_info = {"scores": None}
            return BlockMask.full(B, Hq, Nq, Nk, bs, bs)
        scores = g.scores(q_gate, k_gate)
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
