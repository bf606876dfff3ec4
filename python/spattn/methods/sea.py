"""SEA: the method (training-free estimate), its learned refinement decoder and its distillation training.

Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024. In the paper
a small CNN decoder (heads as channels, time as rows, compressed keys as columns; dilated
convolutions causal in time) turns linear-attention features into the compressed attention
logits, and is trained by distillation against the exact attention of the teacher:
``0.1 * KL(teacher || estimate) + MSE(estimate, teacher)``, with the compressed estimate expanded
to full key resolution (every key inherits its column's logit).

Here the decoder refines the training-free estimate of :class:`SEA`:

    x   = log(estimate + 1e-6)                                     (B, H, T, W)
    h1  = relu(conv3x3_causal(x;  H -> C, dilation 2))
    h2  = relu(conv3x3_causal(h1; C -> C, dilation 2))
    z   = x + conv1x1(h2; C -> H) + bias[h, column]
    refined estimate = softmax over the columns that cover keys

The output layer and the bias start at zero, so an untrained decoder returns the training-free
estimate. The loss is the paper's, computed *exactly* without an N x N buffer: with M_c the
exact mass of column c, n_c its number of keys and q_c = exp(z_c) / sum_c' n_c' exp(z_c'),
``KL = sum_t P log P - sum_c M_c log q_c`` and ``sum_t (Q_t - P_t)^2 = sum_c n_c q_c^2 -
2 sum_c q_c M_c + sum_t P_t^2`` (M, sum P^2, sum P log P come tile by tile from the C++ core).
Reductions follow the official code: KL batch-mean over rows, MSE mean over all (row, key) pairs.

Deviations from the paper: the decoder's input is the log of the random-feature estimate instead
of an encoder over Performer outputs with learned positional values (so no per-model encoder,
positional table or value path), and it is smaller (two 3x3 layers and a 1x1 output, C = 2H
channels); only the decoder learns (the paper fine-tunes the whole model). The fit loop, optimiser
and ``.npz`` artifacts are the shared ones of :mod:`spattn.training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .. import _core, training
from .._validation import check_positive_int, check_qkv
from ..masks import TokenIndices
from .base import Capabilities, Method, register

_EPS = 1e-6


def column_counts(q_len: int, kv_len: int, width: int, causal: bool) -> np.ndarray:
    """Keys per compressed column for every query (Nq, width): column c of query i covers
    [round(c L_i / W), round((c+1) L_i / W)) of its visible prefix L_i (half to even)."""
    i = np.arange(q_len)
    L = np.clip(i + kv_len - q_len + 1, 0, kv_len) if causal else np.full(q_len, kv_len)
    bounds = np.rint(np.arange(width + 1)[None, :] * L[:, None] / width).astype(np.int64)
    return np.diff(bounds, axis=1)


def _shift(x: np.ndarray, st: int, sw: int) -> np.ndarray:
    """y[..., t, w] = x[..., t - st, w + sw], zero outside (st >= 0: look back in time)."""
    y = np.zeros_like(x)
    T, W = x.shape[-2], x.shape[-1]
    if st >= T or abs(sw) >= W:
        return y
    t_dst = slice(st, T)
    t_src = slice(0, T - st)
    if sw >= 0:
        y[..., t_dst, 0:W - sw] = x[..., t_src, sw:W]
    else:
        y[..., t_dst, -sw:W] = x[..., t_src, 0:W + sw]
    return y


def _unshift(g: np.ndarray, st: int, sw: int) -> np.ndarray:
    """Adjoint of _shift: y[..., t, w] = g[..., t + st, w - sw], zero outside."""
    y = np.zeros_like(g)
    T, W = g.shape[-2], g.shape[-1]
    if st >= T or abs(sw) >= W:
        return y
    if sw >= 0:
        y[..., 0:T - st, sw:W] = g[..., st:T, 0:W - sw]
    else:
        y[..., 0:T - st, 0:W + sw] = g[..., st:T, -sw:W]
    return y


def _taps(dilation: int):
    """(dt, dw, time shift back, width shift) of a 3x3 kernel causal in time."""
    return [(dt, dw, dilation * (2 - dt), dilation * (dw - 1)) for dt in range(3) for dw in range(3)]


def _conv(x, w, b, dilation):
    out = np.broadcast_to(b[None, :, None, None], (x.shape[0], w.shape[0]) + x.shape[2:]).copy()
    shifted = []
    for dt, dw, st, sw in _taps(dilation):
        xs = _shift(x, st, sw)
        shifted.append(xs)
        out += np.einsum("oi,bitw->botw", w[:, :, dt, dw], xs, optimize=True)
    return out, shifted


def _conv_backward(g, w, shifted, dilation):
    dx = np.zeros(shifted[0].shape)
    dw = np.zeros_like(w)
    for (dt, dwi, st, sw), xs in zip(_taps(dilation), shifted):
        dw[:, :, dt, dwi] = np.einsum("botw,bitw->oi", g, xs, optimize=True)
        dx += _unshift(np.einsum("oi,botw->bitw", w[:, :, dt, dwi], g, optimize=True), st, sw)
    return dx, dw, g.sum(axis=(0, 2, 3))


@dataclass
class SeaDecoder:
    """Weights of the refinement decoder (float64 in training, any float for inference)."""

    w1: np.ndarray  # (C, H, 3, 3)
    b1: np.ndarray  # (C,)
    w2: np.ndarray  # (C, C, 3, 3)
    b2: np.ndarray  # (C,)
    w3: np.ndarray  # (H, C)
    b3: np.ndarray  # (H,)
    bias: np.ndarray  # (H, W)
    dilation: int = 2

    NAMES = ("w1", "b1", "w2", "b2", "w3", "b3", "bias")

    @classmethod
    def init(cls, heads: int, width: int, *, channels: Optional[int] = None, seed: int = 0,
             init_std: float = 0.02, dilation: int = 2) -> "SeaDecoder":
        """Fresh decoder: convolutions normal(0, init_std), output layer and bias zero (identity)."""
        C = 2 * heads if channels is None else check_positive_int(channels, "channels")
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0, init_std, (C, heads, 3, 3)), np.zeros(C), rng.normal(0, init_std, (C, C, 3, 3)),
                   np.zeros(C), np.zeros((heads, C)), np.zeros(heads), np.zeros((heads, width)), dilation)

    @property
    def heads(self) -> int:
        return int(self.w3.shape[0])

    @property
    def width(self) -> int:
        return int(self.bias.shape[1])

    def params(self) -> List[np.ndarray]:
        return [getattr(self, n) for n in self.NAMES]

    def logits(self, est: np.ndarray) -> Tuple[np.ndarray, dict]:
        """Refined logits z (B, H, T, W) and the cache for backward."""
        x = np.log(np.asarray(est, np.float64) + _EPS)
        a1, s1 = _conv(x, self.w1, self.b1, self.dilation)
        h1 = np.maximum(a1, 0)
        a2, s2 = _conv(h1, self.w2, self.b2, self.dilation)
        h2 = np.maximum(a2, 0)
        z = x + np.einsum("oc,bctw->botw", self.w3, h2, optimize=True) + self.b3[None, :, None, None] \
            + self.bias[None, :, None, :]
        return z, {"s1": s1, "a1": a1, "s2": s2, "a2": a2, "h2": h2}

    def backward(self, dz: np.ndarray, cache: dict) -> List[np.ndarray]:
        """Gradients of the parameters (in NAMES order) from dL/dz."""
        dw3 = np.einsum("botw,bctw->oc", dz, cache["h2"], optimize=True)
        db3 = dz.sum(axis=(0, 2, 3))
        dbias = dz.sum(axis=(0, 2))
        dh2 = np.einsum("oc,botw->bctw", self.w3, dz, optimize=True) * (cache["a2"] > 0)
        dh1, dw2, db2 = _conv_backward(dh2, self.w2, cache["s2"], self.dilation)
        dh1 = dh1 * (cache["a1"] > 0)
        _, dw1, db1 = _conv_backward(dh1, self.w1, cache["s1"], self.dilation)
        return [dw1, db1, dw2, db2, dw3, db3, dbias]

    def _logits_infer(self, est: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Same logits as `logits`, in float32, over time chunks with the causal receptive-field
        halo (2 layers x 2 dilation x 2 rows back), keeping memory O(chunk * W * C)."""
        B, H, T, W = est.shape
        halo = 2 * 2 * self.dilation
        f32 = lambda a: np.asarray(a, np.float32)
        w1, b1, w2, b2, w3, b3, bias = (f32(p) for p in self.params())
        z = np.empty(est.shape, np.float32)

        def conv(x, w, b):
            out = np.broadcast_to(b[None, :, None, None], (x.shape[0], w.shape[0]) + x.shape[2:]).copy()
            for dt, dw, st, sw in _taps(self.dilation):
                xs = _shift(x, st, sw)
                out += np.matmul(w[:, :, dt, dw], xs.reshape(x.shape[0], x.shape[1], -1)).reshape(out.shape)
            return out

        for t0 in range(0, T, chunk):
            lo = max(0, t0 - halo)
            x = np.log(f32(est[:, :, lo:t0 + chunk]) + np.float32(_EPS))
            h2 = np.maximum(conv(np.maximum(conv(x, w1, b1), 0), w2, b2), 0)
            zz = x + np.matmul(w3, h2.reshape(B, h2.shape[1], -1)).reshape(x.shape) + b3[None, :, None, None] \
                + bias[None, :, None, :]
            z[:, :, t0:t0 + chunk] = zz[:, :, t0 - lo:]
        return z

    def refine(self, est: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Refined estimate (B, H, T, W) float32; columns without keys stay 0 (C++, float32)."""
        if est.shape[1] != self.heads or est.shape[3] != self.width:
            raise ValueError(f"decoder was built for {self.heads} heads and width {self.width}, "
                             f"estimate has shape {est.shape}")
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        return _core.sea_decoder_refine(f32(est), np.ascontiguousarray(counts, dtype=np.int32),
                                        *(f32(p) for p in self.params()), int(self.dilation))

    def refine_numpy(self, est: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The same refinement in numpy (the reference of the C++ path, used by the tests)."""
        z = self._logits_infer(est)
        z = np.where(counts[None, None] > 0, z, -np.inf)
        mx = z.max(-1, keepdims=True)
        e = np.exp(z - np.where(np.isfinite(mx), mx, 0))
        tot = e.sum(-1, keepdims=True)
        return np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0).astype(np.float32)


