"""spattn as an attention backend of HuggingFace transformers (5.x), on the CPU.

>>> from spattn.integrations import hf
>>> model = hf.use(model, method="flexprefill", gamma=0.9)     # doctest: +SKIP
>>> model.generate(input_ids, max_new_tokens=20)                # doctest: +SKIP
>>> hf.stats(model)[0]                                          # doctest: +SKIP

:func:`use` registers an attention function and a mask function with transformers'
``AttentionInterface`` / ``AttentionMaskInterface`` under the name ``"spattn"`` and switches the
model to it. Every attention layer gets its own method instance (per-layer parameters, per-layer
learned state, layers kept dense); :func:`restore` switches the model back.

What runs where, per call of a layer:

- a layer in ``dense_layers``, the method ``"dense"``, or fewer than ``min_prefill_tokens`` keys
  (a short prompt): exact attention (:func:`spattn.attention`);
- one query (a decode step): ``decode_method`` when given, else exact attention (the split-KV
  decode kernel). A decode method over a KV cache (Quest, Double Sparsity, TokenSelect,
  TidalDecode, ...) runs as standalone: on a float32 mirror of the model's cache (a
  :class:`spattn.KVCache` per model, and per batch row of a padded batch) that each step extends
  by the new rows only, so the method's state (Quest's page min/max, Double Sparsity's labels)
  is updated incrementally and its layer plan (dense, select, reuse layers, keyed by layer index)
  applies; the mirror restarts at the first decode step after a prefill call (one copy of the
  prompt's keys) and when the model's cache no longer continues it. It holds one float32 copy of
  the cache's K/V (the price of in-place state; :func:`restore` frees it);
- otherwise (prefill, Nq == Nk, and chunked prefill, Nq < Nk): the method's estimator, then the
  kernel of its mask format. A call whose shape the method's capabilities exclude (e.g.
  chunked prefill for a method defined for Nq == Nk only) runs exact attention; the reason is
  counted in :func:`stats` and warned about once per layer and reason.

Stateful methods (``capabilities.stateful``: Re-ttention, SparseD, diffusion methods whose calls
are denoising steps) need a bidirectional model (their attention is non-causal); each layer's
method keeps its own state, one step per call of the layer; :func:`method_states`,
:func:`reset_states` (a new generation), :func:`save_states` and :func:`load_states` (one
``.npz``) reach them.

Tensors: q arrives from transformers as a transposed view (B, H, Nq, D) of (B, Nq, H, D); it is
copied once to contiguous float32. k and v (the cache) are used without a copy when float32 and
contiguous. GQA is not expanded: spattn's query head h reads kv head h // (Hq / Hkv), which is
transformers' ``repeat_kv`` layout. bf16 / fp16 models work: exact attention (decode steps, short
prompts, dense layers) reads the half-precision cache as stored (float32 accumulation; no
conversion); estimators and sparse kernels get k and v converted to float32 once per call; the
output goes back to the model's dtype.

Gate inputs: a method with ``capabilities.gate_inputs`` (SeerAttention) gets the layer's q / k
*before* RoPE besides the rotated ones: :func:`use` hooks the attention module's ``q_proj`` /
``k_proj`` (Llama-family modules: Llama, Mistral, Qwen2, SmolLM2; modules without them, or with a
q/k norm between projection and RoPE, raise ValueError) and the attention function reshapes their
outputs to (B, H, N, D). :func:`fit` trains such a method on ``(q, k, q_gate, k_gate)`` and hands
it ``rope_config=model.config`` (the gate's RoPE theta and scaling, as in the official code).

Masks: the registered mask function never builds an Nq x Nk mask. It hands the attention
function the causal flag and the 2-D key padding mask; a padded batch row runs on its valid keys
(left padding, the usual padding for generation, and right padding of a prompt both work; padded
query rows get zeros). What the backend cannot express raises ``ValueError`` naming it: sliding
window, chunked or packed-sequence masks, custom mask overlays, padding with holes (right
padding followed by generation), and additive float masks that are not 0 / -inf. A 4-D mask
given by the caller is accepted when it is exactly causal (or full) attention with key padding.
"""

from __future__ import annotations

import copy
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import methods as _methods
from .._validation import as_float_array
from ..kernels import attention as _dense_attention
from ..kernels import sparse_attention
from ..cache import KVCache
from ..masks import BlockMask
from ..methods._decode import CacheDecode
from ..methods.base import Method

NAME = "spattn"
INSTALL_HINT = 'pip install "spattn[hf]"  (transformers, gguf, accelerate; torch==2.13.0)'


def _require_transformers():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:  # the optional extra is missing
        raise ImportError(f"spattn.integrations.hf needs torch and transformers: {INSTALL_HINT}") from exc
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise ImportError(f"spattn.integrations.hf needs transformers 5.x (AttentionMaskInterface), "
                          f"found {transformers.__version__}: {INSTALL_HINT}")
    return torch, transformers


