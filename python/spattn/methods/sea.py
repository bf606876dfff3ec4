"""SEA: the official estimator (Performer pass, encoder, CNN decoder), key selection, output
gates and distillation training; plus a training-free estimate that is not the paper's.

Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024; written
from the official code, gmlwns2000/sea-attention (``src/models/perlin_attention/attention.py``
``PerlinAttention.forward``, ``modules.py`` ``CausalConv2d`` / ``KeepRes`` / ``UpsampleFP32``,
``ops/kernels/resize_m_to_t.py``, ``ops/kernels/causal_resize_m_to_t.py`` ``scan_col``,
performer_pytorch ``FastAttention``) with the causal (OPT) configuration of ``scripts/opt.py``.

Estimator, per layer, with learned weights (a dict of numpy arrays, see :data:`WEIGHT_SHAPES`):

1. Performer pass (``FastAttention``): linear attention of (q, k) over the values
   ``[pos[:Nk] || V]`` (``pos`` = ``v_eye_learned_causal``, one row per key position). Causal:
   generalized ReLU features ``ReLU(D^-1/4 x P^T) + 1e-3`` with the model's query pre-scaled by
   ``scale`` (OPT scales q before attention); non-causal: softmax-kernel features
   ``F^-1/2 (exp(D^-1/4 x P^T - |x|^2 D^-1/2 / 2 - stab) + 1e-4)``, per-row stabiliser for q,
   one stabiliser per (batch row, key head) for k (performer_pytorch 1.1.4 ``amax(dim=(-1, -2))``);
   causal denominators add 1e-6 to every entry of the key running sum (``causal_linear_attention``).
   ``P`` (``projection``, F x D) are orthogonal random features
   (QR blocks, chi norms), F = int(D ln D / 8) (OPT runs: nbf = 8).
2. Encoder (``attention_predictor_enc``): ``[performer || V] (3D) -> Linear(3D, 2D) ->
   LayerNorm -> GELU`` per head; ``dec_row``: ``Linear(2D, 2 W/4)`` and ``ChannelSplit(2)`` to
   2H channels of width W/4 (channel 2h + s holds entries s W/4 .. (s+1) W/4 of head h).
3. CNN (``attention_predictor_cnn``): LayerNorm(W/4); two ``CausalConv2d(2H, 2H, 3, dilation 2)``
   + ReLU (taps t-4, t-2, t over queries, c-2, c, c+2 over columns); nearest upsample x4 in width;
   ``CausalConv2d(2H, H, 1, padding 1)`` whose width padding adds two bias-only columns; ``KeepRes``
   area-resizes the W + 2 columns back to W; LayerNorm(W). Softmax over W: the estimate.
4. Gates (``attention_predictor_dec_scaler``): ``(s0, s1) = Linear(2D, 2)`` on the encoder output.

Selection (C++ ``sea_select``, official ``causal_batch``): per query, the H rows of estimated
probabilities are ranked together, budget ``max(1, round(H k W / L))`` (torch.round); each kept
column expands on the per-query grid of the query's L visible keys: ``expansion="accuracy"``
(default, the paper's perplexities, ``resize_from_m_to_t``) attends every key of the column
(key j in column floor((j + 0.5) / L W - 1e-4)); ``expansion="speed"`` (``scan_col``) at most k
keys spread evenly over [round(c L / W), round((c+1) L / W)) (half up), key
``v_end - 1 - floor(i n / k')``. Both grids are computed in float32 as the official code does.
Speed-path deviation: the official Triton kernel (``__scan_col_4_compute``) evaluates
``floor(i n / k')`` as ``(i * (n / k')).to(int32)`` with the GPU's approximate float32 division;
measured on an H200 (Triton 3.6) for n <= 600, k <= 256, 2.2% of the keys come out one later
(none for columns of fewer than 30 keys), and some columns then repeat key v_end - 1 and miss
their first key (e.g. n = k' = 33). spattn uses the exact integer formula (the paper's settings,
W = 128 or 256 with L <= 2048, have columns of at most 16 keys, where both agree).

Output (``partial_attention_scaler``, ``context_output_method='mix'``):
``out = sigmoid(s1) * sigmoid(s0) * sparse + (1 - sigmoid(s1)) * mean``, ``sparse`` the softmax
attention over the selected keys (the spattn token-sparse kernel, O(N) memory) and ``mean`` the
causal running mean of V (non-causal: ``sum_j V_j pbar[col(j)]`` with pbar the estimate averaged
over queries, as official). A head that keeps no key outputs ``(1 - sigmoid(s1)) * mean``.

Training (:func:`train`): the official loss terms of the estimator on captured (q, k, v):
``0.1 * KL(teacher || estimate)`` (batch mean over B H Nq rows) + ``MSE`` (mean over all row x key
pairs) with the estimate expanded to keys (each key takes its column's logit, accuracy grid),
computed exactly from per-column teacher masses (no Nq x Nk buffer), + the context MSE of the
gated output against the exact attention output (``F.mse_loss(context_layer_truth, ...)``);
manual float64 gradients of every learned array (``pos``, encoder, dec_row, CNN, gates).

Deviations (all documented where they act): numpy draws the random features (same law as
performer_pytorch, other numbers); top-k ties go to the lower (head, column) index; the
non-causal path uses the causal (OPT) decoder with softmax-kernel features and the learned
positional table (the official BERT path has another CNN and identity values); the 10% training
grid jitter, the teacher losses on the student's own scores and the model knowledge distillation
are not reproduced (only the estimator learns here, the model is frozen); non-causal Nq > Nk
pairs query i with V row i + Nk - Nq (zeros before the first key); chunked prefill and decode
(Nq < Nk, bottom-right aligned) run the Performer over all visible keys but the CNN only over the
chunk's query rows, whose causal taps before the chunk read zeros (the official code keeps a
stateful CNN cache, ``StatefulCausalCNN``); the positional table bounds Nk (ValueError past it).

Training-free option (``weights=None``, the default): NOT the paper's estimator. The compressed
row is the FAVOR+ linear-attention estimate itself (softmax-kernel features, the accuracy-grid
column indicators as values, C++ ``sea_estimate``), no gates (plain sparse attention output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .. import _core, training
from .._validation import as_causal, as_scale, check_positive_int, check_qkv
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

EXPANSIONS = ("accuracy", "speed")
_GELU_C = 1.0 / math.sqrt(2.0)
_LN_EPS = 1e-5              # torch.nn.LayerNorm default
_GEN_EPS = 1e-3             # performer generalized_kernel kernel_epsilon
_SOFTMAX_EPS = 1e-4         # performer softmax_kernel eps
_CAUSAL_DEN_EPS = 1e-6      # performer causal_linear_attention(_noncuda) eps on the key cumsum
_LOG_TINY32 = math.log(np.finfo(np.float32).tiny)

# name -> shape in terms of H (heads), D (head dim), W (width), F (features), P (positions);
# the official module each comes from (PerlinAttention attribute).
WEIGHT_SHAPES: Dict[str, Tuple[str, ...]] = {
    "projection": ("F", "D"),       # performer.projection_matrix (fixed, not trained)
    "pos": ("P", "D"),              # v_eye_learned_causal[0, 0]
    "enc_w": ("2D", "3D"),          # attention_predictor_enc[0] (Linear)
    "enc_b": ("2D",),
    "enc_ln_w": ("2D",),            # attention_predictor_enc[1] (LayerNorm)
    "enc_ln_b": ("2D",),
    "row_w": ("2W/4", "2D"),        # attention_predictor_dec_row[0] (Linear), ChannelSplit(2) after it
    "row_b": ("2W/4",),
    "ln1_w": ("W/4",),              # attention_predictor_cnn cnn.lnorm1
    "ln1_b": ("W/4",),
    "conv1_w": ("2H", "2H", "3", "3"),  # cnn.keepres.conv1 weight[:, :, :3, :] (CausalConv2d, dilation 2)
    "conv1_b": ("2H",),
    "conv2_w": ("2H", "2H", "3", "3"),  # cnn.keepres.conv2
    "conv2_b": ("2H",),
    "conv4_w": ("H", "2H"),         # cnn.keepres.conv4 weight[:, :, 0, 0] (1x1, width padding 1)
    "conv4_b": ("H",),
    "ln2_w": ("W",),                # cnn.lnorm2
    "ln2_b": ("W",),
    "gate_w": ("2", "2D"),          # attention_predictor_dec_scaler[0] (Linear)
    "gate_b": ("2",),
}
TRAINED = tuple(n for n in WEIGHT_SHAPES if n != "projection")


# ---------------------------------------------------------------------------------------- weights
def default_nb_features(head_dim: int, nbf: int = 8) -> int:
    """int(D ln D / nbf): the official ``performer_nb_features`` (OPT runs: nbf = 8), at least 1."""
    return max(1, int(head_dim * math.log(head_dim) / nbf))


def orthogonal_features(m: int, d: int, seed: int = 0) -> np.ndarray:
    """Performer's orthogonal random features (m x d): stacked d x d orthogonal blocks (QR of
    Gaussian matrices, transposed), each row rescaled by the norm of an independent Gaussian
    vector (performer_pytorch ``gaussian_orthogonal_random_matrix``, scaling 0; numpy draws)."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-m // d)):
        qmat, _ = np.linalg.qr(rng.standard_normal((d, d)))
        blocks.append(qmat.T)
    w = np.concatenate(blocks, axis=0)[:m]
    return (w * np.linalg.norm(rng.standard_normal((m, d)), axis=1)[:, None]).astype(np.float32)