def save_decoder(path: str, decoder: SeaDecoder) -> None:
    """Save a decoder to .npz."""
    training.save_npz(path, {n: getattr(decoder, n) for n in SeaDecoder.NAMES}, {"dilation": decoder.dilation})


def load_decoder(path: str) -> SeaDecoder:
    """Load a decoder written by :func:`save_decoder`."""
    z, cfg = training.load_npz(path)
    return SeaDecoder(*(z[n].astype(np.float64) for n in SeaDecoder.NAMES), dilation=int(cfg["dilation"]))


@dataclass
class _Sample:
    est: np.ndarray     # training-free estimate (B, H, T, W)
    mass: np.ndarray    # exact column masses (B, H, T, W)
    psq: np.ndarray     # sum_t P^2 per row (B, H, T)
    plogp: np.ndarray   # sum_t P log P per row (B, H, T)
    counts: np.ndarray  # keys per column (T, W)
    nk: int


def prepare_sample(q, k, *, compressed_width: int, causal: bool = True, scale: Optional[float] = None,
                   nb_features: Optional[int] = None, seed: int = 0) -> _Sample:
    """Training-free estimate and exact distillation targets of one captured (q, k)."""
    q, k, _ = check_qkv(q, k)
    m = SEA(compressed_width=compressed_width, nb_features=nb_features, seed=seed)
    est = m.compressed_estimate(q, k, causal=causal, scale=scale).astype(np.float64)
    mass, psq, plogp = _core.compressed_attention_targets(q, k, bool(causal), scale, compressed_width)
    return _Sample(est, mass.astype(np.float64), psq.astype(np.float64), plogp.astype(np.float64),
                   column_counts(q.shape[2], k.shape[2], compressed_width, causal), k.shape[2])