# ---------------------------------------------------------------------------------- layer state
@dataclass
class LayerState:
    """The configuration and counters of one attention layer under the spattn backend.

    Attributes
    ----------
    layer_idx : int
    method : Method
        The prefill method of this layer (its own instance: per-layer parameters and learned state).
    decode_method : Method or None
        Run on single-query calls; None: exact attention.
    dense : bool
        The layer is kept dense (``dense_layers``).
    min_prefill_tokens : int
        Calls with fewer keys run exact attention.
    calls : dict
        Calls per path: ``"sparse"``, ``"decode_method"``, ``"dense"`` (dense layer, dense
        method, decode without a decode method), ``"short"`` (below ``min_prefill_tokens``) and
        ``"fallback: <reason>"`` (the capabilities exclude the call).
    densities : list of float
        Density (share of visible pairs computed, mean over heads and batch) of every sparse call.
    seconds : float
        Wall time spent in this layer's attention (estimate + kernel + conversions).
    pass_start : bool
        The first layer of a method shared across layers (``capabilities.cross_layer``): its
        call resets the method (a new forward pass).
    """

    layer_idx: int
    method: Method
    decode_method: Optional[Method]
    dense: bool
    min_prefill_tokens: int
    calls: Dict[str, int] = field(default_factory=dict)
    densities: List[float] = field(default_factory=list)
    seconds: float = 0.0
    pass_start: bool = False
    _warned: set = field(default_factory=set, repr=False)

    def count(self, path: str) -> None:
        self.calls[path] = self.calls.get(path, 0) + 1

    def reset(self) -> None:
        self.calls.clear()
        self.densities.clear()
        self.seconds = 0.0


@dataclass
class _ModelState:
    layers: Dict[int, LayerState]
    previous_implementation: Optional[str]
    capture: Optional[Dict[int, tuple]] = None
    capture_gate: Optional[Dict[int, tuple]] = None
    # decode methods over a KV cache: a float32 mirror of the model's cache per batch row run
    # (None: the whole batch), kept in step by appending the new rows of each call
    decode_caches: Dict[Optional[int], KVCache] = field(default_factory=dict)
    capture_values: bool = False

    def decode_cache(self, row: Optional[int]) -> KVCache:
        cache = self.decode_caches.get(row)
        if cache is None:
            cache = self.decode_caches[row] = KVCache()
        return cache


def _sync_cache(cache: KVCache, layer: int, key, value, Nq: int) -> None:
    """Bring `layer` of the mirror `cache` to the model's keys / values (B, Hkv, Nk, D): append
    the rows past its length when the call continues the sequence it holds (Nk == length + Nq and
    the last mirrored key row unchanged), else start the layer afresh from every row."""
    Nk = key.shape[2]
    n = cache.length(layer)
    if 0 < n and Nk == n + Nq:
        kb, _, _ = cache.buffers(layer)
        last = as_float_array(key[:, :, n - 1:n], "key")
        if last.shape[:2] == kb.shape[:2] and last.shape[3] == kb.shape[3] and np.array_equal(last, kb[:, :, n - 1:n]):
            cache.append(layer, as_float_array(key[:, :, n:], "key"), as_float_array(value[:, :, n:], "value"))
            return
    cache.drop(layer)
    cache.append(layer, as_float_array(key, "key"), as_float_array(value, "value"))


@dataclass(frozen=True)
class KeyMask:
    """What the spattn mask function hands to the attention function instead of an Nq x Nk mask.

    Attributes
    ----------
    causal : bool
    kv_length : int
        Keys the queries may see: the cache may hold more (a static cache), which are cut.
    key_valid : torch.BoolTensor (B, kv_length) or None
        Key padding (False = padded key); None: no padding.
    """

    causal: bool
    kv_length: int
    key_valid: Any = None
    # transformers asks a prepared mask for its rank; a KeyMask stands for a 4-D mask
    ndim = 4


# ---------------------------------------------------------------------------------- registration
def _mask_function(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                   mask_function=None, attention_mask=None, local_size=None, **kwargs):
    """The ``AttentionMaskInterface`` entry: a :class:`KeyMask` (or None for plain causal
    attention without padding), never a dense mask. Patterns other than causal / bidirectional
    with key padding raise ValueError naming the pattern."""
    from transformers import masking_utils as mu

    if isinstance(attention_mask, KeyMask):  # prepared once by generate() for a static cache
        return attention_mask
    if mask_function is None or mask_function is mu.causal_mask_function:
        causal = True
    elif mask_function is mu.bidirectional_mask_function:
        causal = False
    else:
        what = getattr(mask_function, "__qualname__", repr(mask_function))
        raise ValueError(
            "the spattn attention backend supports causal or bidirectional attention with key padding; "
            f"this model asked for the mask pattern {what!r} (a sliding-window, chunked, packed-sequence or "
            "custom mask), which it cannot express. Keep such models on attn_implementation='sdpa'.")
    if local_size is not None:
        raise ValueError(f"the spattn attention backend has no local (sliding-window) attention; got local_size={local_size}")
    q_offset = int(q_offset)
    kv_offset = int(kv_offset)
    visible = q_offset + q_length - kv_offset if causal else kv_length
    if visible > kv_length or visible < q_length and causal:
        raise ValueError(f"the spattn attention backend cannot align queries at offset {q_offset} (length {q_length}) "
                         f"with keys at offset {kv_offset} (length {kv_length})")
    key_valid = None
    if attention_mask is not None:
        pad = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        key_valid = pad[:, kv_offset:kv_offset + visible].bool()
        if bool(key_valid.all()):
            key_valid = None
    if causal and key_valid is None and visible == kv_length:
        return None
    return KeyMask(causal=causal, kv_length=visible, key_valid=key_valid)


