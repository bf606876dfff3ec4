"""Sparsifiner: a low-rank connectivity predictor picks each query's top keys.

Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision
Transformers", CVPR 2023 (arXiv 2303.13755); official code lim142857/Sparsifiner
``src/models/sparsifiner.py`` (``MaskPredictor.forward``, ``Attention.forward``) with the used
config ``sparsifiner_default_config.yaml`` (reduce_n_factor 6, reduce_c_factor 2, basis threshold
0.02, top-8 basis coefficients, keep rate 0.25). Training is the official phase 1 (``USE_ATTN_RECON``:
MSE of the unthresholded approximation to the teacher's softmax attention) on spattn's fit loop
(:func:`spattn.training.fit`); the teacher attention comes from the exact statistics pass
(``_core.block_attention_map`` with 1 x 1 blocks), the sparse attention from the token-sparse kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import _core, training
from .._validation import as_causal, as_float_array, as_scale, check_int, check_qkv
from ..kernels import attention, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

_ROW_CHUNK = 256  # rows of the approximate attention held at once (never an N x N buffer)


@dataclass
class SparsifinerPredictor:
    """The learned connectivity predictor of one layer (all heads share it).

    Attributes
    ----------
    wq, wk : (D, c) float32 and bq, bk : (c,)
        ``proj_c_q`` / ``proj_c_k`` (Linear D -> c, weights stored transposed).
    proj_n : (N, r)
        The "down" token projection (Linformer style).
    proj_back_n : (N, r)
        The "up" basis; its absolute value, thresholded, is the basis of the approximation.
    n : int
        The sequence length the predictor was built for; other lengths are refused.
    """

    wq: np.ndarray
    bq: np.ndarray
    wk: np.ndarray
    bk: np.ndarray
    proj_n: np.ndarray
    proj_back_n: np.ndarray

    @property
    def n(self) -> int:
        return int(self.proj_n.shape[0])

    @property
    def dim(self) -> int:
        return int(self.wq.shape[0])

    def arrays(self) -> Dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in ("wq", "bq", "wk", "bk", "proj_n", "proj_back_n")}


def init_predictor(n: int, dim: int, *, reduce_n_factor: int = 6, reduce_c_factor: int = 2,
                   seed: int = 0) -> SparsifinerPredictor:
    """The official initialisation: weights trunc_normal(std 0.02), biases 0;
    c = dim // reduce_c_factor, r = n // reduce_n_factor (at least 1 each)."""
    rng = np.random.default_rng(seed)
    c = max(1, dim // reduce_c_factor)
    r = max(1, n // reduce_n_factor)

    def tn(*shape):  # timm trunc_normal_(std=.02) truncates at +-2 (absolute): never reached at std .02
        return np.clip(rng.standard_normal(shape) * 0.02, -2.0, 2.0).astype(np.float32)

    return SparsifinerPredictor(tn(dim, c), np.zeros(c, np.float32), tn(dim, c), np.zeros(c, np.float32),
                                tn(n, r), tn(n, r))


def _low_rank_logits(pred: SparsifinerPredictor, q: np.ndarray, k: np.ndarray, xp=np.float64):
    """(q', k', kd, logits): q' = q Wq + bq, k' = k Wk + bk, kd = k'^T proj_n,
    logits = q' kd * Hq^-0.5 (the official scale uses the head count), for every row."""
    Hq, Hkv = q.shape[1], k.shape[1]
    qp = q.astype(xp) @ pred.wq.astype(xp) + pred.bq.astype(xp)              # (B, Hq, N, c)
    kp = k.astype(xp) @ pred.wk.astype(xp) + pred.bk.astype(xp)              # (B, Hkv, N, c)
    kp = np.repeat(kp, Hq // Hkv, axis=1)
    kd = np.swapaxes(kp, -1, -2) @ pred.proj_n.astype(xp)                    # (B, Hq, c, r)
    logits = (qp @ kd) * (Hq ** -0.5)                                        # (B, Hq, N, r)
    return qp, kp, kd, logits


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@register
class Sparsifiner(Method):
    """Sparsifiner's instance-dependent sparse attention: per query, the top ceil(keep_rate * N)
    keys of a low-rank approximation of its attention row; the CLS query (row 0) attends every key.

    Prediction (official ``MaskPredictor``, eval path): q' = q Wq + bq and k' = k Wk + bk (c =
    D / reduce_c_factor channels), kd = k'^T proj_n (r = N / reduce_n_factor), logits = q' kd *
    Hq^-0.5; for rows 1..N-1 coef = softmax over r with only its top ``coef_topk`` entries kept
    (not renormalised); basis = |proj_back_n|^T with entries <= ``basis_threshold`` zeroed;
    approx = coef @ basis; the row keeps the top ceil(keep_rate * N) keys of approx. Attention is
    then softmax(q k^T * scale) over the kept keys (the token-sparse kernel), row 0 dense.

    Parameters
    ----------
    keep_rate : float, default 0.25
        Fraction of keys per query (``attn_keep_rate``).
    reduce_n_factor, reduce_c_factor : int, default 6 and 2
        Low-rank sizes r = N // reduce_n_factor and c = D // reduce_c_factor.
    basis_threshold : float, default 0.02
    coef_topk : int, default 8
    predictor : SparsifinerPredictor or None
        The trained predictor (``fit``); None: the official initialisation (seeded by ``seed``)
        built for the length of each call, an untrained baseline.
    seed : int, default 0

    Notes
    -----
    * The predictor's weights hold N (``proj_n`` is N x r): a fitted predictor runs only at the
      sequence length it was trained at (ValueError otherwise), as in the official code.
    * Ties in the top-k (official ``torch.topk``: unspecified order) go to the lower key index.
    * Non-causal only, as the official model (a bidirectional ViT; CLS at index 0). A causal form
      would be a spattn extension; it is not offered, so causal harnesses (the CLI demo) skip the
      method rather than fitting an N x N teacher at LM lengths.
    * Prefill only (Nq == Nk: the predictor reads the queries' own token positions).
    * ``estimate`` returns the whole mask as TokenIndices; its CLS row lists every key, so the
      index array is (N, N) int32 like the official 0/1 mask. The call does not build it: it runs
      rows 1..N-1 on the token-sparse kernel with ceil(keep_rate * N) indices each and row 0 on
      the dense kernel (``capabilities.own_output``; the approximate attention is formed
      ``_ROW_CHUNK`` rows at a time).
    * Training (``fit``) is the official phase 1: the loss 0.01 * sum((coef @ proj_back_n^T -
      P)^2) over rows 1..N-1, P the teacher's softmax attention (exact attention of the same q,
      k), with the signed basis, no threshold and no top-k (the official training branch; only
      eval takes |basis|). Phase 2 (task and distillation losses of the ViT)
      gives the detached mask no gradient and is not reproduced.
    """

    name = "sparsifiner"
    paper = "Wei et al., Sparsifiner, CVPR 2023"
    pattern = "learned low-rank predictor -> top 25% keys per query, CLS row dense"
    params_struct = None
    extra_defaults = {"keep_rate": 0.25, "reduce_n_factor": 6, "reduce_c_factor": 2, "basis_threshold": 0.02,
                      "coef_topk": 8, "predictor": None, "seed": 0}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, needs_fit=True, fittable=True, mask_format="token",
                                own_output=True)
    learned_param = "predictor"

    def _check_params(self) -> None:
        p = self.params
        kr = p["keep_rate"]
        if isinstance(kr, (bool, np.bool_)) or not isinstance(kr, (int, float, np.integer, np.floating)):
            raise TypeError(f"{self.name}: keep_rate must be a float in (0, 1], got {type(kr).__name__}")
        if not 0.0 < float(kr) <= 1.0:
            raise ValueError(f"{self.name}: keep_rate must lie in (0, 1], got {kr}")
        p["keep_rate"] = float(kr)
        bt = p["basis_threshold"]
        if isinstance(bt, (bool, np.bool_)) or not isinstance(bt, (int, float, np.integer, np.floating)):
            raise TypeError(f"{self.name}: basis_threshold must be a float >= 0, got {type(bt).__name__}")
        if not float(bt) >= 0.0:
            raise ValueError(f"{self.name}: basis_threshold must be >= 0, got {bt}")
        p["basis_threshold"] = float(bt)
        for f in ("reduce_n_factor", "reduce_c_factor", "coef_topk"):
            p[f] = check_int(p[f], f"{self.name}: {f}", lo=1)
        p["seed"] = check_int(p["seed"], f"{self.name}: seed")
        if p["predictor"] is not None and not isinstance(p["predictor"], SparsifinerPredictor):
            raise TypeError(f"{self.name}: predictor must be a SparsifinerPredictor or None, "
                            f"got {type(p['predictor']).__name__}")

    # ------------------------------------------------------------------ the predictor
    def _predictor_for(self, q: np.ndarray) -> SparsifinerPredictor:
        n, d = q.shape[2], q.shape[3]
        pred = self.params["predictor"]
        if pred is None:
            return init_predictor(n, d, reduce_n_factor=self.params["reduce_n_factor"],
                                  reduce_c_factor=self.params["reduce_c_factor"], seed=self.params["seed"])
        if pred.n != n:
            raise ValueError(f"{self.name}: the predictor was trained at sequence length N={pred.n} "
                             f"(its proj_n is N x r); got N={n}")
        if pred.dim != d:
            raise ValueError(f"{self.name}: the predictor was trained at head dim D={pred.dim}; got D={d}")
        return pred

    def keep(self, n: int) -> int:
        """Keys kept per query: ceil(keep_rate * N) (at least 1)."""
        return max(1, min(n, math.ceil(self.params["keep_rate"] * n - 1e-9)))

    def _select(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """(B, Hq, N-1, kk) int32: the sorted keys of rows 1..N-1."""
        pred = self._predictor_for(q)
        B, Hq, n = q.shape[:3]
        kk = self.keep(n)
        out = np.full((B, Hq, max(n - 1, 0), kk), -1, dtype=np.int32)
        if n <= 1:
            return out
        _, _, _, logits = _low_rank_logits(pred, q, k)
        coef = _softmax(logits[:, :, 1:])                                      # (B, Hq, N-1, r)
        r = coef.shape[-1]
        t = self.params["coef_topk"]
        if t < r:  # keep the top-t coefficients of each row (lower index on ties), zero the rest
            order = np.argsort(-coef, axis=-1, kind="stable")[..., t:]
            np.put_along_axis(coef, order, 0.0, axis=-1)
        basis = np.abs(pred.proj_back_n.astype(np.float64)).T                  # (r, N)
        basis[basis <= self.params["basis_threshold"]] = 0.0
        for a in range(0, n - 1, _ROW_CHUNK):
            b = min(n - 1, a + _ROW_CHUNK)
            approx = coef[:, :, a:b] @ basis                                   # (B, Hq, rows, N)
            out[:, :, a:b] = np.sort(np.argsort(-approx, axis=-1, kind="stable")[..., :kk], axis=-1)
        return out

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, n = q.shape[:3]
        rest = self._select(q, k)
        idx = np.full((B, Hq, n, n), -1, dtype=np.int32)
        idx[:, :, 0] = np.arange(n, dtype=np.int32)
        idx[:, :, 1:, :rest.shape[-1]] = rest
        return TokenIndices(idx, group_size=1, kv_len=n, assume_sorted=True)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        n = q.shape[2]
        rest = self._select(q, k)
        out0, lse0 = attention(q[:, :, :1], k, v, scale=scale, return_lse=True)
        if n > 1:
            ti = TokenIndices(rest, group_size=1, kv_len=n, assume_sorted=True)
            out1, lse1 = token_sparse_attention(np.ascontiguousarray(q[:, :, 1:]), k, v, ti, scale=scale,
                                                return_lse=True)
            out = np.concatenate([out0, out1], axis=2)
            lse = np.concatenate([lse0, lse1], axis=2)
        else:
            out, lse = np.asarray(out0), np.asarray(lse0)
        self.last_info = {"keys_per_query": int(rest.shape[-1]) if n > 1 else n, "cls_row": "dense"}
        return (out, lse) if return_lse else out

    def readouts(self) -> Dict[str, Any]:
        return {k: self.last_info[k] for k in ("keys_per_query",) if k in self.last_info}

    # ------------------------------------------------------------------ training (official phase 1)
    def approx_attention(self, q, k) -> np.ndarray:
        """The training-time approximation coef @ proj_back_n^T (signed basis, no top-k, no
        threshold) of rows 1..N-1, (B, Hq, N-1, N) float64: what ``fit`` regresses on the teacher
        attention (official ``MaskPredictor.forward`` in training with USE_ATTN_RECON)."""
        q, k, _ = check_qkv(q, k)
        pred = self._predictor_for(q)
        _, _, _, logits = _low_rank_logits(pred, q, k)
        return _softmax(logits[:, :, 1:]) @ pred.proj_back_n.astype(np.float64).T

    def fit(self, samples: Sequence, *, steps: int = 200, lr: float = 3e-3, warmup_steps: int = 0,
            weight_decay: float = 0.05, max_grad_norm: float = 1.0, loss_weight: float = 0.01,
            scale: Optional[float] = None, progress: bool = True):
        """Fit the predictor to the teacher attention of captured (q, k) (official phase 1).

        Parameters
        ----------
        samples : sequence of (q, k)
            Captured inputs, all of one length N (the length the predictor is then bound to).
        steps, lr, warmup_steps, weight_decay, max_grad_norm
            Of :func:`spattn.training.fit` (AdamW, weight decay 0.05 as the official recipe);
            step s uses sample s mod len(samples).
        loss_weight : float, default 0.01
            The official weight of the reconstruction loss.
        scale
            Of the teacher attention (bidirectional, as the official ViT).

        Returns
        -------
        SparsifinerFitResult
            The predictor and the loss of every step.
        """
        items = list(samples)
        if not items:
            raise ValueError("samples must hold at least one (q, k) pair")
        sc = as_scale(scale)
        prepared = []
        for it in items:
            if len(it) < 2:
                raise ValueError(f"each sample must be (q, k), got {len(it)} arrays")
            q, k, _ = check_qkv(it[0], it[1])
            _core.check_shapes(q, k, None, sc)
            self.check_call(q, k, False)
            if prepared and q.shape[2:] != prepared[0][0].shape[2:]:
                raise ValueError(f"all samples must share (N, D) {prepared[0][0].shape[2:]}, got {q.shape[2:]}")
            probs, _ = _core.block_attention_map(q, k, 1, 1, False, sc, "sum")   # (B, Hq, N, N) teacher
            prepared.append((q, k, np.asarray(probs)[:, :, 1:]))  # float32 targets: half the memory
        q0 = prepared[0][0]
        pred = self.params["predictor"]
        if pred is None or pred.n != q0.shape[2] or pred.dim != q0.shape[3]:
            pred = init_predictor(q0.shape[2], q0.shape[3], reduce_n_factor=self.params["reduce_n_factor"],
                                  reduce_c_factor=self.params["reduce_c_factor"], seed=self.params["seed"])
        w = {f: a.astype(np.float64) for f, a in pred.arrays().items()}
        names = list(w)

        def step_fn(step: int):
            q, k, target = prepared[step % len(prepared)]
            loss, grads = predictor_loss_and_grads(w, q, k, target, loss_weight)
            return loss, [grads[f] for f in names]

        losses = training.fit([w[f] for f in names], step_fn, steps=steps, lr=lr, warmup_steps=warmup_steps,
                              weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=progress,
                              desc="sparsifiner")
        trained = SparsifinerPredictor(**{f: w[f].astype(np.float32) for f in names})
        self.set_params(predictor=trained)
        return SparsifinerFitResult(trained, losses)


@dataclass
class SparsifinerFitResult:
    predictor: SparsifinerPredictor
    losses: List[float]


def predictor_loss_and_grads(w: Dict[str, np.ndarray], q: np.ndarray, k: np.ndarray, target: np.ndarray,
                             loss_weight: float = 0.01):
    """Phase-1 loss loss_weight * sum((softmax(logits[1:]) @ proj_back_n^T - target)^2) and its
    exact gradients with respect to every predictor array (float64, summed over batch and heads).

    `target` is the teacher attention of rows 1..N-1, (B, Hq, N-1, N)."""
    pred = SparsifinerPredictor(**w)
    Hq, Hkv = q.shape[1], k.shape[1]
    G = Hq // Hkv
    s = Hq ** -0.5
    qp, kp, kd, logits = _low_rank_logits(pred, q, k)
    coef = _softmax(logits[:, :, 1:])                                          # (B, Hq, M, r)
    U = w["proj_back_n"]                                                       # (N, r), signed in training
    diff = coef @ U.T - target                                                 # (B, Hq, M, N)
    loss = loss_weight * float(np.sum(diff * diff))
    dA = 2.0 * loss_weight * diff
    dcoef = dA @ U                                                             # (B, Hq, M, r)
    dU = np.einsum("bhmn,bhmr->nr", dA, coef)
    dl = coef * (dcoef - np.sum(dcoef * coef, axis=-1, keepdims=True))
    dcheap = np.zeros_like(logits)
    dcheap[:, :, 1:] = dl * s
    dqp = dcheap @ np.swapaxes(kd, -1, -2)                                     # (B, Hq, N, c)
    dkd = np.swapaxes(qp, -1, -2) @ dcheap                                     # (B, Hq, c, r)
    dkp = w["proj_n"] @ np.swapaxes(dkd, -1, -2)                               # (B, Hq, N, c)
    dP = np.einsum("bhnc,bhcr->nr", kp, dkd)
    dkp = dkp.reshape(dkp.shape[0], Hkv, G, *dkp.shape[2:]).sum(axis=2)        # back to the kv heads
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    grads = {"wq": np.einsum("bhnd,bhnc->dc", q64, dqp), "bq": dqp.sum(axis=(0, 1, 2)),
             "wk": np.einsum("bhnd,bhnc->dc", k64, dkp), "bk": dkp.sum(axis=(0, 1, 2)),
             "proj_n": dP, "proj_back_n": dU}
    return loss, grads


def as_predictor(arrays: Dict[str, Any]) -> SparsifinerPredictor:
    """A SparsifinerPredictor from a dict of arrays (e.g. loaded with :func:`spattn.training.load_npz`)."""
    return SparsifinerPredictor(**{f: as_float_array(arrays[f], f) for f in
                                   ("wq", "bq", "wk", "bk", "proj_n", "proj_back_n")})