def weight_shapes(heads: int, head_dim: int, width: int, nb_features: int, max_positions: int) -> Dict[str, tuple]:
    """The concrete shape of every array of :data:`WEIGHT_SHAPES`."""
    env = {"H": heads, "2H": 2 * heads, "D": head_dim, "2D": 2 * head_dim, "3D": 3 * head_dim, "W": width,
           "W/4": width // 4, "2W/4": 2 * (width // 4), "F": nb_features, "P": max_positions, "2": 2, "3": 3}
    return {n: tuple(env[s] for s in shp) for n, shp in WEIGHT_SHAPES.items()}


def init_weights(heads: int, head_dim: int, *, width: int = 128, max_positions: int = 2048,
                 nb_features: Optional[int] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded fresh weights with the official initialisation laws (float64).

    Linear and conv layers: PyTorch's default uniform(+-1/sqrt(fan_in)) for weights and biases
    (the causal convs take it from ``nn.Conv2d(in, out, 3)``, fan_in = 9 in); LayerNorms weight 1,
    bias 0; ``pos`` standard normal (``torch.randn``); ``projection`` orthogonal random features.

    Parameters
    ----------
    heads, head_dim : int
        Query heads H and head dimension D of the layer.
    width : int, default 128
        Compressed width W (a multiple of 4; official config default 128, OPT runs 256).
    max_positions : int, default 2048
        Rows of the positional table (OPT: ``max_position_embeddings`` = 2048); keys beyond it
        cannot be estimated.
    nb_features : int, optional
        Random features F; default int(D ln D / 8).
    seed : int
        Seed of every draw.
    """
    heads = check_positive_int(heads, "heads")
    head_dim = check_positive_int(head_dim, "head_dim")
    width = check_positive_int(width, "width")
    max_positions = check_positive_int(max_positions, "max_positions")
    if width % 4:
        raise ValueError(f"width must be a multiple of 4 (the CNN upsamples W/4 by 4), got {width}")
    F = default_nb_features(head_dim) if nb_features is None else check_positive_int(nb_features, "nb_features")
    shapes = weight_shapes(heads, head_dim, width, F, max_positions)
    rng = np.random.default_rng(seed)

    def uniform(shape, fan_in):
        b = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-b, b, shape)

    w: Dict[str, np.ndarray] = {"projection": orthogonal_features(F, head_dim, seed).astype(np.float64)}
    w["pos"] = rng.standard_normal(shapes["pos"])
    w["enc_w"], w["enc_b"] = uniform(shapes["enc_w"], 3 * head_dim), uniform(shapes["enc_b"], 3 * head_dim)
    w["enc_ln_w"], w["enc_ln_b"] = np.ones(2 * head_dim), np.zeros(2 * head_dim)
    w["row_w"], w["row_b"] = uniform(shapes["row_w"], 2 * head_dim), uniform(shapes["row_b"], 2 * head_dim)
    w["ln1_w"], w["ln1_b"] = np.ones(width // 4), np.zeros(width // 4)
    for c in ("conv1", "conv2"):
        w[c + "_w"], w[c + "_b"] = uniform(shapes[c + "_w"], 2 * heads * 9), uniform(shapes[c + "_b"], 2 * heads * 9)
    w["conv4_w"], w["conv4_b"] = uniform(shapes["conv4_w"], 2 * heads), uniform(shapes["conv4_b"], 2 * heads)
    w["ln2_w"], w["ln2_b"] = np.ones(width), np.zeros(width)
    w["gate_w"], w["gate_b"] = uniform(shapes["gate_w"], 2 * head_dim), uniform(shapes["gate_b"], 2 * head_dim)
    return w


def check_weights(weights: Any, name: str = "weights") -> Dict[str, np.ndarray]:
    """Validate a weights dict (names, dimensions, consistent shapes, finite values); returns it."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{name} must be a dict of numpy arrays (see spattn.methods.sea.WEIGHT_SHAPES), "
                        f"got {type(weights).__name__}")
    missing = [n for n in WEIGHT_SHAPES if n not in weights]
    extra = [n for n in weights if n not in WEIGHT_SHAPES]
    if missing or extra:
        raise ValueError(f"{name}: missing arrays {missing}, unknown arrays {extra}")
    arr = {}
    for n in WEIGHT_SHAPES:
        a = np.asarray(weights[n])
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{name}[{n!r}] must be a float array, got dtype {a.dtype}")
        if a.ndim != len(WEIGHT_SHAPES[n]):
            raise ValueError(f"{name}[{n!r}] must have {len(WEIGHT_SHAPES[n])} dims {WEIGHT_SHAPES[n]}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}[{n!r}] holds NaN or inf")
        arr[n] = a
    H = arr["conv4_w"].shape[0]
    F, D = arr["projection"].shape
    W = arr["ln2_w"].shape[0]
    want = weight_shapes(H, D, W, F, arr["pos"].shape[0])
    if W % 4:
        raise ValueError(f"{name}: width W = {W} (ln2_w) must be a multiple of 4")
    for n, shp in want.items():
        if arr[n].shape != shp:
            raise ValueError(f"{name}[{n!r}] has shape {arr[n].shape}; with H={H}, D={D}, W={W}, F={F} it must be {shp}")
    return arr


def weights_info(weights: Mapping[str, np.ndarray]) -> Dict[str, int]:
    """heads, head_dim, width, nb_features, max_positions of a weights dict."""
    return {"heads": int(weights["conv4_w"].shape[0]), "head_dim": int(weights["projection"].shape[1]),
            "width": int(weights["ln2_w"].shape[0]), "nb_features": int(weights["projection"].shape[0]),
            "max_positions": int(weights["pos"].shape[0])}


def save_weights(path: str, weights: Mapping[str, np.ndarray]) -> None:
    """Write SEA weights (one layer) to an ``.npz`` artifact (:func:`spattn.training.save_npz`)."""
    w = check_weights(weights)
    training.save_npz(path, {n: np.asarray(a) for n, a in w.items()}, {"method": "sea", **weights_info(w)})


def load_weights(path: str) -> Dict[str, np.ndarray]:
    """Read SEA weights written by :func:`save_weights` (float64 arrays)."""
    arrays, cfg = training.load_npz(path)
    if not isinstance(cfg, dict) or cfg.get("method") != "sea":
        raise ValueError(f"{path} is not a SEA weights artifact")
    return check_weights({n: a.astype(np.float64) for n, a in arrays.items()}, "path")


# Official parameter names (PerlinAttention's state dict, read from attention.py / modules.py:
# ModuleBenchmark wraps each CNN stage as ``.module``, KeepRes holds its layers in ``.net``).
OFFICIAL_NAMES: Dict[str, str] = {
    "projection": "performer.projection_matrix",
    "pos": "v_eye_learned_causal",
    "enc_w": "attention_predictor_enc.0.weight", "enc_b": "attention_predictor_enc.0.bias",
    "enc_ln_w": "attention_predictor_enc.1.weight", "enc_ln_b": "attention_predictor_enc.1.bias",
    "row_w": "attention_predictor_dec_row.0.weight", "row_b": "attention_predictor_dec_row.0.bias",
    "ln1_w": "attention_predictor_cnn.0.module.weight", "ln1_b": "attention_predictor_cnn.0.module.bias",
    "conv1_w": "attention_predictor_cnn.1.module.net.0.module.weight",
    "conv1_b": "attention_predictor_cnn.1.module.net.0.module.bias",
    "conv2_w": "attention_predictor_cnn.1.module.net.2.module.weight",
    "conv2_b": "attention_predictor_cnn.1.module.net.2.module.bias",
    "conv4_w": "attention_predictor_cnn.1.module.net.5.module.weight",
    "conv4_b": "attention_predictor_cnn.1.module.net.5.module.bias",
    "ln2_w": "attention_predictor_cnn.2.module.weight", "ln2_b": "attention_predictor_cnn.2.module.bias",
    "gate_w": "attention_predictor_dec_scaler.0.weight", "gate_b": "attention_predictor_dec_scaler.0.bias",
}


def from_official_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> Dict[str, np.ndarray]:
    """SEA weights (float64) from one official ``PerlinAttention`` state dict (tensors or arrays).

    Keys are ``prefix + name`` with the names of :data:`OFFICIAL_NAMES`, checked against the state
    dict of the official module itself (notebooks/data/sea_official_crosscheck, fixture test); in
    an official OPT model the prefix of layer i is
    ``model.decoder.layers.{i}.self_attn.perlin_self_attention.attention.`` (no released checkpoint
    was tried). The causal convs keep the three live rows
    of their (out, in, 5, 3) kernels (rows 3, 4 are masked to zero by ``CausalConv2d``), the 1x1
    conv its (out, in) matrix, ``v_eye_learned_causal`` its (P, D) table. Other keys are ignored.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    out = {}
    for ours, theirs in OFFICIAL_NAMES.items():
        key = prefix + theirs
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r} (the official name of {ours!r})")
        a = state_dict[key]
        a = a.detach().cpu().double().numpy() if hasattr(a, "detach") else np.asarray(a, np.float64)
        if ours in ("conv1_w", "conv2_w"):
            if a.ndim != 4 or a.shape[2:] != (5, 3):
                raise ValueError(f"{key} must be a causal 3x3 kernel of shape (out, in, 5, 3), got {a.shape}")
            a = a[:, :, :3, :]
        elif ours == "conv4_w":
            a = a.reshape(a.shape[0], a.shape[1])
        elif ours == "pos":
            a = a.reshape(a.shape[-2], a.shape[-1])
        out[ours] = np.ascontiguousarray(a, np.float64)
    return check_weights(out, "state_dict")


# ---------------------------------------------------------------------------------------- grids
def prefix_lengths(q_len: int, kv_len: int, causal: bool) -> np.ndarray:
    """Visible keys L_i of every query (bottom-right aligned when causal)."""
    i = np.arange(q_len)
    return np.clip(i + kv_len - q_len + 1, 0, kv_len) if causal else np.full(q_len, kv_len)


def accuracy_column(j, L, width: int) -> np.ndarray:
    """Accuracy-grid column of key j in a prefix of L keys, as ``resize_from_m_to_t`` computes it:
    floor(((j + 0.5) / L) * W - 1e-4) in float32, one rounded operation at a time (may be W for
    the last keys of very long prefixes: no column)."""
    x = np.asarray(j).astype(np.float32) + np.float32(0.5)
    x = x / np.asarray(L).astype(np.float32)
    x = x * np.float32(width)
    x = x - np.float32(1e-4)
    return np.floor(x).astype(np.int64)


def accuracy_starts(L: np.ndarray, width: int) -> np.ndarray:
    """First key of every column (len(L), width + 1) on the accuracy grid (see :func:`accuracy_column`)."""
    L = np.asarray(L, np.int64)[:, None]
    c = np.arange(width + 1)[None, :]
    Ls = np.maximum(L, 1)
    j = np.clip(np.ceil((c + 1e-4) * Ls.astype(np.float64) / width - 0.5), 0, L).astype(np.int64)
    for _ in range(8):  # exact-arithmetic guess, corrected by the float32 column (monotone in j)
        down = (j > 0) & (accuracy_column(j - 1, Ls, width) >= c)
        up = (j < L) & (accuracy_column(j, Ls, width) < c)
        if not (down.any() or up.any()):
            break
        j = j - down + (up & ~down)
    j[:, 0] = 0
    return np.where(L > 0, j, 0)


def column_counts(q_len: int, kv_len: int, width: int, causal: bool) -> np.ndarray:
    """Keys per column of every query (Nq, width) on the accuracy grid."""
    return np.diff(accuracy_starts(prefix_lengths(q_len, kv_len, causal), width), axis=1)


# ---------------------------------------------------------------------------------------- layers
def _erf(x):
    from scipy.special import erf

    return erf(x)


def _layernorm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    inv = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + _LN_EPS)
    xh = xc * inv
    return xh * g + b, (xh, inv)


def _layernorm_backward(dy, g, cache):
    xh, inv = cache
    dxh = dy * g
    dx = inv * (dxh - dxh.mean(-1, keepdims=True) - xh * (dxh * xh).mean(-1, keepdims=True))
    ax = tuple(range(dy.ndim - 1))
    return dx, (dy * xh).sum(ax), dy.sum(ax)


def _shift(x: np.ndarray, st: int, sw: int) -> np.ndarray:
    """y[..., t, w] = x[..., t - st, w + sw], zero outside (st >= 0: look back in time)."""
    y = np.zeros_like(x)
    T, W = x.shape[-2], x.shape[-1]
    if st >= T or abs(sw) >= W:
        return y
    if sw >= 0:
        y[..., st:T, 0:W - sw] = x[..., 0:T - st, sw:W]
    else:
        y[..., st:T, -sw:W] = x[..., 0:T - st, 0:W + sw]
    return y


def _unshift(g: np.ndarray, st: int, sw: int) -> np.ndarray:
    """Adjoint of _shift."""
    y = np.zeros_like(g)
    T, W = g.shape[-2], g.shape[-1]
    if st >= T or abs(sw) >= W:
        return y
    if sw >= 0:
        y[..., 0:T - st, sw:W] = g[..., st:T, 0:W - sw]
    else:
        y[..., 0:T - st, 0:W + sw] = g[..., st:T, -sw:W]
    return y


# CausalConv2d(k=3, dilation=2, padding=2, causal): kernel row r reads query t - 4 + 2 r, column
# s reads compressed column c - 2 + 2 s (official weight rows 3, 4 are masked to zero).
_TAPS = [(r, s, 2 * (2 - r), 2 * (s - 1)) for r in range(3) for s in range(3)]


def _conv(x, w, b):
    out = np.broadcast_to(b[None, :, None, None], (x.shape[0], w.shape[0]) + x.shape[2:]).copy()
    for r, s, st, sw in _TAPS:
        out += np.einsum("oi,bitw->botw", w[:, :, r, s], _shift(x, st, sw), optimize=True)
    return out


def _conv_backward(g, w, x):
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for r, s, st, sw in _TAPS:
        dw[:, :, r, s] = np.einsum("botw,bitw->oi", g, _shift(x, st, sw), optimize=True)
        dx += _unshift(np.einsum("oi,botw->bitw", w[:, :, r, s], g, optimize=True), st, sw)
    return dx, dw, g.sum(axis=(0, 2, 3))


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """F.interpolate(mode='area') along one axis as a matrix (n_out x n_in): adaptive average
    pooling, output i averages inputs [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
    A = np.zeros((n_out, n_in))
    for i in range(n_out):
        s, e = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        A[i, s:e] = 1.0 / (e - s)
    return A


# ---------------------------------------------------------------------------------------- performer
def performer_features(x: np.ndarray, proj: np.ndarray, causal: bool, is_query: bool,
                       stab: Optional[float] = None) -> np.ndarray:
    """performer_pytorch kernels on rows of x (n x D): causal ``generalized_kernel`` (ReLU),
    non-causal ``softmax_kernel`` (q: per-row stabiliser; k: the given per-(b, head) ``stab``)."""
    D = x.shape[-1]
    xn = x * D ** -0.25
    dd = xn @ proj.T
    if causal:
        return np.maximum(dd, 0) + _GEN_EPS
    diag = (x * x).sum(-1, keepdims=True) / 2.0 * D ** -0.5
    s = dd.max(-1, keepdims=True) if is_query else stab
    return proj.shape[0] ** -0.5 * (np.exp(dd - diag - s) + _SOFTMAX_EPS)


def _softmax_key_stab(k: np.ndarray, proj: np.ndarray) -> float:
    """The max of one (b, head)'s key projections (k: n x D): performer_pytorch 1.1.4
    ``softmax_kernel`` stabilises keys with ``torch.amax(data_dash, dim=(-1, -2))``, one value per
    batch row and head (not one over the whole tensor); it does not cancel because of the +1e-4."""
    D = k.shape[-1]
    return float(np.max((k * D ** -0.25) @ proj.T)) if k.shape[0] else 0.0


def _causal_product(fq, fk, vals, offset, chunk=256):
    """num_i = sum_{j <= i + offset} (fq_i . fk_j) vals_j and den_i = sum_j fq_i . fk_j, by key
    chunks with a running state (memory O((Nq + Nk) F + F E))."""
    Nq, Nk = fq.shape[0], fk.shape[0]
    num = np.zeros((Nq, vals.shape[1]), fq.dtype)
    den = np.zeros(Nq, fq.dtype)
    S = np.zeros((fq.shape[1], vals.shape[1]), fq.dtype)
    z = np.zeros(fq.shape[1], fq.dtype)
    for j0 in range(0, Nk, chunk):
        j1 = min(Nk, j0 + chunk)
        i0, i1 = int(np.clip(j0 - offset, 0, Nq)), int(np.clip(j1 - offset, 0, Nq))
        if i1 > i0:
            A = fq[i0:i1] @ fk[j0:j1].T
            A *= np.arange(j0, j1)[None, :] <= (np.arange(i0, i1) + offset)[:, None]
            num[i0:i1] = fq[i0:i1] @ S + A @ vals[j0:j1]
            den[i0:i1] = fq[i0:i1] @ z + A.sum(1)
        S += fk[j0:j1].T @ vals[j0:j1]
        z += fk[j0:j1].sum(0)
    return num, den


def _causal_product_t(fq, fk, G, offset, chunk=256):
    """Adjoint of the numerator of _causal_product in vals: d_j = sum_{i: i + offset >= j} (fq_i . fk_j) G_i."""
    Nq, Nk = fq.shape[0], fk.shape[0]
    d = np.zeros((Nk, G.shape[1]), fq.dtype)
    S = np.zeros((fq.shape[1], G.shape[1]), fq.dtype)
    starts = list(range(0, Nk, chunk))
    for j0 in reversed(starts):
        j1 = min(Nk, j0 + chunk)
        i0, i1 = int(np.clip(j0 - offset, 0, Nq)), int(np.clip(j1 - offset, 0, Nq))
        d[j0:j1] = fk[j0:j1] @ S
        if i1 > i0:
            A = fq[i0:i1] @ fk[j0:j1].T
            A *= np.arange(j0, j1)[None, :] <= (np.arange(i0, i1) + offset)[:, None]
            d[j0:j1] += A.T @ G[i0:i1]
            S += fq[i0:i1].T @ G[i0:i1]
    return d


def performer_pass(q, k, vals, proj, *, causal: bool, scale: float):
    """The Performer context (B, Hq, Nq, E) of values ``vals`` (B, Hkv or 1, Nk, E) and, for
    the backward pass, the features and denominators per (b, h)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    dt = vals.dtype
    out = np.zeros((B, Hq, Nq, vals.shape[-1]), dt)
    cache = {}
    offset = Nk - Nq if causal else None
    for b in range(B):
        for hk in range(Hkv):
            stab = None if causal else _softmax_key_stab(k[b, hk].astype(dt), proj)
            fk = performer_features(k[b, hk].astype(dt), proj, causal, False, stab)
            vv = vals[b, min(hk, vals.shape[1] - 1)]
            for h in range(hk * g, (hk + 1) * g):
                # OPT pre-scales its query before attention; the BERT (non-causal) path does not.
                qx = q[b, h].astype(dt) * (scale if causal else 1.0)
                fq = performer_features(qx, proj, causal, True)
                if causal:
                    num, den = _causal_product(fq, fk, vv, offset)
                    # causal_linear_attention(_noncuda) adds eps = 1e-6 to every entry of the key
                    # running sum: den = fq . (sum_j fk_j + 1e-6)
                    den = den + _CAUSAL_DEN_EPS * fq.sum(-1)
                else:
                    num, den = fq @ (fk.T @ vv), fq @ fk.sum(0)
                ok = den > 0
                out[b, h] = np.where(ok[:, None], num / np.where(ok, den, 1)[:, None], 0)
                cache[(b, h)] = (fq, fk, np.where(ok, den, np.inf))
    return out, cache


# ---------------------------------------------------------------------------------------- forward
def _query_values(v: np.ndarray, Nq: int) -> np.ndarray:
    """V row paired with each query (official ``v[..., -T_DST:, :]``: bottom-right aligned; zeros
    for queries before the first key)."""
    Nk = v.shape[2]
    if Nq <= Nk:
        return v[:, :, Nk - Nq:]
    out = np.zeros(v.shape[:2] + (Nq, v.shape[3]), v.dtype)
    out[:, :, Nq - Nk:] = v
    return out


def estimator_forward(weights: Mapping[str, np.ndarray], q, k, v, *, causal: bool, scale: float,
                      keep_cache: bool = False):
    """The learned estimator: logits (B, Hq, Nq, W) after LayerNorm(W) and gate logits
    (B, Hq, Nq, 2) = (s0, s1); with ``keep_cache`` also the intermediates for :func:`estimator_backward`.

    Computed in the dtype of ``weights`` (float64 for training, float32 for inference)."""
    w = weights
    dt = w["enc_w"].dtype
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    P = w["pos"].shape[0]
    if Nk > P:
        raise ValueError(f"sea: the positional table (weights['pos']) has {P} rows but Nk = {Nk}; "
                         "init the weights with max_positions >= Nk")
    vv = v.astype(dt)
    vals = np.concatenate([np.broadcast_to(w["pos"][None, None, :Nk], (B, Hkv, Nk, D)), vv], -1)
    perf, pcache = performer_pass(q, k, vals, w["projection"].astype(dt), causal=causal, scale=scale)
    vq = np.repeat(_query_values(vv, Nq), g, axis=1)
    x = np.concatenate([perf, vq], -1)                                # (B, Hq, Nq, 3D)
    a = x @ w["enc_w"].T + w["enc_b"]
    n, ln0 = _layernorm(a, w["enc_ln_w"], w["enc_ln_b"])
    e = 0.5 * n * (1.0 + _erf(n * _GELU_C))
    gates = e @ w["gate_w"].T + w["gate_b"]
    r = e @ w["row_w"].T + w["row_b"]                                 # (B, Hq, Nq, 2 W/4)
    W4 = r.shape[-1] // 2
    W = 4 * W4
    c0 = r.reshape(B, Hq, Nq, 2, W4).transpose(0, 1, 3, 2, 4).reshape(B, 2 * Hq, Nq, W4)
    l1, ln1 = _layernorm(c0, w["ln1_w"], w["ln1_b"])
    a1 = _conv(l1, w["conv1_w"], w["conv1_b"])
    h1 = np.maximum(a1, 0)
    a2 = _conv(h1, w["conv2_w"], w["conv2_b"])
    h2 = np.maximum(a2, 0)
    u = np.repeat(h2, 4, axis=-1)                                     # nearest upsample x4 in width
    ypad = np.broadcast_to(w["conv4_b"][None, :, None, None], (B, Hq, Nq, W + 2)).copy()
    ypad[..., 1:W + 1] += np.einsum("oi,bitw->botw", w["conv4_w"], u, optimize=True)
    A = area_matrix(W + 2, W).astype(dt)
    z0 = ypad @ A.T
    z, ln2 = _layernorm(z0, w["ln2_w"], w["ln2_b"])
    if not keep_cache:
        return z, gates, None
    cache = dict(pcache=pcache, x=x, ln0=ln0, n=n, e=e, ln1=ln1, l1=l1, a1=a1, h1=h1, a2=a2, u=u, A=A, ln2=ln2,
                 shape=(B, Hq, Nq, W4), causal=causal, Nk=Nk)
    return z, gates, cache


def estimator_backward(weights: Mapping[str, np.ndarray], dz: np.ndarray, dgates: np.ndarray,
                       cache: dict) -> Dict[str, np.ndarray]:
    """Exact gradients of every array of :data:`TRAINED` from dL/dlogits and dL/dgates."""
    w = weights
    B, Hq, Nq, W4 = cache["shape"]
    W = 4 * W4
    grads: Dict[str, np.ndarray] = {}
    dz0, grads["ln2_w"], grads["ln2_b"] = _layernorm_backward(dz, w["ln2_w"], cache["ln2"])
    dypad = dz0 @ cache["A"]
    grads["conv4_b"] = dypad.sum(axis=(0, 2, 3))
    dyi = dypad[..., 1:W + 1]
    grads["conv4_w"] = np.einsum("botw,bitw->oi", dyi, cache["u"], optimize=True)
    du = np.einsum("oi,botw->bitw", w["conv4_w"], dyi, optimize=True)
    dh2 = du.reshape(du.shape[:-1] + (W4, 4)).sum(-1) * (cache["a2"] > 0)
    dh1, grads["conv2_w"], grads["conv2_b"] = _conv_backward(dh2, w["conv2_w"], cache["h1"])
    dh1 = dh1 * (cache["a1"] > 0)
    dl1, grads["conv1_w"], grads["conv1_b"] = _conv_backward(dh1, w["conv1_w"], cache["l1"])
    dc0, grads["ln1_w"], grads["ln1_b"] = _layernorm_backward(dl1, w["ln1_w"], cache["ln1"])
    dr = dc0.reshape(B, Hq, 2, Nq, W4).transpose(0, 1, 3, 2, 4).reshape(B, Hq, Nq, 2 * W4)
    e = cache["e"]
    grads["row_w"] = np.einsum("bhno,bhni->oi", dr, e, optimize=True)
    grads["row_b"] = dr.sum(axis=(0, 1, 2))
    grads["gate_w"] = np.einsum("bhno,bhni->oi", dgates, e, optimize=True)
    grads["gate_b"] = dgates.sum(axis=(0, 1, 2))
    de = dr @ w["row_w"] + dgates @ w["gate_w"]
    n = cache["n"]
    dn = de * (0.5 * (1.0 + _erf(n * _GELU_C)) + n * np.exp(-0.5 * n * n) / math.sqrt(2 * math.pi))
    da, grads["enc_ln_w"], grads["enc_ln_b"] = _layernorm_backward(dn, w["enc_ln_w"], cache["ln0"])
    grads["enc_w"] = np.einsum("bhno,bhni->oi", da, cache["x"], optimize=True)
    grads["enc_b"] = da.sum(axis=(0, 1, 2))
    D = w["pos"].shape[1]
    dpos_part = da @ w["enc_w"][:, :D]                              # dL/d(performer output, pos half)
    dpos = np.zeros_like(w["pos"])
    Nk = cache["Nk"]
    offset = Nk - Nq
    for (b, h), (fq, fk, den) in cache["pcache"].items():
        G = dpos_part[b, h] / den[:, None]
        if cache["causal"]:
            dpos[:Nk] += _causal_product_t(fq, fk, G, offset)
        else:
            dpos[:Nk] += fk @ (fq.T @ G)
    grads["pos"] = dpos
    return grads


# ---------------------------------------------------------------------------------------- outputs
def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the W columns)."""
    m = z.max(-1, keepdims=True)
    e = np.exp(z - m)
    return e / e.sum(-1, keepdims=True)


def select(probs: np.ndarray, kv_len: int, *, k: int, causal: bool, expansion: str = "accuracy") -> TokenIndices:
    """Official key selection from estimated probabilities (B, Hq, Nq, W) (C++ ``sea_select``):
    heads ranked together, budget max(1, round(H k W / L)), accuracy or speed expansion."""
    if expansion not in EXPANSIONS:
        raise ValueError(f"expansion must be one of {EXPANSIONS}, got {expansion!r}")
    p = _core.SeaParams(k=k, compressed_width=int(probs.shape[-1]))
    idx = _core.sea_select(np.ascontiguousarray(probs, np.float32), int(kv_len), bool(causal), p,
                           expansion == "speed")
    return TokenIndices(idx, 1, int(kv_len), assume_sorted=True)


def average_context(v: np.ndarray, q_len: int, *, causal: bool, probs: Optional[np.ndarray] = None,
                    group: int = 1) -> np.ndarray:
    """The official ``average_context_layer`` (B, Hq, Nq, Dv): causal, the running mean of V over
    each query's visible keys; non-causal, ``sum_j V_j pbar[col(j)]`` with pbar the estimate
    averaged over queries (``resize_from_m_to_t`` of ``estimated_attention_probs.mean(-2)``)."""
    B, Hkv, Nk, Dv = v.shape
    vd = v.astype(np.float64)
    if causal:
        cs = np.cumsum(vd, axis=2)
        L = prefix_lengths(q_len, Nk, True)
        out = np.zeros((B, Hkv, q_len, Dv))
        ok = L > 0
        out[:, :, ok] = cs[:, :, L[ok] - 1] / L[ok][:, None]
        return np.repeat(out, group, axis=1)
    W = probs.shape[-1]
    pbar = probs.astype(np.float64).mean(2)                          # (B, Hq, W)
    starts = accuracy_starts(np.array([Nk]), W)[0]
    col = np.searchsorted(starts, np.arange(Nk), side="right") - 1
    wkey = np.where(col < W, pbar[..., np.minimum(col, W - 1)], 0.0)  # (B, Hq, Nk)
    vq = np.repeat(vd, group, axis=1)
    return np.broadcast_to(np.einsum("bhj,bhjd->bhd", wkey, vq)[:, :, None], (B, Hkv * group, q_len, Dv)).copy()


def _average_context_backward(dmean: np.ndarray, v: np.ndarray, probs: np.ndarray, group: int) -> np.ndarray:
    """dL/dlogits through the non-causal average_context (pbar = mean over queries of softmax)."""
    B, Hq, Nq, W = probs.shape
    Nk = v.shape[2]
    vq = np.repeat(v.astype(np.float64), group, axis=1)
    dw_key = np.einsum("bhd,bhjd->bhj", dmean.sum(2), vq)               # dL/d(weight of key j)
    starts = accuracy_starts(np.array([Nk]), W)[0]
    col = np.searchsorted(starts, np.arange(Nk), side="right") - 1
    dpbar = np.zeros((B, Hq, W))
    ok = col < W
    np.add.at(dpbar, (slice(None), slice(None), col[ok]), dw_key[..., ok])
    dp = np.broadcast_to(dpbar[:, :, None] / Nq, probs.shape)
    return probs * (dp - (probs * dp).sum(-1, keepdims=True))


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def mix_output(sparse: np.ndarray, mean: np.ndarray, gates: np.ndarray) -> np.ndarray:
    """``sigmoid(s1) * sigmoid(s0) * sparse + (1 - sigmoid(s1)) * mean`` (official 'mix')."""
    g0, g1 = sigmoid(gates[..., 0:1]), sigmoid(gates[..., 1:2])
    return g1 * (g0 * sparse) + (1 - g1) * mean


# ---------------------------------------------------------------------------------------- training
def distillation_loss(z: np.ndarray, mass: np.ndarray, psq: np.ndarray, plogp: np.ndarray, counts: np.ndarray,
                      nk: int) -> Tuple[float, np.ndarray, int]:
    """The official estimate loss ``0.1 KL(P || Q)`` (batch mean over rows) + ``MSE(Q, P)`` (mean
    over all row x key pairs), Q the softmax over keys of the expanded logits z (every key takes
    its column's logit, accuracy grid), from the teacher's column masses; and dL/dz.

    Numerical guard: the softmax over keys is taken with the maximum over key-holding columns,
    so no row can underflow to an empty estimate; the third result counts the rows whose plain
    W-softmax (the estimate the selection reads) puts less than float32's smallest normal on
    their key-holding columns, i.e. rows that would have underflowed without the guard.
    """
    n = counts[None, None].astype(np.float64)
    valid = n > 0
    zm = np.where(valid, z, -np.inf)
    mx = zm.max(-1, keepdims=True)
    row_ok = np.isfinite(mx)[..., 0] & (mass.sum(-1) > 0)
    mx = np.where(np.isfinite(mx), mx, 0)
    ez = np.where(valid, np.exp(zm - mx), 0.0)
    Z = (n * ez).sum(-1, keepdims=True)
    Z = np.where(Z > 0, Z, 1)
    qc = ez / Z
    logq = np.where(valid, zm - mx - np.log(Z), 0.0)
    rows = z.shape[0] * z.shape[1] * z.shape[2]
    kl_rows = plogp - (mass * logq).sum(-1)
    S2 = (n * qc * qc).sum(-1, keepdims=True)
    X = (qc * mass).sum(-1, keepdims=True)
    sq_rows = S2[..., 0] - 2 * X[..., 0] + psq
    loss = 0.1 * np.where(row_ok, kl_rows, 0).sum() / rows + np.where(row_ok, sq_rows, 0).sum() / (rows * nk)
    d_kl = -mass + n * qc
    d_sq = 2 * n * qc * qc - 2 * n * qc * S2 - 2 * (mass * qc - n * qc * X)
    dz = (0.1 * d_kl / rows + d_sq / (rows * nk)) * row_ok[..., None] * valid
    zmax_all = z.max(-1, keepdims=True)
    lse_all = np.log(np.exp(z - zmax_all).sum(-1)) + zmax_all[..., 0]
    lse_valid = np.log(np.where(valid, np.exp(zm - mx), 0).sum(-1)) + mx[..., 0]
    guarded = int(np.sum(row_ok & (lse_valid - lse_all < _LOG_TINY32)))
    return float(loss), dz, guarded


@dataclass
class Sample:
    """One captured (q, k, v) with its distillation targets (see :func:`prepare_sample`)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    causal: bool
    scale: float
    mass: np.ndarray      # exact column masses (B, Hq, Nq, W), accuracy grid
    psq: np.ndarray       # sum_j P^2 per row
    plogp: np.ndarray     # sum_j P log P per row
    counts: np.ndarray    # keys per column (Nq, W)
    target: np.ndarray    # exact attention output (B, Hq, Nq, Dv)


def prepare_sample(item, *, width: int, causal: bool = True, scale: Optional[float] = None) -> Sample:
    """Targets of one captured (q, k, v): exact column masses on the accuracy grid (C++
    ``compressed_attention_targets``, no Nq x Nk buffer) and the exact attention output."""
    if not isinstance(item, (tuple, list)) or len(item) != 3:
        raise TypeError("each training item must be a (q, k, v) tuple")
    q, k, v = check_qkv(*item)
    causal, scale = as_causal(causal), as_scale(scale)
    _core.check_shapes(q, k, v, scale)
    sc = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    mass, psq, plogp = _core.compressed_attention_targets(q, k, causal, sc, width)
    return Sample(q, k, v, causal, sc, mass.astype(np.float64), psq.astype(np.float64), plogp.astype(np.float64),
                  column_counts(q.shape[2], k.shape[2], width, causal),
                  attention(q, k, v, causal=causal, scale=sc).astype(np.float64))


def loss_and_grads(weights: Mapping[str, np.ndarray], s: Sample, *, k: int, expansion: str = "accuracy",
                   mask: Optional[TokenIndices] = None) -> Tuple[float, Dict[str, np.ndarray], Dict[str, Any]]:
    """The training loss of one sample and its exact gradients (float64).

    ``loss = 0.1 KL + MSE`` on the estimate (:func:`distillation_loss`) ``+ mean((out - target)^2)``
    with ``out`` the gated output (:func:`mix_output`) over the keys the current estimate selects
    (``mask``, when given, replaces that selection; the selection itself has no gradient, as
    official). Returns (loss, grads by name, info with the terms and ``guarded_rows``).
    """
    w = weights
    B, Hq, Nq, _ = s.q.shape
    g = Hq // s.k.shape[1]
    z, gates, cache = estimator_forward(w, s.q, s.k, s.v, causal=s.causal, scale=s.scale, keep_cache=True)
    l_est, dz, guarded = distillation_loss(z, s.mass, s.psq, s.plogp, s.counts, s.k.shape[2])
    probs = softmax(z)
    if mask is None:
        mask = select(probs, s.k.shape[2], k=k, causal=s.causal, expansion=expansion)
    sparse = token_sparse_attention(s.q, s.k, s.v, mask, causal=s.causal, scale=s.scale).astype(np.float64)
    mean = average_context(s.v, Nq, causal=s.causal, probs=probs, group=g)
    out = mix_output(sparse, mean, gates)
    diff = out - s.target
    l_ctx = float(np.mean(diff * diff))
    dout = 2.0 * diff / diff.size
    g0, g1 = sigmoid(gates[..., 0:1]), sigmoid(gates[..., 1:2])
    dgates = np.concatenate([(dout * g1 * sparse).sum(-1, keepdims=True) * g0 * (1 - g0),
                             (dout * (g0 * sparse - mean)).sum(-1, keepdims=True) * g1 * (1 - g1)], -1)
    if not s.causal:  # the mean is sum_j V_j pbar[col(j)]: its gradient reaches the estimate too
        dz = dz + _average_context_backward(dout * (1 - g1), s.v, probs, Hq // s.k.shape[1])
    grads = estimator_backward(w, dz, dgates, cache)
    return l_est + l_ctx, grads, {"estimate_loss": l_est, "context_loss": l_ctx, "guarded_rows": guarded}


@dataclass
class TrainResult:
    """Trained weights, the loss of every step and the numerical-guard count of every step."""

    weights: Dict[str, np.ndarray]
    losses: List[float] = field(default_factory=list)
    guarded_rows: List[int] = field(default_factory=list)


def train(data: Iterable, weights: Optional[Mapping[str, np.ndarray]] = None, *, k: int = 64, width: int = 128,
          causal: bool = True, scale: Optional[float] = None, expansion: str = "accuracy", steps: int = 200,
          lr: float = 1e-3, warmup_steps: int = 20, weight_decay: float = 1e-2, max_grad_norm: float = 1.0,
          seed: int = 0, progress: bool = True, max_positions: Optional[int] = None,
          nb_features: Optional[int] = None) -> TrainResult:
    """Fit SEA's estimator (encoder, dec_row, CNN, positional values, gates) on captured
    (q, k, v) of one layer with the official loss terms (:func:`loss_and_grads`), AdamW through
    :func:`spattn.training.fit`.

    Parameters
    ----------
    data : iterable of (q, k, v)
        Captured attention inputs (B, Hq, N, D) / (B, Hkv, N, D) / (B, Hkv, N, Dv).
    weights : dict, optional
        Starting point; default :func:`init_weights` (Hq, D, width, seed, max_positions
        (default: the longest Nk), nb_features).
    k, width, causal, scale, expansion
        The method's settings (the selection of the context term uses them).
    steps, lr, warmup_steps, weight_decay, max_grad_norm
        AdamW with warmup then cosine decay (paper: AdamW; the SEA modules train at 10x the
        model's rate, here only they train).
    seed : int
        Seed of fresh weights and of the sample order.
    progress : bool
        Show progress bars.

    Returns
    -------
    TrainResult: weights, the loss of every step and per step the rows that hit the guard.

    Notes
    -----
    Deviations: no 10% random grid jitter; the teacher losses on the student's own scores and
    model knowledge distillation are absent (the model is frozen).
    """
    steps = check_positive_int(steps, "steps")
    k = check_positive_int(k, "k")
    width = check_positive_int(width, "width")
    if expansion not in EXPANSIONS:
        raise ValueError(f"expansion must be one of {EXPANSIONS}, got {expansion!r}")
    samples = training.prepare_samples(data, lambda it: prepare_sample(it, width=width, causal=causal, scale=scale),
                                       desc="targets", progress=progress)
    if not samples:
        raise ValueError("data must hold at least one (q, k, v) item")
    if weights is None:
        q0 = samples[0].q
        P = max(s.k.shape[2] for s in samples) if max_positions is None else max_positions
        w = init_weights(q0.shape[1], q0.shape[3], width=width, max_positions=P, nb_features=nb_features, seed=seed)
    else:
        w = {n: np.array(a, np.float64) for n, a in check_weights(weights).items()}
        if max_positions is not None and w["pos"].shape[0] < max_positions:
            raise ValueError(f"max_positions={max_positions} but the given weights' positional table has "
                             f"{w['pos'].shape[0]} rows; start from fresh weights (weights=None)")
    if w["ln2_w"].shape[0] != width:
        raise ValueError(f"weights have width {w['ln2_w'].shape[0]}, but width={width}")
    rng = np.random.default_rng(seed)
    guards: List[int] = []
    params = [w[n] for n in TRAINED]

    def step_fn(step: int):
        s = samples[int(rng.integers(0, len(samples)))]
        loss, grads, info = loss_and_grads(w, s, k=k, expansion=expansion)
        guards.append(info["guarded_rows"])
        return loss, [grads[n] for n in TRAINED]

    losses = training.fit(params, step_fn, steps=steps, lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                          max_grad_norm=max_grad_norm, progress=progress, desc="train sea")
    return TrainResult(w, losses, guards)


# ---------------------------------------------------------------------------------------- method
@register
class SEA(Method):
    """SEA: sparse attention over keys selected from an estimated compressed attention.

    Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024,
    following gmlwns2000/sea-attention (see this module's docstring for every step, its
    official source and the deviations).

    With ``weights`` (one layer's learned estimator, :func:`init_weights` / :func:`train` /
    :func:`load_weights`), the official estimator: Performer pass over [positional table || V],
    encoder, CNN decoder, softmax over W; the official selection; the output gates
    ``sigmoid(s1) sigmoid(s0) sparse + (1 - sigmoid(s1)) mean(V)`` (``__call__``). Without
    weights (default), a training-free option that is **not the paper's**: the compressed row is
    the FAVOR+ linear-attention estimate itself, the selection is the official one and the
    output is plain sparse attention (no gates).

    Parameters
    ----------
    k : int, default 64
        Average keys per query per head (official ``k``; OPT experiments: 64).
    compressed_width : int, default 128
        Width W (official config default 128; OPT runs 256). Must match the weights' width.
    nb_features : int or None, default None
        Random features of the training-free estimate; None: int(D ln D / 8) (the learned
        path uses the weights' ``projection``).
    seed : int, default 0
        Seed of the training-free random features.
    weights : dict of numpy arrays or None, default None
        The learned estimator of the layer (:data:`WEIGHT_SHAPES`); None: training-free.
    expansion : {"accuracy", "speed"}, default "accuracy"
        Official accuracy path (every key of a kept column; the paper's perplexities) or speed
        path (at most k keys per kept column, spread evenly: ``v_end - 1 - floor(i n / k)``).

    Notes
    -----
    ``estimate(q, k, v=v)`` needs V when weights are set (the encoder reads it).
    ``last_info`` holds ``estimate`` (the probabilities over W the selection ranked) and, with
    weights, ``gates`` (B, Hq, Nq, 2) and ``mask``.
    """

    name = "sea"
    paper = "Lee et al., SEA: Sparse Linear Attention with Estimated Attention Mask, ICLR 2024"
    pattern = "top-k columns of an estimated compressed attention, expanded to keys (token level)"
    params_struct = _core.SeaParams
    extra_defaults = {"weights": None, "expansion": "accuracy"}
    capabilities = Capabilities(fittable=True, mask_format="token", value_inputs=True)
    learned_param = "weights"

    def _check_params(self) -> None:
        p = self.params
        if p["expansion"] not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {p['expansion']!r}")
        if p["weights"] is not None:
            w = check_weights(p["weights"])
            if w["ln2_w"].shape[0] != p["compressed_width"]:
                raise ValueError(f"weights have width {w['ln2_w'].shape[0]} != compressed_width "
                                 f"{p['compressed_width']}")
            p["weights"] = {n: np.asarray(a, np.float32) for n, a in w.items()}

    def features(self, D: int) -> np.ndarray:
        m = self.params["nb_features"] or default_nb_features(D)
        return orthogonal_features(m, D, self.params["seed"])

    def compressed_estimate(self, q, k, *, causal=False, scale=None) -> np.ndarray:
        """The training-free compressed estimate (B, Hq, Nq, compressed_width); rows sum to 1."""
        q, k, _ = check_qkv(q, k)
        _core.check_shapes(q, k, None, scale)
        return _core.sea_estimate(q, k, self.features(q.shape[3]), bool(causal), scale, self.cparams)

    def _learned(self, q, k, v, causal, scale):
        w = self.params["weights"]
        H = w["conv4_w"].shape[0]
        if q.shape[1] != H or q.shape[3] != w["projection"].shape[1]:
            raise ValueError(f"weights were built for {H} heads of dim {w['projection'].shape[1]}, "
                             f"q has {q.shape[1]} heads of dim {q.shape[3]}")
        if v is None:
            raise ValueError("v is required with learned weights: SEA's encoder reads V (estimate(q, k, v=v))")
        sc = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
        z, gates, _ = estimator_forward(w, q, k, v, causal=causal, scale=sc)
        return softmax(z).astype(np.float32), gates.astype(np.float32)

    def _estimate(self, q, k, causal, scale, v=None) -> TokenIndices:
        p = self.params
        if p["weights"] is None:
            est, gates = self.compressed_estimate(q, k, causal=causal, scale=scale), None
        else:
            est, gates = self._learned(q, k, v, causal, scale)
        mask = select(est, k.shape[2], k=p["k"], causal=causal, expansion=p["expansion"])
        self.last_info = {"estimate": est, "gates": gates, "mask": mask}
        return mask

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False,
                 q_gate=None, k_gate=None):
        """Estimate, run the token-sparse kernel, and (with weights) apply the official output
        gates. ``lse`` (with ``return_lse``) is that of the sparse attention before the gates."""
        q, k, v = check_qkv(q, k, v)
        mask = self.estimate(q, k, v=v, causal=causal, scale=scale, q_gate=q_gate, k_gate=k_gate)
        out, lse = token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        gates = self.last_info["gates"]
        if gates is not None:
            mean = average_context(v, q.shape[2], causal=as_causal(causal), probs=self.last_info["estimate"],
                                   group=q.shape[1] // k.shape[1])
            out = mix_output(out.astype(np.float64), mean, gates.astype(np.float64)).astype(np.float32)
        return (out, lse) if return_lse else out

    def fit(self, samples: Sequence, *, max_positions: Optional[int] = None, **kwargs: Any) -> TrainResult:
        """Train the learned estimator on captured (q, k, v) triples (:func:`train` with this
        method's k, width and expansion; starts from the current weights when set) and keep it
        as ``params["weights"]``.

        ``max_positions`` sizes the learned positional table of fresh weights (default: the
        longest fit sample); the fitted method then runs on Nk up to it. Set it to the longest
        length the method will see (``evaluate_model`` passes its longest evaluated length)."""
        p = self.params
        res = train(samples, p["weights"], k=p["k"], width=p["compressed_width"], expansion=p["expansion"],
                    max_positions=max_positions, **kwargs)
        self.set_params(weights=res.weights)
        return res
