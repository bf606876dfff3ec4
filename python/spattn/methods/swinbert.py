"""SwinBERT's learnable sparse attention mask: one M x M matrix, shared by every layer, head and
batch item, that ignores the input.

Lin et al., "SwinBERT: End-to-End Transformers with Sparse Attention for Video Captioning", CVPR
2022; written from the official code, microsoft/SwinBERT (HEAD 03116f1):
``src/modeling/video_captioning_e2e_vid_swin_bert.py`` (``VideoTransformer.forward``: the mask,
``get_loss_sparsity``: the L1 term), ``src/layers/bert/modeling_bert.py`` (the mask enters the
scores as ``(1 - A) * -10000``). spattn holds the video-to-video block (q, k, v are the M video
tokens); the soft mask runs on the dense kernel with the bias as its (M, M) pair bias
(:func:`spattn.attention` ``bias=``), the hard one on the token-sparse kernel. Fitting uses the
dense kernel's exact backward (:func:`spattn.dense_attention_backward`) through
:func:`spattn.training.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .. import training
from .._validation import as_causal, as_scale, check_int, check_positive_int, check_qkv
from ..kernels import attention, dense_attention_backward, token_sparse_attention
from ..masks import TokenIndices
from .base import Capabilities, Method, register

MASK_SCALE = 10000.0  # BERT's extended_attention_mask: scores += (1 - A) * -10000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass
class SwinBERTFitResult:
    """What :meth:`SwinBERT.fit` returns: the learned mask logits and the loss of every step."""

    mask_logits: np.ndarray
    losses: List[float]


@register
class SwinBERT(Method):
    """SwinBERT's learned video-token mask, as ``VideoTransformer.forward``.

    With the learned logits W (M, M): ``A = I + (1 - I) sigmoid(W)`` (self-attention always 1);
    with ``hard`` (``sparse_mask_soft2hard``) ``A = 1[A >= 0.5]``; attention
    ``softmax(q.k scale - 10000 (1 - A))`` over every key (BERT's additive mask). The soft mask
    runs on the dense kernel with that (M, M) bias; the hard one attends the keys with A = 1 on
    the token-sparse kernel (the same softmax: the others get exp(-10000) = 0 in float32).
    ``estimate`` returns those keys (A >= 0.5, the diagonal always), per query, shared by heads
    and batch: the support through which the soft mask lets any weight pass in float32.

    Parameters
    ----------
    mask_logits : array (M, M), optional
        The learned W (``learn_vid_att`` embedding). None (unfitted): every key, A = 1 (dense
        attention), a spattn baseline; a fitted mask needs Nq == Nk == M.
    hard : bool, default False
        ``sparse_mask_soft2hard`` (off in the released recipes).
    sparsity_weight : float, default 0.5
        ``loss_sparse_w``, the weight of the L1 term ``mean((1 - I) sigmoid(W))`` in :meth:`fit`.
    init_seed : int, default 0
        Seed of fit's N(0, 1) initialisation of W (``nn.Embedding``'s default) and of its probe values.

    Notes
    -----
    Deviations: the official W trains with the caption loss of the whole model; :meth:`fit` uses a
    proxy, the mean squared error of the masked attention output against dense attention on
    captured inputs (not in the paper) plus the official L1 term. Samples without values get
    seeded standard normal probe values (the output error is then an unbiased estimate of the
    attention-map error times Dv). Non-causal only: the learned mask is the official model's
    video-token block, which is bidirectional (a causal call is refused by the capabilities).
    """

    name = "swinbert"
    paper = "Lin et al., SwinBERT, CVPR 2022"
    pattern = "learned static M x M mask sigmoid(W), diagonal forced, added as -10000 (1 - A); L1 sparsity"
    extra_defaults = {"mask_logits": None, "hard": False, "sparsity_weight": 0.5, "init_seed": 0}
    capabilities = Capabilities(causal=False, chunked=False, decode=False, needs_fit=True, fittable=True,
                                mask_format="token", own_output=True)
    learned_param = "mask_logits"

    def _check_params(self) -> None:
        w = self.params["mask_logits"]
        if w is not None:
            arr = np.asarray(w)
            if (not np.issubdtype(arr.dtype, np.floating) or arr.ndim != 2 or arr.shape[0] != arr.shape[1]
                    or arr.shape[0] < 1 or not np.all(np.isfinite(arr))):
                raise ValueError(f"swinbert: mask_logits must be a finite float (M, M) array, got dtype {arr.dtype}, "
                                 f"shape {arr.shape}")
            self.params["mask_logits"] = arr.astype(np.float32)
        if not isinstance(self.params["hard"], (bool, np.bool_)):
            raise TypeError(f"swinbert: hard must be a bool, got {type(self.params['hard']).__name__}")
        sw = self.params["sparsity_weight"]
        if isinstance(sw, bool) or not isinstance(sw, (int, float, np.floating)) or not sw >= 0 or not np.isfinite(sw):
            raise ValueError(f"swinbert: sparsity_weight must be a finite float >= 0, got {sw!r}")
        self.params["sparsity_weight"] = float(sw)
        self.params["init_seed"] = check_int(self.params["init_seed"], "init_seed")

    @property
    def reads_outside_mask(self) -> bool:
        """The soft mask gives every key a weight (exp(-10000 (1 - a)), 0 in float32 for a < 0.5)."""
        return self.fitted and not self.params["hard"]

    @staticmethod
    def mask_values(W: np.ndarray, hard: bool = False) -> np.ndarray:
        """A = I + (1 - I) sigmoid(W), thresholded at 0.5 when `hard` (float64, (M, M))."""
        M = W.shape[0]
        eye = np.eye(M)
        A = eye + (1.0 - eye) * _sigmoid(np.asarray(W, np.float64))
        return (A >= 0.5).astype(np.float64) if hard else A

    def bias(self) -> Optional[np.ndarray]:
        """The additive (M, M) float32 bias ``(1 - A) * -10000`` of the fitted mask (None unfitted)."""
        W = self.params["mask_logits"]
        if W is None:
            return None
        return ((1.0 - self.mask_values(W, self.params["hard"])) * -MASK_SCALE).astype(np.float32)

    def _check_length(self, Nq: int, Nk: int) -> None:
        W = self.params["mask_logits"]
        if W is not None and not (Nq == Nk == W.shape[0]):
            raise ValueError(f"swinbert: the mask was fitted for M={W.shape[0]} video tokens; got Nq={Nq}, Nk={Nk}")

    def _estimate(self, q, k, causal, scale) -> TokenIndices:
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        self._check_length(Nq, Nk)
        W = self.params["mask_logits"]
        if W is None:
            rows = np.broadcast_to(np.arange(Nk, dtype=np.int32), (Nq, Nk))
        else:
            keep = self.mask_values(W) >= 0.5
            K = int(keep.sum(1).max())
            rows = np.full((Nq, K), -1, np.int32)
            for i in range(Nq):
                j = np.flatnonzero(keep[i])
                rows[i, :j.size] = j
        idx = np.ascontiguousarray(np.broadcast_to(rows, (B, Hq) + rows.shape))
        return TokenIndices(idx, 1, Nk, assume_sorted=True)

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Soft mask: dense attention with the (M, M) bias; hard: the kept keys; unfitted: dense."""
        self._refuse_gate_inputs(q_gate, k_gate)
        q, k, v = check_qkv(q, k, v)
        causal = as_causal(causal)
        mask = self.estimate(q, k, causal=causal, scale=scale)
        self.last_info = {"mask": mask}
        if self.params["mask_logits"] is None:
            return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
        if self.params["hard"]:
            return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
        return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse, bias=self.bias())

    def loss_and_grads(self, W: np.ndarray, sample: dict):
        """Proxy loss of one prepared sample and its gradient with respect to W (float64):
        ``mean((O - O_dense)^2) + sparsity_weight * mean((1 - I) sigmoid(W))``; the output term's
        gradient goes through the dense kernel's backward (d bias), then
        ``d bias / d W = 10000 (1 - I) sigmoid'(W)``."""
        q, k, v, target, causal, scale = (sample[n] for n in ("q", "k", "v", "target", "causal", "scale"))
        M = W.shape[0]
        off = 1.0 - np.eye(M)
        sig = _sigmoid(W)
        bias = ((1.0 - (np.eye(M) + off * sig)) * -MASK_SCALE).astype(np.float32)
        o, lse = attention(q, k, v, causal=causal, scale=scale, return_lse=True, bias=bias)
        diff = o.astype(np.float64) - target
        lam = self.params["sparsity_weight"]
        loss = float((diff * diff).mean()) + lam * float((off * sig).mean())
        do = (2.0 * diff / diff.size).astype(np.float32)
        _, _, _, dbias = dense_attention_backward(q, k, v, o, lse, do, causal=causal, scale=scale, bias=bias)
        grad = (MASK_SCALE * dbias.astype(np.float64) + lam / (M * M)) * off * sig * (1.0 - sig)
        return loss, grad

    def fit(self, samples: Sequence, *, steps: int = 100, lr: float = 0.05, causal: bool = False,
            scale: Optional[float] = None, progress: bool = True, **kwargs) -> SwinBERTFitResult:
        """Fit the mask logits on captured (q, k) or (q, k, v) inputs of M tokens each (see Notes of
        the class: a proxy loss). Starts from the current logits when fitted, else N(0, 1).

        Parameters
        ----------
        samples : sequence of (q, k) or (q, k, v)
            Nq == Nk == M in every sample.
        steps, lr : int, float
            AdamW steps (one sample each, in turn) and peak learning rate; other keyword arguments
            go to :func:`spattn.training.fit`.
        causal, scale
            The attention of the captured layer.
        """
        steps = check_positive_int(steps, "steps")
        causal, scale = as_causal(causal), as_scale(scale)
        rng = np.random.default_rng(self.params["init_seed"])

        def prepare(item):
            if len(item) not in (2, 3):
                raise ValueError(f"each sample must be (q, k) or (q, k, v), got {len(item)} arrays")
            q, k = item[0], item[1]
            if len(item) == 3:
                q, k, v = check_qkv(q, k, item[2])
            else:
                q, k, _ = check_qkv(q, k)
                v = rng.standard_normal(k.shape[:3] + (64,)).astype(np.float32)
            if q.shape[2] != k.shape[2]:
                raise ValueError(f"swinbert: fit needs Nq == Nk (M video tokens), got Nq={q.shape[2]}, Nk={k.shape[2]}")
            target = attention(q, k, v, causal=causal, scale=scale).astype(np.float64)
            return {"q": q, "k": k, "v": v, "target": target, "causal": causal, "scale": scale}

        prepared = training.prepare_samples(samples, prepare, desc="swinbert targets", progress=progress)
        M = prepared[0]["q"].shape[2]
        if any(s["q"].shape[2] != M for s in prepared):
            raise ValueError("swinbert: every sample must have the same number of tokens M")
        W0 = self.params["mask_logits"]
        if W0 is not None and W0.shape[0] != M:
            raise ValueError(f"swinbert: the mask was fitted for M={W0.shape[0]}, samples have M={M}")
        W = rng.standard_normal((M, M)) if W0 is None else W0.astype(np.float64)

        def step_fn(step: int):
            loss, grad = self.loss_and_grads(W, prepared[step % len(prepared)])
            return loss, [grad]

        losses = training.fit([W], step_fn, steps=steps, lr=lr, progress=progress, desc="swinbert", **kwargs)
        self.set_params(mask_logits=W.astype(np.float32))
        return SwinBERTFitResult(self.params["mask_logits"], losses)


__all__ = ["SwinBERT", "SwinBERTFitResult", "MASK_SCALE"]