def register() -> None:
    """Register the spattn attention and mask functions with transformers under ``"spattn"``
    (idempotent; :func:`use` calls it)."""
    _require_transformers()
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, _mask_function)


def _attention_modules(model) -> List[Any]:
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")
            and hasattr(m, "is_causal")]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention layers that follow transformers' "
                         "AttentionInterface (modules with layer_idx and num_key_value_groups)")
    return mods


def _as_method(m: Union[str, Method], params: Mapping[str, Any], what: str) -> Method:
    if isinstance(m, Method):
        inst = copy.deepcopy(m)
        if params:
            inst.set_params(**params)
        return inst
    if isinstance(m, str):
        return _methods.get(m, **params)
    raise TypeError(f"{what} must be a method name or a spattn Method, got {type(m).__name__}")


def use(model, method: Union[str, Method, Sequence[Union[str, Method]]] = "flexprefill",
        decode_method: Optional[Union[str, Method]] = None, min_prefill_tokens: int = 1024, *,
        dense_layers: Iterable[int] = (), layer_params: Optional[Mapping[int, Mapping[str, Any]]] = None,
        layer_plan: Any = None, **params: Any):
    """Switch `model` to the spattn attention backend with `method`; returns the model.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model whose attention follows transformers' ``AttentionInterface`` (Llama, Qwen2,
        Mistral without sliding window, ...).
    method : str, Method, or one per layer
        The prefill method (a registry name or an instance, copied per layer), or a sequence
        with one entry per attention layer (e.g. per-layer trained gates).
    decode_method : str or Method, optional
        Run on single-query (decode) calls; default exact attention.
    min_prefill_tokens : int
        Calls that see fewer keys run exact attention (default 1024).
    dense_layers : iterable of int
        Layers kept dense (exact attention).
    layer_params : {layer: {param: value}}, optional
        Per-layer parameter overrides on top of ``params``.
    layer_plan : spattn.LayerPlan or its dict form, optional
        MASFormer's mixed attention spans: the plan's ``dense`` layers run exact attention (added to
        ``dense_layers``), the others `method` (e.g. ``LayerPlan.dense_layers(30, 4, "evenly")``
        with a local method such as ``"streaming"``). :func:`layer_report` gives the per-layer
        FLOPs and error of the configuration.
    **params
        Parameters of `method` (and not of `decode_method`, which takes an instance for its own).

    Raises
    ------
    ImportError naming the pip command when transformers is missing; ValueError / TypeError for an
    unknown method or parameter, a method that cannot run causal attention, or a layer index out
    of range.
    """
    _require_transformers()
    if isinstance(min_prefill_tokens, bool) or not isinstance(min_prefill_tokens, (int, np.integer)) \
            or min_prefill_tokens < 0:
        raise ValueError(f"min_prefill_tokens must be an int >= 0, got {min_prefill_tokens!r}")
    register()
    mods = _attention_modules(model)
    n_layers = len(mods)
    dense_layers = set(int(i) for i in dense_layers)
    if layer_plan is not None:
        from ..layer_plan import LayerPlan
        dense_layers |= set(LayerPlan.coerce(layer_plan).layers("dense", n_layers))
    layer_params = dict(layer_params or {})
    for i in list(dense_layers) + list(layer_params):
        if not 0 <= int(i) < n_layers:
            raise ValueError(f"layer index {i} out of range: the model has {n_layers} attention layers")
    if isinstance(method, (list, tuple)):
        if len(method) != n_layers:
            raise ValueError(f"method: one entry per attention layer expected ({n_layers}), got {len(method)}")
        per_layer = list(method)
    else:
        per_layer = [method] * n_layers
    layers: Dict[int, LayerState] = {}
    for mod in mods:
        i = int(mod.layer_idx)
        m = _as_method(per_layer[i], {**params, **layer_params.get(i, {})}, "method")
        caps = m.capabilities
        if getattr(mod, "is_causal", True) and not caps.causal:
            raise ValueError(f"{m.name} cannot run causal attention; layer {i} of this model is causal")
        dm = None
        if decode_method is not None:
            dm = _as_method(decode_method, {}, "decode_method")
            if not dm.capabilities.decode:
                raise ValueError(f"decode_method {dm.name} does not support single-query (decode) calls")
        layers[i] = LayerState(layer_idx=i, method=m, decode_method=dm, dense=i in dense_layers,
                               min_prefill_tokens=int(min_prefill_tokens))
        mod._spattn_layer = layers[i]
    sparse = sorted(i for i, st in layers.items() if not st.dense)
    if sparse and any(layers[i].method.capabilities.cross_layer for i in sparse):
        if isinstance(method, (list, tuple)) or layer_params:
            raise ValueError("a cross-layer method (capabilities.cross_layer: one instance carries its state "
                             "from layer to layer) takes no per-layer methods or layer_params")
        for i in sparse:  # one instance for the whole stack; reset at the first layer of each pass
            layers[i].method = layers[sparse[0]].method
        layers[sparse[0]].pass_start = True
    for mod in mods:
        _remove_gate_hooks(mod)
        st = layers[int(mod.layer_idx)]
        if st.method.capabilities.gate_inputs:
            _add_gate_hooks(mod, st.method.name)
        elif st.decode_method is not None and st.decode_method.capabilities.gate_inputs:
            _add_gate_hooks(mod, st.decode_method.name)
    old = getattr(model, "_spattn_state", None)
    previous = old.previous_implementation if old is not None else model.config._attn_implementation
    model._spattn_state = _ModelState(layers=layers, previous_implementation=previous)
    for mod in mods:
        mod._spattn_model = model._spattn_state
    model.set_attn_implementation(NAME)
    return model