def distillation_loss(z: np.ndarray, s: _Sample) -> Tuple[float, np.ndarray]:
    """The paper's estimate loss, 0.1 * KL(P || Q) (batch mean over rows) + MSE(Q, P) (mean
    over all row x key pairs), with Q the expanded softmax of the logits z; and dL/dz."""
    n = s.counts[None, None].astype(np.float64)
    valid_col = n > 0
    zm = np.where(valid_col, z, -np.inf)
    mx = zm.max(-1, keepdims=True)
    row_ok = np.isfinite(mx)[..., 0] & (s.mass.sum(-1) > 0)
    mx = np.where(np.isfinite(mx), mx, 0)
    e = np.where(valid_col, np.exp(zm - mx), 0.0)
    Z = (n * e).sum(-1, keepdims=True)
    Z = np.where(Z > 0, Z, 1)
    qc = e / Z                                   # probability of each key of column c
    logq = np.where(valid_col, zm - mx - np.log(Z), 0.0)
    rows = z.shape[0] * z.shape[1] * z.shape[2]
    kl_rows = s.plogp - (s.mass * logq).sum(-1)
    S2 = (n * qc * qc).sum(-1, keepdims=True)
    X = (qc * s.mass).sum(-1, keepdims=True)
    sq_rows = S2[..., 0] - 2 * X[..., 0] + s.psq
    loss = 0.1 * np.where(row_ok, kl_rows, 0).sum() / rows + np.where(row_ok, sq_rows, 0).sum() / (rows * s.nk)
    d_kl = -s.mass + n * qc
    d_sq = 2 * n * qc * qc - 2 * n * qc * S2 - 2 * (s.mass * qc - n * qc * X)
    dz = (0.1 * d_kl / rows + d_sq / (rows * s.nk)) * row_ok[..., None] * valid_col
    return float(loss), dz


