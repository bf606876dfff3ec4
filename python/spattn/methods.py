"""Method registry: one small class per sparse-attention method.

A method is an estimator (``estimate(q, k, causal=...) -> BlockMask | TokenIndices``) plus the
kernel that executes its mask format (``__call__(q, k, v, causal=..., return_lse=False)``).
The CLI, the comparison harness, the README table and the parametrised tests iterate this
registry, so adding a method is: an estimator in C++, a binding, a class here, tests, a README row.

>>> import spattn
>>> spattn.methods.available()
['dense', 'oracle_topk', 'streaming']
>>> m = spattn.methods.get("streaming", local_tokens=512)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Type, Union

import numpy as np

from . import _core
from ._validation import check_positive_int, check_qkv, check_scale
from .kernels import attention, block_sparse_attention, token_sparse_attention
from .masks import BlockMask, TokenIndices

Mask = Union[BlockMask, TokenIndices]
_REGISTRY: Dict[str, Type["Method"]] = {}


def register(cls: Type["Method"]) -> Type["Method"]:
    """Class decorator adding a Method subclass to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> List[str]:
    """Names of the registered methods, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> "Method":
    """Instantiate method `name` with parameters overriding its defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {available()}")
    return _REGISTRY[name](**params)


class Method:
    """Base class: parameters with defaults, an estimator and the kernel for its mask."""

    name: str = ""
    paper: str = ""
    pattern: str = ""
    defaults: Dict[str, Any] = {}
    supports_noncausal: bool = True

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                            f"known: {sorted(self.defaults)}")
        self.params: Dict[str, Any] = {**self.defaults, **params}
        self.last_info: Dict[str, Any] = {}
        self._check_params()

    def _check_params(self) -> None:
        """Validate self.params; subclasses raise ValueError/TypeError naming the parameter."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"spattn.methods.get({self.name!r}{', ' if args else ''}{args})"

    def estimate(self, q, k, *, causal: bool = False, scale: Optional[float] = None) -> Mask:
        """Return the mask this method selects for (q, k)."""
        raise TypeError(f"{type(self).__name__} must define estimate()")  # abstract

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False):
        """Estimate the mask, then run the kernel of its format."""
        mask = self.estimate(q, k, causal=causal, scale=scale)
        if isinstance(mask, BlockMask):
            return block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)
        return token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)


@register
class Dense(Method):
    """Exact attention (the baseline every method is measured against)."""

    name = "dense"
    paper = "exact attention (FlashAttention-style tiling, Dao et al. 2022)"
    pattern = "all blocks"
    defaults = {"block_size": 64}

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")

    def estimate(self, q, k, *, causal=False, scale=None) -> BlockMask:
        q, k, _ = check_qkv(q, k)
        bs = self.params["block_size"]
        return BlockMask.full(q.shape[0], 1, q.shape[2], k.shape[2], bs, bs)

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        return attention(q, k, v, causal=causal, scale=scale, return_lse=return_lse)


@register
class Streaming(Method):
    """Attention sinks + local window (StreamingLLM; the A-shape of MInference), as a BlockMask.

    Parameters
    ----------
    block_size : int, default 64
    sink_tokens : int, default 128
        Initial keys every query keeps (rounded up to whole blocks).
    local_tokens : int, default 1024
        Width of the window ending at each query's causal limit (centred when not causal);
        every block it touches is kept.
    """

    name = "streaming"
    paper = "Xiao et al., Efficient Streaming Language Models with Attention Sinks, ICLR 2024"
    pattern = "sink + local window (A-shape)"
    defaults = {"block_size": 64, "sink_tokens": 128, "local_tokens": 1024}

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")
        for name in ("sink_tokens", "local_tokens"):
            val = self.params[name]
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
                raise ValueError(f"{name} must be an int >= 0, got {val!r}")

    def estimate(self, q, k, *, causal=False, scale=None) -> BlockMask:
        q, k, _ = check_qkv(q, k)
        B, Hq, Nq, _ = q.shape
        p = self.params
        blocks = _core.estimate_streaming(B, Hq, k.shape[1], Nq, k.shape[2], bool(causal),
                                          p["block_size"], p["sink_tokens"], p["local_tokens"])
        return BlockMask(blocks, p["block_size"], p["block_size"], Nq, k.shape[2])


@register
class OracleTopK(Method):
    """Exact per-(head, q-block) smallest set of kv blocks whose true attention mass reaches gamma.

    An upper bound, not a practical method: it reads the exact block-pooled attention map
    (mass of a block = sum of softmax probabilities over it, averaged over the q-block's rows
    that see a key). Ties go to the lower block index.

    Parameters
    ----------
    block_size : int, default 64
    gamma : float in (0, 1], default 0.9
    """

    name = "oracle_topk"
    paper = "oracle (exact block attention mass), upper bound for every estimator"
    pattern = "exact top blocks per q-block"
    defaults = {"block_size": 64, "gamma": 0.9}

    def _check_params(self) -> None:
        check_positive_int(self.params["block_size"], "block_size")
        g = self.params["gamma"]
        if not isinstance(g, (float, int, np.floating)) or not 0 < float(g) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {g!r}")

    def estimate(self, q, k, *, causal=False, scale=None) -> BlockMask:
        q, k, _ = check_qkv(q, k)
        p = self.params
        blocks = _core.estimate_oracle_topk(q, k, bool(causal), check_scale(scale, q.shape[3]),
                                            p["block_size"], float(p["gamma"]))
        return BlockMask(blocks, p["block_size"], p["block_size"], q.shape[2], k.shape[2])


@register
class FlexPrefill(Method):
    """FlexPrefill: query-aware sparse prefill with Jensen-Shannon pattern switching.

    Lai et al., "FlexPrefill: A Context-Aware Sparse Attention Mechanism for Efficient
    Long-Sequence Inference", ICLR 2025; follows the official ``get_active_blocks``.

    Per (batch, head), from the last ``block_size`` queries: vertical (column) and slash
    (diagonal) attention statistics give budgets ``count(cumsum(sorted) <= gamma) + 1``, then
    ``// 128 + 1`` blocks (a literal 128, as in the official code), clamped to
    [min_budget, max_budget]. The sqrt Jensen-Shannon distance between the pooled estimate
    ``softmax(mean(last queries) . mean(K blocks))`` and the true block distribution of those
    queries decides the pattern: below ``tau`` the head is *query-aware* (min budgets for
    vertical/slash, plus the blocks of the flattened causal pooled-score matrix while its
    running sum stays <= gamma * n_blocks), otherwise *vertical-slash*. Key block 0 and the main
    diagonal are always kept. Short inputs (N <= max(2 * block_size, min_budget rounded up to
    blocks)) and decode (Nq = 1) fall back to dense, as in the official code.

    Parameters
    ----------
    gamma : float, default 0.9
        Coverage (paper: 0.9 for Yi/Qwen2, 0.95 for LLaMA-3.1/GLM-4; the official function has no default).
    tau : float, default 0.1
        sqrt-JS threshold (paper experiments: 0.1; the official function's default 0 disables query-aware heads).
    min_budget : int, default 1024
        Minimum budget in tokens (paper experiments: 1024; official function default: 1 token).
    max_budget : int or None, default None
        Maximum budget in tokens (None: unlimited, as in the paper's runs).
    block_size : int, default 128
    gqa_interleave : bool, default False
        Official option: query head h reads kv head h % Hkv (instead of spattn's h // (Hq/Hkv))
        both in the estimate and in the attention; the heads are permuted around the kernels.

    Notes
    -----
    Deviations from the official code, all deliberate: float32 where it uses bf16; ties in
    top-k and sorting broken towards the lower index (torch leaves them unspecified); batch > 1
    handled by looping (it asserts B == 1). As in the official
    code, the estimation uses scale 1/sqrt(D) whatever ``scale`` the attention uses, and an exact
    zero probability in the JS terms yields NaN, which keeps the head vertical-slash.
    Only causal prefill (Nq == Nk) and decode (Nq == 1) are defined.

    After ``estimate``, ``last_info`` holds per (B, Hq): ``pattern`` (array of
    "vertical_slash" / "query_aware" / "dense"), ``js`` (sqrt-JS distance, NaN for dense),
    ``n_vertical`` and ``n_slash`` (budgets in blocks).
    """

    name = "flexprefill"
    paper = "Lai et al., FlexPrefill: A Context-Aware Sparse Attention Mechanism, ICLR 2025"
    pattern = "query-aware | vertical-slash, chosen per head by JS divergence"
    defaults = {"gamma": 0.9, "tau": 0.1, "min_budget": 1024, "max_budget": None, "block_size": 128,
                "gqa_interleave": False}
    supports_noncausal = False
    PATTERNS = ("vertical_slash", "query_aware", "dense")

    @staticmethod
    def _interleave_order(Hq: int, Hkv: int) -> np.ndarray:
        """order[j] = original query head placed at position j so that position j reads kv head
        j // (Hq/Hkv) in spattn's layout exactly when the original head h reads h % Hkv."""
        G = Hq // Hkv
        j = np.arange(Hq)
        return (j % G) * Hkv + j // G

    def _check_params(self) -> None:
        p = self.params
        check_positive_int(p["block_size"], "block_size")
        check_positive_int(p["min_budget"], "min_budget")
        if p["max_budget"] is not None:
            check_positive_int(p["max_budget"], "max_budget")
        if not isinstance(p["gamma"], (float, int, np.floating)) or not 0 < float(p["gamma"]) <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {p['gamma']!r}")
        if not isinstance(p["tau"], (float, int, np.floating)) or not float(p["tau"]) >= 0:
            raise ValueError(f"tau must be a number >= 0, got {p['tau']!r}")
        if not isinstance(p["gqa_interleave"], (bool, np.bool_)):
            raise TypeError(f"gqa_interleave must be a bool, got {p['gqa_interleave']!r}")

    def estimate(self, q, k, *, causal=False, scale=None) -> BlockMask:
        q, k, _ = check_qkv(q, k)
        if not causal:
            raise ValueError("flexprefill is defined for causal prefill only; call it with causal=True")
        Nq, Nk = q.shape[2], k.shape[2]
        if Nq != Nk and Nq != 1:
            raise ValueError(f"flexprefill needs Nq == Nk (prefill) or Nq == 1 (decode); got Nq={Nq}, Nk={Nk}")
        p = self.params
        order = self._interleave_order(q.shape[1], k.shape[1]) if p["gqa_interleave"] else None
        qe = q if order is None else np.ascontiguousarray(q[:, order])
        blocks, pattern, js, nv, ns = _core.estimate_flexprefill(
            qe, k, True, float(p["gamma"]), float(p["tau"]), p["min_budget"],
            -1 if p["max_budget"] is None else p["max_budget"], p["block_size"])
        info = [blocks, pattern, js, nv, ns]
        if order is not None:  # back to the caller's head order
            inv = np.argsort(order)
            info = [x[:, inv] for x in info]
        blocks, pattern, js, nv, ns = info
        self.last_info = {"pattern": np.array(self.PATTERNS, dtype=object)[pattern].astype(str),
                          "js": js, "n_vertical": nv, "n_slash": ns}
        return BlockMask(np.ascontiguousarray(blocks), p["block_size"], p["block_size"], Nq, Nk)

    def __call__(self, q, k, v, *, causal=False, scale=None, return_lse=False):
        if not self.params["gqa_interleave"]:
            return super().__call__(q, k, v, causal=causal, scale=scale, return_lse=return_lse)
        q, k, v = check_qkv(q, k, v)
        mask = self.estimate(q, k, causal=causal, scale=scale)
        order = self._interleave_order(q.shape[1], k.shape[1])
        inv = np.argsort(order)
        pm = BlockMask(np.ascontiguousarray(mask.blocks[:, order]), mask.block_q, mask.block_k, mask.q_len, mask.kv_len)
        out, lse = block_sparse_attention(np.ascontiguousarray(q[:, order]), k, v, pm, causal=causal, scale=scale,
                                          return_lse=True)
        out, lse = np.ascontiguousarray(out[:, inv]), np.ascontiguousarray(lse[:, inv])
        return (out, lse) if return_lse else out


@register
class SeerAttention(Method):
    """SeerAttention: a learned block gate (AttnGate) predicts the block mask.

    Gao et al., "SeerAttention: Learning Intrinsic Sparse Attention in Your LLMs", 2024; follows
    microsoft/SeerAttention's prefill gate (see :mod:`spattn.seer` for the gate, its ground truth
    and its training). Train a gate with :func:`spattn.seer.train_gate`, or load one with
    :func:`spattn.seer.load_gates`.

    Parameters
    ----------
    gate : spattn.seer.SeerGate, optional
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
    defaults = {"gate": None, "threshold": 5e-4, "nz_ratio": None, "topk": None, "last_block_dense": True, "seed": 0}
    supports_noncausal = False

    def _check_params(self) -> None:
        from .seer import SeerGate

        p = self.params
        if p["gate"] is not None and not isinstance(p["gate"], SeerGate):
            raise TypeError(f"gate must be a spattn.seer.SeerGate, got {type(p['gate']).__name__}")
        if p["nz_ratio"] is not None and p["topk"] is not None:
            raise ValueError("give at most one of nz_ratio and topk")
        if p["nz_ratio"] is not None and not 0 < float(p["nz_ratio"]) <= 1:
            raise ValueError(f"nz_ratio must be in (0, 1], got {p['nz_ratio']!r}")
        if p["topk"] is not None:
            check_positive_int(p["topk"], "topk")
        if not float(p["threshold"]) >= 0:
            raise ValueError(f"threshold must be >= 0, got {p['threshold']!r}")

    def gate_for(self, q, k):
        from .seer import SeerGate

        g = self.params["gate"]
        if g is None:
            g = SeerGate.init(q.shape[3], q.shape[1], k.shape[1], seed=self.params["seed"])
        if g.wk.shape[0] not in (q.shape[1], k.shape[1]) or g.head_dim != q.shape[3]:
            raise ValueError(f"gate (wk {g.wk.shape}) does not fit q {q.shape} / k {k.shape}")
        return g

    def estimate(self, q, k, *, causal=False, scale=None) -> BlockMask:
        q, k, _ = check_qkv(q, k)
        if not causal:
            raise ValueError("seerattention's prefill gate is causal; call it with causal=True")
        B, Hq, Nq, _ = q.shape
        Nk = k.shape[2]
        g = self.gate_for(q, k)
        bs = g.block_size
        if Nq == 1:
            self.last_info = {"scores": None}
            return BlockMask.full(B, Hq, Nq, Nk, bs, bs)
        if Nq != Nk:
            raise ValueError(f"seerattention needs Nq == Nk (prefill) or Nq == 1; got Nq={Nq}, Nk={Nk}")
        scores = g.scores(q, k)
        p = self.params
        mode = "nz_ratio" if p["nz_ratio"] is not None else "topk" if p["topk"] is not None else "threshold"
        blocks = _core.seer_select(scores, Nq, bs, mode, float(p["threshold"]),
                                   float(p["nz_ratio"] or 0.1), int(p["topk"] or 1), bool(p["last_block_dense"]))
        self.last_info = {"scores": scores}
        return BlockMask(blocks, bs, bs, Nq, Nk)


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
    decoder : spattn.sea.SeaDecoder, optional
        Learned refinement of the compressed estimate (the paper's decoder, reduced; see
        :mod:`spattn.sea`), trained with :func:`spattn.sea.train_decoder`. None: training-free.

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
    defaults = {"k": 64, "compressed_width": 128, "nb_features": None, "seed": 0, "decoder": None}

    def _check_params(self) -> None:
        from .sea import SeaDecoder

        p = self.params
        if p["decoder"] is not None:
            if not isinstance(p["decoder"], SeaDecoder):
                raise TypeError(f"decoder must be a spattn.sea.SeaDecoder, got {type(p['decoder']).__name__}")
            if p["decoder"].width != p["compressed_width"]:
                raise ValueError(f"decoder width {p['decoder'].width} != compressed_width {p['compressed_width']}")
        check_positive_int(p["k"], "k")
        check_positive_int(p["compressed_width"], "compressed_width")
        if p["nb_features"] is not None:
            check_positive_int(p["nb_features"], "nb_features")

    def features(self, D: int) -> np.ndarray:
        m = self.params["nb_features"] or max(1, int(D * np.log(D) / 8))
        return orthogonal_features(m, D, self.params["seed"])

    def compressed_estimate(self, q, k, *, causal=False, scale=None) -> np.ndarray:
        """The compressed estimated attention (B, Hq, Nq, compressed_width); rows sum to 1."""
        q, k, _ = check_qkv(q, k)
        return _core.sea_estimate(q, k, self.features(q.shape[3]), bool(causal),
                                  check_scale(scale, q.shape[3]), self.params["compressed_width"])

    def estimate(self, q, k, *, causal=False, scale=None) -> TokenIndices:
        q, k, _ = check_qkv(q, k)
        est = self.compressed_estimate(q, k, causal=causal, scale=scale)
        if self.params["decoder"] is not None:
            from .sea import column_counts

            counts = column_counts(q.shape[2], k.shape[2], self.params["compressed_width"], bool(causal))
            est = self.params["decoder"].refine(est, counts)
        idx = _core.sea_select(est, k.shape[1], k.shape[2], bool(causal), self.params["k"])
        self.last_info = {"estimate": est}
        return TokenIndices(idx, 1, k.shape[2], assume_sorted=True)
