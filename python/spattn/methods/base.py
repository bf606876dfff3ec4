"""The Method base class, its declared Capabilities, and the registration decorator.

A method is an estimator (``estimate(q, k, causal=...) -> BlockMask | TokenIndices``) plus the
kernel that executes its mask format (``__call__(q, k, v, causal=..., return_lse=False)``).
Each method module declares, once: ``name``, ``paper``, ``pattern``, ``params_struct`` (the C++
parameter class, ``_core.<Method>Params``: the only place its defaults and range checks live),
``extra_defaults`` (Python-only parameters such as a trained gate), ``capabilities`` and
``_estimate``. Harnesses (``evaluate``,
the CLI, the generic tests) read only this interface and the capabilities, never a method name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

from .. import _core
from .._validation import as_causal, as_scale, check_qkv
from ..kernels import sparse_attention
from ..masks import (BlockMask, ClusteredMask, PermutedBlockMask, RowBlockIndices, TokenIndices, VerticalSlashMask,
                     WindowMask)

Mask = Union[BlockMask, TokenIndices, VerticalSlashMask, WindowMask, PermutedBlockMask, ClusteredMask, RowBlockIndices]
MASK_FORMATS = ("block", "token", "vertical_slash", "window", "permuted", "clustered", "row_block", "none")
GQA_LAYOUTS = ("grouped", "interleaved")

_REGISTRY: Dict[str, Type["Method"]] = {}
_ALIASES: Dict[str, str] = {}  # other names a method is found by (the issue / paper spelling)


@dataclass(frozen=True)
class Capabilities:
    """What a method supports; harnesses and tests filter on these, never on method names.

    Attributes
    ----------
    causal, noncausal : bool
        Accepts ``causal=True`` / ``causal=False``.
    prefill : bool
        Estimates for Nq == Nk.
    chunked : bool
        Accepts any Nq != Nk (chunked prefill with Nq < Nk, bottom-right aligned, or
        cross-attention); False: only the lengths the other flags name.
    decode : bool
        Accepts Nq == 1 (possibly by running dense, as the method's docstring says).
    needs_fit : bool
        Meaningful only with a trained state (``fit`` / ``prepare``); the default is a baseline.
    fittable : bool
        Has a learned part that ``fit(samples)`` trains (optional when ``needs_fit`` is False).
    exact_reference_only : bool
        Reads exact attention to build its mask: an evaluation upper bound, not a practical method.
    gqa_layouts : tuple of str
        Query-to-kv head layouts it can run: "grouped" (h // (Hq/Hkv), the default everywhere)
        and, as an option of the method, "interleaved" (h % Hkv).
    mask_format : str
        "block" (BlockMask), "token" (TokenIndices), "vertical_slash" (VerticalSlashMask),
        "window" (WindowMask), "permuted" (PermutedBlockMask), "clustered" (ClusteredMask), "row_block"
        (RowBlockIndices) or "none" (no mask is read: the kernel is exact; ``estimate``
        returns the full BlockMask so metrics apply).
    exact : bool
        Its output is exact attention.
    gate_inputs : bool
        ``estimate`` / ``__call__`` also take ``q_gate``, ``k_gate``: separate inputs of the
        method's learned predictor (SeerAttention's gate sees the model's q/k *before* RoPE while
        attention uses them after). The transformers backend then hands over the pre-RoPE q/k of
        Llama-family attention modules. Other methods refuse gate inputs (TypeError).
    value_inputs : bool
        ``estimate`` also takes ``v`` (SEA's learned encoder reads V), and ``__call__`` may do
        more than attention over the mask (SEA's output gates): harnesses pass ``v`` to
        ``estimate`` and take the output from ``__call__``. Other methods refuse ``v`` (TypeError).
    own_output : bool
        ``__call__`` computes more than the kernel of the mask ``estimate`` returns (AnchorAttention
        counts some keys twice in its softmax, as its official kernel does; Combiner adds span
        summaries; SSE is a linear-attention recurrence; Routing Transformer averages per-cluster
        softmaxes): harnesses take the output from ``__call__`` and the mask of that call from
        ``last_info["mask"]`` when the method records it, else from ``estimate``.
    stateful : bool
        The method keeps per-instance state across calls (``method.state``, a
        :class:`spattn.state.MethodState`: arrays, a step counter and a :class:`spattn.state.Schedule`
        of dense warm-up, search and reuse steps), as diffusion methods do over denoising steps
        (Re-ttention, SparseD): successive calls are successive steps, so the output of a call
        depends on the calls before it. ``method.reset()`` starts a new run; a call whose shapes
        differ from the state's starts one too; ``method.warm_up(q, k, v)`` runs the schedule to
        its next reuse (sparse) step, where harnesses measure it. Requires ``own_output`` (``last_info["mask"]`` is
        the mask of the call: the full map on dense and search steps). The transformers backend
        copies the method per layer, so the state is per layer (unless ``cross_layer``).
    cross_layer : bool
        Successive calls are successive *layers* of one forward pass (SpAtten's cascade pruning
        carries token importance from layer to layer). Requires ``stateful``. The transformers
        backend gives every non-dense layer the same instance and resets it at the first of them
        on each forward pass.
    coords_input : bool
        Tokens carry spatial coordinates (sparse 3D voxels, Direct3D-S2): ``estimate`` / ``__call__``
        take ``coords=`` (N, 3) or (B, N, 3) ints; without it the method's documented default
        layout is used, so harnesses may call it on plain (q, k, v).
    geometry : bool
        The pattern is defined by token geometry, not by q/k: the method reads point coordinates
        (PointGS: ``params["points"]``, (N, 3) or (B, N, 3)) and, when none are given, uses the
        documented default layout of its docstring. Harnesses may set ``points`` to their own.
    channel_attention : bool
        Not token sparsity: the method mixes feature channels (a D x D map per head over all
        tokens, DLGSANet's transposed attention), so every key is read (``mask_format`` "none")
        and the output needs Dv == D. Requires ``own_output``.
    """

    causal: bool = True
    noncausal: bool = True
    prefill: bool = True
    chunked: bool = True
    decode: bool = True
    needs_fit: bool = False
    fittable: bool = False
    exact_reference_only: bool = False
    gqa_layouts: Tuple[str, ...] = ("grouped",)
    mask_format: str = "block"
    exact: bool = False
    gate_inputs: bool = False
    value_inputs: bool = False
    own_output: bool = False
    stateful: bool = False
    coords_input: bool = False
    cross_layer: bool = False
    geometry: bool = False
    channel_attention: bool = False

    def __post_init__(self):
        if not (self.causal or self.noncausal):
            raise ValueError("a method must support causal or non-causal attention")
        if not (self.prefill or self.chunked or self.decode):
            raise ValueError("a method must support at least one of prefill, chunked, decode")
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {self.mask_format!r}")
        if "grouped" not in self.gqa_layouts or any(g not in GQA_LAYOUTS for g in self.gqa_layouts):
            raise ValueError(f"gqa_layouts must include 'grouped' and be a subset of {GQA_LAYOUTS}, "
                             f"got {self.gqa_layouts}")
        if self.needs_fit and not self.fittable:
            raise ValueError("needs_fit requires fittable")
        if self.stateful and not self.own_output:
            raise ValueError("stateful requires own_output (the output of a call depends on the calls before it)")
        if self.cross_layer and not self.stateful:
            raise ValueError("cross_layer requires stateful (the state carried from layer to layer)")
        if self.channel_attention and not (self.own_output and self.mask_format == "none"):
            raise ValueError("channel_attention requires own_output and mask_format 'none' (no token is skipped)")

    def supports(self, *, causal: bool, q_len: int, kv_len: int) -> bool:
        """Whether a call with this causality and these lengths is defined for the method."""
        return (self.causal if causal else self.noncausal) and self.supports_lengths(q_len, kv_len)

    def supports_lengths(self, q_len: int, kv_len: int) -> bool:
        """Whether (Nq, Nk) is a shape the method estimates (see the class attributes)."""
        if q_len == kv_len and self.prefill:
            return True
        if q_len == 1 and self.decode:
            return True
        return q_len != kv_len and self.chunked

    def lengths_text(self) -> str:
        """The accepted (Nq, Nk) shapes in words, for error messages and tables."""
        if self.chunked and self.prefill and self.decode:
            return "any Nq, Nk"
        parts = [text for flag, text in ((self.prefill, "Nq == Nk (prefill)"), (self.chunked, "Nq != Nk (chunked)"),
                                         (self.decode, "Nq == 1 (decode)")) if flag]
        return " or ".join(parts)


def register(cls: Type["Method"]) -> Type["Method"]:
    """Class decorator adding a Method subclass to the registry under ``cls.name``.

    The class must declare its own ``name`` and ``capabilities`` (not inherit them).
    """
    if not cls.__dict__.get("name"):
        raise ValueError(f"{cls.__name__} must declare a name")
    if not isinstance(cls.__dict__.get("capabilities"), Capabilities):
        raise TypeError(f"{cls.__name__} must declare capabilities = Capabilities(...)")
    if cls.name in _REGISTRY or cls.name in _ALIASES:
        raise ValueError(f"method {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    for alias in cls.__dict__.get("aliases", ()):
        if alias in _REGISTRY or alias in _ALIASES:
            raise ValueError(f"method alias {alias!r} is already registered")
        _ALIASES[alias] = cls.name
    return cls


class Method:
    """Base class: parameters with defaults, declared capabilities, an estimator and the kernel
    of its mask format.

    Subclasses declare ``name``, ``paper``, ``pattern``, ``defaults``, ``capabilities`` and
    implement ``_estimate`` (and ``_check_params`` to validate parameters). Learned methods
    (``capabilities.fittable``) also set ``learned_param`` and implement ``fit``.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[Tuple[str, ...]] = ()  # other registry names (lookup / get only)
    paper: ClassVar[str] = ""
    pattern: ClassVar[str] = ""
    params_struct: ClassVar[Optional[type]] = None
    extra_defaults: ClassVar[Dict[str, Any]] = {}
    capabilities: ClassVar[Capabilities] = Capabilities()
    learned_param: ClassVar[Optional[str]] = None

    def __init__(self, **params: Any):
        self.params: Dict[str, Any] = {}
        self.cparams = None  # the C++ parameter struct (params_struct) behind self.params
        self.last_info: Dict[str, Any] = {}
        self.set_params(**params)

    # ------------------------------------------------------------------ parameters (one hook)
    @classmethod
    def default_params(cls) -> Dict[str, Any]:
        """The method's parameters and their defaults (a fresh dict): the fields of the C++
        parameter struct as C++ initialises them, then the Python-only ``extra_defaults``."""
        d = cls.params_struct().to_dict() if cls.params_struct is not None else {}
        d.update(cls.extra_defaults)
        return d

    def set_params(self, **params: Any) -> "Method":
        """Override parameters. Unknown names raise TypeError; the C++ struct checks types
        (TypeError) and ranges (ValueError), naming the parameter; ``_check_params`` checks the
        Python-only ones."""
        defaults = self.default_params()
        unknown = set(params) - set(defaults)
        if unknown:
            raise TypeError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; known: {sorted(defaults)}")
        merged = {**defaults, **self.params, **params}
        cparams = None
        if self.params_struct is not None:
            cparams = self.params_struct(**{f: merged[f] for f in self.params_struct.field_names()})
            merged.update(cparams.to_dict())  # the values as C++ holds them
        old, self.params = self.params, merged
        try:
            self._check_params()
        except Exception:
            self.params = old
            raise
        self.cparams = cparams
        return self

    def _check_params(self) -> None:
        """Validate the Python-only parameters (``extra_defaults``); raise ValueError/TypeError
        naming the parameter."""

    def describe_params(self) -> Dict[str, Any]:
        """Parameters in display (JSON-friendly) form: arrays and objects such as a trained
        gate appear as ``"<TypeName>"``."""
        def shown(v):
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            if isinstance(v, (np.integer, np.floating, np.bool_)):
                return v.item()
            if isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) for x in v):
                return list(v)
            return f"<{type(v).__name__}>"
        return {k: shown(v) for k, v in self.params.items()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"spattn.methods.get({self.name!r}{', ' if args else ''}{args})"

    # ------------------------------------------------------------------ estimate and run
    def _refuse_gate_inputs(self, q_gate, k_gate) -> None:
        """TypeError when gate inputs reach a method without ``capabilities.gate_inputs``."""
        if q_gate is not None or k_gate is not None:
            raise TypeError(f"{self.name} takes no gate inputs (q_gate, k_gate); only methods with "
                            "capabilities.gate_inputs do")

    def check_call(self, q: np.ndarray, k: np.ndarray, causal: bool) -> None:
        """Raise ValueError when the capabilities exclude this causality or these lengths."""
        caps = self.capabilities
        if causal and not caps.causal:
            raise ValueError(f"{self.name} is defined for non-causal attention only; call it with causal=False")
        if not causal and not caps.noncausal:
            raise ValueError(f"{self.name} is defined for causal attention only; call it with causal=True")
        Nq, Nk = q.shape[2], k.shape[2]
        if not caps.supports_lengths(Nq, Nk):
            raise ValueError(f"{self.name} needs {caps.lengths_text()}; got Nq={Nq}, Nk={Nk}")

    def estimate(self, q, k, *, causal: bool = False, scale: Optional[float] = None,
                 q_gate=None, k_gate=None, v=None) -> Mask:
        """Return the mask this method selects for (q, k).

        Parameters
        ----------
        q, k : array_like, shapes (B, Hq, Nq, D) and (B, Hkv, Nk, D)
        causal : bool
            Bottom-right aligned causal attention.
        scale : float, optional
            Logit scale, default 1/sqrt(D).
        q_gate, k_gate : array_like, optional
            Only for methods with ``capabilities.gate_inputs``: the inputs of the learned
            predictor, shaped as q and k (default q and k themselves).
        v : array_like, optional
            Only for methods with ``capabilities.value_inputs``: the values (B, Hkv, Nk, Dv),
            which the method's estimator reads (SEA's learned encoder).
        """
        if v is not None and not self.capabilities.value_inputs:
            raise TypeError(f"{self.name} takes no v in estimate; only methods with capabilities.value_inputs do")
        q, k, v = check_qkv(q, k, v)
        causal, scale = as_causal(causal), as_scale(scale)
        _core.check_shapes(q, k, v, scale)
        self.check_call(q, k, causal)
        if self.capabilities.value_inputs:
            self._refuse_gate_inputs(q_gate, k_gate)
            return self._estimate(q, k, causal, scale, v=v)
        if not self.capabilities.gate_inputs:
            self._refuse_gate_inputs(q_gate, k_gate)
            return self._estimate(q, k, causal, scale)
        q_gate = q if q_gate is None else _check_gate_input(q_gate, q.shape, "q_gate")
        k_gate = k if k_gate is None else _check_gate_input(k_gate, k.shape, "k_gate")
        return self._estimate(q, k, causal, scale, q_gate=q_gate, k_gate=k_gate)

    def _estimate(self, q: np.ndarray, k: np.ndarray, causal: bool, scale: Optional[float]) -> Mask:
        """The estimator proper, on checked float32 inputs; every registered method defines it."""
        raise TypeError(f"{type(self).__name__} must define _estimate()")  # abstract

    def __call__(self, q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                 return_lse: bool = False, q_gate=None, k_gate=None):
        """Estimate the mask (gate inputs passed through, see :meth:`estimate`), then run the
        kernel of its format on (q, k, v)."""
        vkw = {"v": v} if self.capabilities.value_inputs else {}
        mask = self.estimate(q, k, causal=causal, scale=scale, q_gate=q_gate, k_gate=k_gate, **vkw)
        return sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=return_lse)

    def readouts(self) -> Dict[str, Any]:
        """A JSON-friendly summary of ``last_info`` for records and tables (default: none)."""
        return {}

    # ------------------------------------------------------------------ learned state
    @property
    def fitted(self) -> bool:
        """True when the learned part (``learned_param``) holds a trained state."""
        return self.learned_param is not None and self.params.get(self.learned_param) is not None

    def fit(self, samples: Sequence, **kwargs: Any):
        """Train the method's learned part on captured inputs and keep it in ``params``.

        Parameters
        ----------
        samples : sequence of (q, k)
            Captured attention inputs.
        **kwargs
            Options of the method's trainer (``steps``, ``lr``, ``progress``, ...).

        Returns
        -------
        The trainer's result (its ``losses`` hold the loss of every step).
        """
        raise TypeError(f"{self.name} has no learned part to fit (capabilities.fittable is False)")

    def prepare(self, workload, *, seeds: Sequence[int] = (1, 2, 3), steps: int = 200, max_len: int = 4096,
                progress: bool = False) -> "Method":
        """Make the method ready to be evaluated on `workload`.

        A method that needs a fitted state (``capabilities.needs_fit``) and was given none is
        fitted on held-out inputs of the same synthetic model (``seeds``, at most ``max_len``
        tokens, ``steps`` steps; see :func:`spattn.synthetic.held_out_inputs`), so it is
        measured on an input it never saw. Other methods are returned unchanged.

        Parameters
        ----------
        workload : spattn.synthetic.Workload or (q, k, v)
        seeds, steps, max_len, progress
            Held-out inputs and training length.

        Returns
        -------
        self
        """
        if self.capabilities.needs_fit and not self.fitted:
            from ..synthetic import held_out_inputs

            self.fit(held_out_inputs(workload, seeds=seeds, max_len=max_len), steps=steps, progress=progress)
        return self


def _check_gate_input(x, shape, name: str) -> np.ndarray:
    """A gate input as C-contiguous float32 with the shape of its attention input."""
    from .._validation import as_float_array

    x = as_float_array(x, name)
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of its attention input {tuple(shape)}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or inf")
    return x


def registered() -> List[Type[Method]]:
    """The registered Method classes, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def lookup(name: str) -> Type[Method]:
    """The Method class registered under `name` (ValueError listing the names otherwise)."""
    name = _ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]