@dataclass
class TrainResult:
    decoder: SeaDecoder
    losses: List[float] = field(default_factory=list)


def train_decoder(data: Iterable, *, compressed_width: int = 128, causal: bool = True,
                  nb_features: Optional[int] = None, feature_seed: int = 0, decoder: Optional[SeaDecoder] = None,
                  steps: int = 300, lr: float = 1e-2, warmup_steps: int = 20, weight_decay: float = 1e-2,
                  max_grad_norm: float = 1.0, seed: int = 0, progress: bool = True, **decoder_kwargs) -> TrainResult:
    """Fit the refinement decoder to captured (q, k) pairs by distillation.

    Parameters
    ----------
    data : iterable of (q, k)
        Captured attention inputs (B, Hq, N, D) / (B, Hkv, N, D).
    compressed_width, causal, nb_features, feature_seed
        Must match the ``sea`` method the decoder will serve (same random features).
    steps, lr, warmup_steps, weight_decay, max_grad_norm
        AdamW with warmup then cosine decay (paper: AdamW, weight decay 1e-2; the learning rate
        here is higher than the paper's 1e-4 because only the small decoder learns).
    decoder : SeaDecoder, optional
        Starting point; default ``SeaDecoder.init(H, compressed_width, seed=seed, **decoder_kwargs)``.
    seed : int
        Seed of the fresh decoder and of the sample order.
    progress : bool
        Show progress bars.

    Returns
    -------
    TrainResult with the trained decoder and the loss of every step.
    """
    steps = check_positive_int(steps, "steps")

    def prepare(item) -> _Sample:
        q, k = item
        return prepare_sample(q, k, compressed_width=compressed_width, causal=causal, nb_features=nb_features,
                              seed=feature_seed)

    samples = training.prepare_samples(data, prepare, desc="targets", progress=progress)
    H = samples[0].est.shape[1]
    if decoder is None:
        decoder = SeaDecoder.init(H, compressed_width, seed=seed, **decoder_kwargs)
    else:
        decoder = SeaDecoder(*(np.array(p, np.float64) for p in decoder.params()), dilation=decoder.dilation)
    rng = np.random.default_rng(seed)

    def loss_and_grads(step: int):
        s = samples[int(rng.integers(0, len(samples)))]
        z, cache = decoder.logits(s.est)
        loss, dz = distillation_loss(z, s)
        return loss, decoder.backward(dz, cache)

    losses = training.fit(decoder.params(), loss_and_grads, steps=steps, lr=lr, warmup_steps=warmup_steps,
                          weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=progress,
                          desc="train decoder")
    return TrainResult(decoder, losses)