def _add_gate_hooks(mod, method_name: str) -> None:
    """Keep the outputs of the module's q_proj / k_proj (q and k before RoPE) for the next
    attention call of this module."""
    import torch

    for name in ("q_proj", "k_proj"):
        if not isinstance(getattr(mod, name, None), torch.nn.Module):
            raise ValueError(f"{method_name} needs the q/k before RoPE, which spattn takes from the attention module's "
                             f"q_proj / k_proj (Llama-family models); {type(mod).__name__} has no {name}")
    for name in ("q_norm", "k_norm"):
        if getattr(mod, name, None) is not None:
            raise ValueError(f"{method_name} needs the q/k before RoPE; {type(mod).__name__} applies {name} between "
                             "the projection and RoPE, which the q_proj / k_proj hooks do not see (not supported)")
    mod._spattn_pre_rope = {}

    def keep(which):
        def hook(_module, _inputs, output):
            mod._spattn_pre_rope[which] = output.detach()
        return hook

    mod._spattn_gate_hooks = [mod.q_proj.register_forward_hook(keep("q")),
                              mod.k_proj.register_forward_hook(keep("k"))]


def _remove_gate_hooks(mod) -> None:
    for h in getattr(mod, "_spattn_gate_hooks", ()):
        h.remove()
    for attr in ("_spattn_gate_hooks", "_spattn_pre_rope"):
        if hasattr(mod, attr):
            delattr(mod, attr)


def _gate_inputs(module, q_shape, k_shape):
    """(q_gate, k_gate) float32 (B, H, N, D) from the hooked q_proj / k_proj outputs of this call,
    k_gate holding every key (Nk rows) or only the call's new ones (Nq rows: keys from a cache);
    None when the hooks hold nothing matching these shapes."""
    pre = getattr(module, "_spattn_pre_rope", None)
    if not pre or "q" not in pre or "k" not in pre:
        return None
    qp, kp = pre.pop("q"), pre.pop("k")
    B, Hq, Nq, D = q_shape
    _, Hkv, Nk, _ = k_shape
    if (qp.shape[:2] != (B, Nq) or kp.shape[0] != B or kp.shape[1] not in (Nk, Nq) or qp.shape[-1] != Hq * D
            or kp.shape[-1] != Hkv * D):
        return None
    n = kp.shape[1]
    qg = as_float_array(qp.reshape(B, Nq, Hq, D).transpose(1, 2), "q_gate")
    kg = as_float_array(kp.reshape(B, n, Hkv, D).transpose(1, 2), "k_gate")
    return qg, kg


def _sync_gate_cache(cache: KVCache, layer: int, k_gate: np.ndarray, Nk: int, Nq: int) -> bool:
    """Bring `layer` of the pre-RoPE key mirror to Nk keys from the call's k_gate (every key, or the
    Nq new ones after the Nk - Nq it holds); False (and the layer dropped) when it cannot."""
    B, H, n, _ = k_gate.shape
    none = np.empty((B, H, n, 0), np.float32)  # the gate reads keys only
    if n == Nk:
        cache.drop(layer)
        cache.append(layer, k_gate, none)
        return True
    if n == Nq and layer in cache and cache.length(layer) == Nk - Nq:
        cache.append(layer, k_gate, none)
        return True
    cache.drop(layer)
    return False


def restore(model):
    """Switch `model` back to the attention implementation it had before :func:`use`."""
    state = getattr(model, "_spattn_state", None)
    if state is None:
        raise ValueError("this model is not on the spattn backend (call spattn.integrations.hf.use first)")
    model.set_attn_implementation(state.previous_implementation or "sdpa")
    state.decode_caches.clear()
    for mod in _attention_modules(model):
        _remove_gate_hooks(mod)
        for attr in ("_spattn_layer", "_spattn_model"):
            if hasattr(mod, attr):
                delattr(mod, attr)
    del model._spattn_state
    return model


def layers(model) -> List[LayerState]:
    """The per-layer states of a model on the spattn backend, by layer index."""
    state = getattr(model, "_spattn_state", None)
    if state is None:
        raise ValueError("this model is not on the spattn backend (call spattn.integrations.hf.use first)")
    return [state.layers[i] for i in sorted(state.layers)]


def stats(model, reset: bool = False) -> List[Dict[str, Any]]:
    """Per layer: calls per path, mean density of the sparse calls and attention seconds.

    Parameters
    ----------
    reset : bool
        Clear the counters after reading them.
    """
    out = []
    for st in layers(model):
        out.append({"layer": st.layer_idx, "method": st.method.name, "dense_layer": st.dense,
                     "calls": dict(st.calls),
                     "density": float(np.mean(st.densities)) if st.densities else None,
                     "seconds": st.seconds})
        if reset:
            st.reset()
    return out


def method_states(model) -> Dict[int, Any]:
    """The :class:`spattn.state.MethodState` of each layer whose method keeps state across calls
    (``capabilities.stateful``: diffusion methods whose calls are denoising steps), by layer index.

    Every call of a layer's method is one step of its schedule; calls the backend runs exact
    without the method (dense layers, short prompts, decode without a decode method) are not
    steps. The states are the methods' own objects (changing one changes the layer)."""
    return {st.layer_idx: st.method.state for st in layers(model)
            if st.method.capabilities.stateful and not st.dense}


def reset_states(model) -> None:
    """Restart every stateful layer method at step 0 with no state (a new generation)."""
    for state in method_states(model).values():
        state.reset()


def save_states(model, path) -> None:
    """Write the per-layer method states to one ``.npz`` (``layer<i>/<array>``; no pickle)."""
    arrays: Dict[str, np.ndarray] = {}
    for i, state in method_states(model).items():
        arrays.update(state.to_arrays(f"layer{i}/"))
    np.savez(path, **arrays)


def load_states(model, path) -> None:
    """Restore the per-layer method states written by :func:`save_states` (every stateful layer
    of `model` must be in the file)."""
    from ..state import MethodState

    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for i, state in method_states(model).items():
        state.restore(MethodState.from_arrays(arrays, f"layer{i}/"))


@contextmanager
def capture(model, gate_inputs: bool = False, values: bool = False):
    """Within the block, every attention call also stores this layer's float32 (q, k) in the
    yielded dict {layer_idx: (q, k)} (the last call per layer), as numpy arrays (B, H, N, D).

    Layers whose method takes gate inputs (``capabilities.gate_inputs``), and every layer when
    ``gate_inputs=True`` (then the q_proj / k_proj hooks are added for the block), store
    ``(q, k, q_gate, k_gate)``, the gate inputs being q and k before RoPE. Layers whose method's
    estimator reads V (``capabilities.value_inputs``, SEA), and every layer when ``values=True``,
    append v (B, Hkv, N, Dv) last: ``(q, k, v)`` or ``(q, k, q_gate, k_gate, v)``."""
    state = getattr(model, "_spattn_state", None)
    if state is None:
        raise ValueError("this model is not on the spattn backend (call spattn.integrations.hf.use first)")
    added = []
    if gate_inputs:
        for mod in _attention_modules(model):
            if not hasattr(mod, "_spattn_gate_hooks"):
                _add_gate_hooks(mod, "capture(gate_inputs=True)")
                added.append(mod)
    store: Dict[int, tuple] = {}
    state.capture = store
    state.capture_values = bool(values)
    try:
        yield store
    finally:
        state.capture = None
        state.capture_values = False
        for mod in added:
            _remove_gate_hooks(mod)


def layer_report(model, input_ids) -> List[Dict[str, Any]]:
    """Per-layer attention FLOPs and error of the model's spattn configuration (MASFormer's
    report for a layer plan, and for any method).

    The model runs once with exact attention while each layer's (q, k, v) are captured; then each
    layer's configured path runs on its own captured inputs: a dense layer (``dense_layers`` /
    the layer plan) exact attention, the others the layer's prefill method. Per layer: ``role``
    ("dense" or "sparse"), ``method``, ``density`` (share of the visible causal pairs computed),
    ``flops`` and ``dense_flops`` (attention score + value products, 4 * pairs * D per query head,
    batch included) and ``rel_error`` (||out - exact|| / ||exact|| over the layer). The last entry,
    ``layer = "total"``, sums the FLOPs and gives their ratio. Calls below
    ``min_prefill_tokens`` are counted as the method would run them (dense)."""
    from ..metrics import relative_error

    torch, _ = _require_transformers()
    states = {st.layer_idx: st for st in layers(model)}
    saved = {i: (st.dense, st.min_prefill_tokens) for i, st in states.items()}
    try:
        for st in states.values():
            st.dense = True
        gates = any(st.method.capabilities.gate_inputs for st in states.values())
        with capture(model, gate_inputs=gates, values=True) as store, torch.no_grad():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    finally:
        for i, (d, mpt) in saved.items():
            states[i].dense, states[i].min_prefill_tokens = d, mpt
    for st in states.values():
        st.reset()
    rows: List[Dict[str, Any]] = []
    total, total_dense = 0.0, 0.0
    for i in sorted(states):
        st = states[i]
        q, k, v = store[i][0], store[i][1], store[i][-1]
        B, Hq, Nq, D = q.shape
        Nk = k.shape[2]
        off = Nk - Nq
        pairs = float(sum(min(Nk, r + off + 1) for r in range(Nq)))  # causal pairs per query head
        dense_flops = 4.0 * pairs * D * B * Hq
        exact = _dense_attention(q, k, v, causal=True, scale=None)
        if st.dense or st.method.name == "dense" or Nk < st.min_prefill_tokens:
            out, density, role = exact, 1.0, "dense"
        else:
            m = st.method
            if m.capabilities.gate_inputs:
                mask = m.estimate(q, k, causal=True, q_gate=store[i][2], k_gate=store[i][3])
                out = sparse_attention(q, k, v, mask, causal=True)
            elif m.capabilities.own_output or m.capabilities.value_inputs:
                out = m(q, k, v, causal=True)
                mask = m.last_info["mask"]
            else:
                mask = m.estimate(q, k, causal=True)
                out = sparse_attention(q, k, v, mask, causal=True)
            dens = mask.density(causal=True) if isinstance(mask, BlockMask) else mask.density(q_len=Nq, causal=True)
            density, role = float(np.mean(dens)), "sparse"
        flops = density * dense_flops
        total += flops
        total_dense += dense_flops
        rows.append({"layer": i, "role": role, "method": "dense" if role == "dense" else st.method.name,
                     "density": density, "flops": flops, "dense_flops": dense_flops,
                     "rel_error": float(relative_error(out, exact))})
    rows.append({"layer": "total", "flops": total, "dense_flops": total_dense,
                 "flops_ratio": total / total_dense if total_dense else None})
    return rows