def orthogonal_features(m: int, d: int, seed: int = 0) -> np.ndarray:
    """Performer's orthogonal random features (m x d): stacked d x d orthogonal blocks (QR of
    Gaussian matrices), each row rescaled by the norm of an independent Gaussian vector."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-m // d)):
        qmat, _ = np.linalg.qr(rng.standard_normal((d, d)))
        blocks.append(qmat.T)
    w = np.concatenate(blocks, axis=0)[:m]
    return (w * np.linalg.norm(rng.standard_normal((m, d)), axis=1)[:, None]).astype(np.float32)


@register
class SEA(Method):
    """SEA: sparse attention with an attention mask estimated by linear attention (training-free).

    Lee et al., "SEA: Sparse Linear Attention with Estimated Attention Mask", ICLR 2024; follows
    gmlwns2000/sea-attention for the compressed grid, the top-k budget and the expansion:

    1. Each query's attention row is estimated in a compressed key space of ``compressed_width``
       columns; column c of query i covers keys [round(c L_i / W), round((c+1) L_i / W)) of its
       visible prefix L_i (the official per-query grid). The estimate is kernel-based linear
       attention with FAVOR+ positive orthogonal random features (``nb_features`` of them,
       seeded), whose "values" are the column indicators: linear in N, no N x N buffer.
    2. Top-k grouped over heads, as the official causal code: per query, the heads' compressed
       rows are concatenated and the top ``round(H k W / L_i)`` entries (clamped to [1, H W],
       ties to the lower index) kept, so peaky heads take more columns.
    3. Each kept column expands to its key range, capped at ``k`` keys (the last k of the range);
       queries whose prefix is at most k keys stay dense.
    4. Sparse attention (softmax over the selected keys) runs on the resulting TokenIndices.

    Parameters
    ----------
    k : int, default 64
        Average keys per query per head (the official ``k``; OPT experiments: 64).
    compressed_width : int, default 128
        Width W of the compressed key space (official config default 128; OPT runs 256).
    nb_features : int or None, default None
        Random features m; None: int(D ln D / 8), the official value of the causal (OPT)
        experiments (nbf = 8); more features give a less noisy estimate at a higher cost.
    seed : int, default 0
        Seed of the random features.
    decoder : spattn.methods.sea.SeaDecoder, optional
        Learned refinement of the compressed estimate (the paper's decoder, reduced; see
        this module), trained with :meth:`fit` (:func:`train_decoder`). None: training-free.

    Notes
    -----
    Deviations: the paper's decoder reads an encoder of Performer outputs with learned
    positional values and the whole model is fine-tuned; here the optional decoder refines the
    log of the random-feature estimate and only it learns. The learned output gates of the
    paper (scaling the sparse output, mixing in the mean of V) are not applied: the output is
    plain softmax attention over the selected keys. Features are softmax-kernel (FAVOR+); the
    official causal model uses ReLU features, meaningful only with its learned encoder.
    ``last_info["estimate"]`` holds the compressed estimate (B, Hq, Nq, W) used for the top-k
    (refined when a decoder is given) for plotting.
    """

    name = "sea"
    paper = "Lee et al., SEA: Sparse Linear Attention with Estimated Attention Mask, ICLR 2024"
    pattern = "top-k per query of a linear-attention estimate (token level)"
    params_struct = _core.SeaParams
    extra_defaults = {"decoder": None}
    capabilities = Capabilities(fittable=True, mask_format="token")
    learned_param = "decoder"

    def _check_params(self) -> None:
        p = self.params
        if p["decoder"] is not None:
            if not isinstance(p["decoder"], SeaDecoder):
                raise TypeError(f"decoder must be a spattn.methods.sea.SeaDecoder, got {type(p['decoder']).__name__}")
            if p["decoder"].width != p["compressed_width"]:
                raise ValueError(f"decoder width {p['decoder'].width} != compressed_width {p['compressed_width']}")

    def features(self, D: int) -> np.ndarray:
        m = self.params["nb_features"] or max(1, int(D * np.log(D) / 8))
        return orthogonal_features(m, D, self.params["seed"])

    def compressed_estimate(self, q, k, *, causal=False, scale=None) -> np.ndarray:
        """The compressed estimated attention (B, Hq, Nq, compressed_width); rows sum to 1."""
        q, k, _ = check_qkv(q, k)
        _core.check_shapes(q, k, None, scale)
        return _core.sea_estimate(q, k, self.features(q.shape[3]), bool(causal), scale, self.cparams)

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        est = self.compressed_estimate(q, k, causal=causal, scale=scale)
        if self.params["decoder"] is not None:
            counts = column_counts(q.shape[2], k.shape[2], self.params["compressed_width"], causal)
            est = self.params["decoder"].refine(est, counts)
        idx = _core.sea_select(est, k.shape[2], causal, self.cparams)
        self.last_info = {"estimate": est}
        return TokenIndices(idx, 1, k.shape[2], assume_sorted=True)

    def fit(self, samples: Sequence, **kwargs: Any) -> "TrainResult":
        """Train the refinement decoder on captured (q, k) pairs by distillation
        (:func:`train_decoder` with this method's compressed width, features and seed; starts
        from the current decoder when one is set) and keep it as ``params["decoder"]``.

        Parameters
        ----------
        samples : sequence of (q, k)
        **kwargs
            Options of :func:`train_decoder` (``steps``, ``lr``, ``causal``, ``seed``, ``progress``, ...).

        Returns
        -------
        TrainResult with the decoder and the loss of every step.
        """
        p = self.params
        res = train_decoder(samples, compressed_width=p["compressed_width"], nb_features=p["nb_features"],
                            feature_seed=p["seed"], decoder=p["decoder"], **kwargs)
        self.set_params(decoder=res.decoder)
        return res