def fit(model, input_ids, *, layers_to_fit: Optional[Iterable[int]] = None, progress: bool = False,
        **fit_kwargs: Any) -> Dict[int, Any]:
    """Train every layer's learned method part on that layer's real (q, k) for `input_ids`.

    The model runs once with exact attention while (q, k) are captured per layer; then each
    layer whose method is fittable calls ``method.fit([(q, k)], **fit_kwargs)``, or, for a
    method with ``capabilities.gate_inputs``, ``method.fit([(q, k, q_gate, k_gate)],
    rope_config=model.config, **fit_kwargs)`` (q_gate, k_gate: q, k before RoPE), and for one with
    ``capabilities.value_inputs`` (SEA: its learned parts per layer), ``method.fit([(q, k, v)])``. Use a text the
    evaluation does not use. Returns {layer: the trainer's result}.
    """
    torch, _ = _require_transformers()
    states = {st.layer_idx: st for st in layers(model)}
    todo = sorted(states if layers_to_fit is None else set(int(i) for i in layers_to_fit))
    saved = {i: (st.dense, st.min_prefill_tokens) for i, st in states.items()}
    try:
        for st in states.values():
            st.dense = True
        with capture(model) as store, torch.no_grad():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    finally:
        for i, (d, mpt) in saved.items():
            states[i].dense, states[i].min_prefill_tokens = d, mpt
    for st in states.values():
        st.reset()  # the exact capture pass is not the method's work
    fit_kwargs.setdefault("progress", False)
    results = {}
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc="fit layers")
    for i in it:
        m = states[i].method
        if m.capabilities.fittable:
            item = store[i]
            if m.capabilities.gate_inputs:
                if len(item) != 4:
                    raise ValueError(f"layer {i}: the pre-RoPE q/k of {m.name}'s gate were not captured")
                kw = {"rope_config": model.config, **fit_kwargs}
                results[i] = m.fit([item], **kw)
            elif m.capabilities.value_inputs:
                results[i] = m.fit([item[:2] + item[-1:]], **fit_kwargs)
            else:
                results[i] = m.fit([item[:2]], **fit_kwargs)
    return results


# ---------------------------------------------------------------------------------- attention
def _interpret_dense_mask(mask, B: int, Nq: int, Nk: int, causal: bool, torch) -> KeyMask:
    """A 4-D mask given by the caller: accepted when it is exactly (causal or full) attention with
    key padding; otherwise ValueError naming what it is not."""
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (Nq, Nk) or mask.shape[0] not in (1, B):
        raise ValueError(f"attention_mask: expected a (B, 1, {Nq}, {Nk}) mask, got shape {tuple(mask.shape)} "
                         "(per-head masks are not supported by the spattn backend)")
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        finite = torch.isfinite(mask)
        if bool((mask[finite] != 0).any()) or bool((mask[~finite] > 0).any()):
            raise ValueError("attention_mask: an additive float mask must hold only 0 and -inf; "
                             "the spattn backend has no attention bias")
        allowed = finite
    else:
        raise ValueError(f"attention_mask: expected a bool or float mask, got dtype {mask.dtype}")
    allowed = allowed[:, 0].expand(B, Nq, Nk)
    key_valid = allowed.any(dim=1)  # (B, Nk): keys some query may see
    base = torch.ones(Nq, Nk, dtype=torch.bool)
    if causal:
        base = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq)
    expect = base[None] & key_valid[:, None, :]
    # rows of padded queries (their own key padded) may differ: their output is discarded
    real_rows = expect.any(dim=2)
    if not bool(((allowed == expect) | ~real_rows[:, :, None]).all()):
        raise ValueError("attention_mask: this 4-D mask is not causal attention with key padding "
                         f"(causal={causal}); the spattn backend cannot express it")
    return KeyMask(causal=causal, kv_length=Nk, key_valid=None if bool(key_valid.all()) else key_valid)


class _KV:
    """The keys and values of one call: float32 numpy for the estimators and sparse kernels
    (converted once, on first use), or the cache's own half-precision tensors for exact attention,
    which reads fp16 / bf16 K/V as stored (decode steps of bf16 / fp16 models: half the bytes)."""

    def __init__(self, key, value, torch=None):
        self.key, self.value, self.torch = key, value, torch
        self._f32 = None if torch is not None else (key, value)

    def f32(self):
        if self._f32 is None:
            self._f32 = (as_float_array(self.key, "k"), as_float_array(self.value, "v"))
        return self._f32

    def dense_operands(self):
        t = self.torch
        if t is not None and self.key.dtype in (t.float16, t.bfloat16) and self.value.dtype == self.key.dtype:
            return self.key, self.value
        return self.f32()


def _run(state: LayerState, q: np.ndarray, kv: _KV, causal: bool, scale: Optional[float],
         gate: Optional[tuple] = None, model_state: Optional[_ModelState] = None,
         row: Optional[int] = None) -> np.ndarray:
    """One batch of unpadded rows: choose the path, run it, count it. `gate`: (q_gate, k_gate)
    for a method with gate inputs (k_gate: every key, or the call's new keys only);
    `row`: the batch row of a padded batch (None: the batch)."""
    Nq, Nk = q.shape[2], kv.key.shape[2]
    dm = state.decode_method
    if Nq > 1 and model_state is not None and model_state.decode_caches:  # a new prompt or chunk: the
        for key, cache in model_state.decode_caches.items():             # mirror restarts at decode
            if not (isinstance(key, tuple) and key[0] == "gate"):
                cache.drop(state.layer_idx)
    if Nq > 1 and model_state is not None and dm is not None and dm.capabilities.gate_inputs and gate is not None:
        # a decode gate reads the prompt's pre-RoPE keys later: kept from the prefill calls
        _sync_gate_cache(model_state.decode_cache(("gate", row)), state.layer_idx, gate[1], Nk, Nq)
    if gate is not None and gate[1].shape[2] != Nk:
        gate_full = None
    else:
        gate_full = gate
    if Nq == 1 and dm is not None and not state.dense:
        if isinstance(dm, CacheDecode) and model_state is not None:
            state.count("decode_method")
            cache = model_state.decode_cache(row)
            _sync_cache(cache, state.layer_idx, kv.key, kv.value, Nq)
            kw = {}
            if dm.capabilities.gate_inputs:
                gcache = model_state.decode_cache(("gate", row))
                if gate is not None and _sync_gate_cache(gcache, state.layer_idx, gate[1], Nk, Nq):
                    kw = {"q_gate": gate[0], "gate_cache": gcache}
                else:
                    state.count("decode_method: gate inputs after RoPE (pre-RoPE keys not captured)")
            out = dm(q, cache, layer=state.layer_idx, causal=causal, scale=scale, **kw)
            sel = dm.last_selection
            state.densities.append(1.0 if sel is None else float(np.mean((sel.indices >= 0).sum(-1))) / max(Nk, 1))
            return out
        if dm.capabilities.supports(causal=causal, q_len=Nq, kv_len=Nk):
            state.count("decode_method")
            return _run_method(state, dm, q, *kv.f32(), causal, scale)
    if state.dense or state.method.capabilities.exact or Nq == 1:
        state.count("dense")
        return _dense_attention(q, *kv.dense_operands(), causal=causal, scale=scale)
    if Nk < state.min_prefill_tokens:
        state.count("short")
        return _dense_attention(q, *kv.dense_operands(), causal=causal, scale=scale)
    m = state.method
    caps = m.capabilities
    if not caps.supports(causal=causal, q_len=Nq, kv_len=Nk):
        if not (caps.causal if causal else caps.noncausal):
            reason = f"{m.name} is defined for {'non-causal' if causal else 'causal'} attention only"
        elif Nq != Nk and not caps.chunked:
            reason = f"{m.name} does not estimate chunked prefill (Nq != Nk)"
        else:
            reason = f"{m.name} needs {caps.lengths_text()}"
        key = f"fallback: {reason}"
        state.count(key)
        if key not in state._warned:
            state._warned.add(key)
            warnings.warn(f"spattn layer {state.layer_idx}: {reason}; Nq={Nq}, Nk={Nk} runs exact attention",
                          RuntimeWarning, stacklevel=3)
        return _dense_attention(q, *kv.dense_operands(), causal=causal, scale=scale)
    state.count("sparse")
    if state.pass_start and caps.cross_layer:
        m.reset()  # a new forward pass of the stack
    return _run_method(state, m, q, *kv.f32(), causal, scale, gate_full)


def _run_method(state: LayerState, m: Method, q, k, v, causal: bool, scale, gate=None) -> np.ndarray:
    if m.capabilities.gate_inputs:
        if gate is None:
            raise ValueError(f"spattn layer {state.layer_idx}: {m.name} needs the q/k before RoPE, which were not "
                             "captured for this call (q_proj / k_proj outputs do not match the attention inputs)")
        if m.capabilities.own_output:  # NSA: its compression reads the pre-RoPE keys, its output is its own
            out = m(q, k, v, causal=causal, scale=scale, q_gate=gate[0], k_gate=gate[1])
            mask = m.last_info.get("mask")
            if mask is None:
                mask = m.estimate(q, k, causal=causal, scale=scale, q_gate=gate[0], k_gate=gate[1])
        else:
            mask = m.estimate(q, k, causal=causal, scale=scale, q_gate=gate[0], k_gate=gate[1])
    elif m.capabilities.value_inputs or m.capabilities.own_output:  # the method's own output step (SEA's
        out = m(q, k, v, causal=causal, scale=scale)                # gates, Routing's cluster mean)
        mask = m.last_info.get("mask")
        if mask is None:
            mask = m.estimate(q, k, causal=causal, scale=scale)
    else:
        mask = m.estimate(q, k, causal=causal, scale=scale)
    if not (m.capabilities.value_inputs or m.capabilities.own_output):
        out = sparse_attention(q, k, v, mask, causal=causal, scale=scale)
    if isinstance(mask, BlockMask):
        state.densities.append(float(np.mean(mask.density(causal=causal))))
    else:
        state.densities.append(float(np.mean(mask.density(q_len=q.shape[2], causal=causal))))
    return out


def _contiguous_run(valid: np.ndarray, name: str) -> tuple:
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return 0, 0
    s, e = int(idx[0]), int(idx[-1]) + 1
    if e - s != idx.size:
        raise ValueError(f"{name}: the key padding of a batch row has holes (valid keys not contiguous, e.g. right "
                         "padding followed by generation); the spattn backend supports left padding "
                         "(tokenizer.padding_side = 'left') and right padding of a prompt")
    return s, e


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """The ``AttentionInterface`` entry (see the module docstring); returns (out (B, Nq, H, Dv), None)."""
    import torch

    state: Optional[LayerState] = getattr(module, "_spattn_layer", None)
    if state is None:
        raise ValueError("this model runs attn_implementation='spattn' but was not set up by "
                         "spattn.integrations.hf.use(model, method=...), which chooses the method per layer")
    if dropout:
        raise ValueError(f"the spattn backend is for inference: attention dropout must be 0, got {dropout} "
                         "(call model.eval())")
    for name in ("softcap", "sliding_window", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise ValueError(f"the spattn attention backend does not support {name} (got {kwargs[name]!r})")
    if kwargs.get("output_attentions"):
        raise ValueError("the spattn backend does not return attention weights (output_attentions=True)")
    t0 = time.perf_counter()
    B, Hq, Nq, _ = query.shape
    Nk = key.shape[2]
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    if attention_mask is None:
        km = KeyMask(causal=causal, kv_length=Nk)
    elif isinstance(attention_mask, KeyMask):  # from the mask function: it knows the pattern
        km = attention_mask
    elif isinstance(attention_mask, torch.Tensor):
        km = _interpret_dense_mask(attention_mask, B, Nq, Nk, causal, torch)
    else:
        raise ValueError(f"attention_mask: the spattn backend got a {type(attention_mask).__name__}; "
                         "expected None, its own mask or a 4-D bool/float tensor")
    if km.kv_length < Nk:  # a static cache holds empty slots past the visible keys
        key, value = key[:, :, :km.kv_length], value[:, :, :km.kv_length]
        Nk = km.kv_length
    out_dtype = query.dtype
    q = as_float_array(query, "q")
    kv = _KV(key, value, torch)
    scale = None if scaling is None else float(scaling)
    gate = _gate_inputs(module, q.shape, key.shape) if hasattr(module, "_spattn_pre_rope") else None
    model_state = _model_state_of(module)
    if km.key_valid is None:
        out = _run(state, q, kv, km.causal, scale, gate, model_state)
    else:
        k, v = kv.f32()
        valid = km.key_valid.detach().cpu().numpy().astype(bool)
        if valid.shape[0] == 1 and B > 1:
            valid = np.broadcast_to(valid, (B, valid.shape[1]))
        out = np.zeros((B, Hq, Nq, value.shape[3]), dtype=np.float32)
        for b in range(B):
            if km.causal:
                s, e = _contiguous_run(valid[b], "attention_mask")
                shift = Nk - Nq
                qs, qe = max(0, s - shift), min(Nq, e - shift)
                if e > s and qe > qs:
                    gb = None if gate is None else (gate[0][b:b + 1, :, qs:qe], gate[1][b:b + 1, :, s:e]
                                                    if gate[1].shape[2] == Nk else gate[1][b:b + 1])
                    out[b:b + 1, :, qs:qe] = _run(state, q[b:b + 1, :, qs:qe],
                                                  _KV(k[b:b + 1, :, s:e], v[b:b + 1, :, s:e]), True, scale, gb,
                                                  model_state, b)
            else:
                idx = np.flatnonzero(valid[b])
                if idx.size:
                    kb = k[b:b + 1, :, idx] if idx.size != Nk else k[b:b + 1]
                    vb = v[b:b + 1, :, idx] if idx.size != Nk else v[b:b + 1]
                    gb = None if gate is None else (gate[0][b:b + 1], gate[1][b:b + 1][:, :, idx]
                                                    if gate[1].shape[2] == Nk else gate[1][b:b + 1])
                    out[b:b + 1] = _run(state, q[b:b + 1], _KV(kb, vb), False, scale, gb, model_state, b)
    if model_state is not None and model_state.capture is not None:
        kf, vf = kv.f32()
        item = (np.array(q), np.array(kf))
        if gate is not None:
            item += (np.array(gate[0]), np.array(gate[1]))
        if model_state.capture_values or state.method.capabilities.value_inputs:  # SEA's estimator reads V
            item += (np.array(vf),)
        model_state.capture[state.layer_idx] = item
    res = torch.from_numpy(out).transpose(1, 2)
    res = res.to(out_dtype).contiguous() if out_dtype != torch.float32 else res.contiguous()
    state.seconds += time.perf_counter() - t0
    return res, None


def _model_state_of(module) -> Optional[_ModelState]:
    return getattr(module, "_spattn_model", None)


__all__ = ["use", "restore", "register", "layers", "stats", "capture", "fit", "attention_forward",
           "method_states", "reset_states", "save_states", "load_states",
           "KeyMask", "LayerState", "NAME"]
