"""MInference vertical-slash: key columns + diagonal bands estimated from the last queries.

Jiang et al., "MInference 1.0: Accelerating Pre-filling for Long-Context LLMs via Dynamic Sparse
Attention", NeurIPS 2024. The estimator is ``_core.estimate_minference_vertical_slash`` with its
parameters in ``_core.MInferenceVerticalSlashParams``; the kernel is
:func:`spattn.kernels.vertical_slash_attention`. Searched per-head configs (the official
``*_best_pattern.json`` files) load with :func:`load_config` and
:meth:`MInferenceVerticalSlash.from_config`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from .. import _core
from .._validation import check_int
from ..masks import VerticalSlashMask
from .base import Capabilities, Method, register

#: The official default for a head missing from a config (``minference_prefill_kernel``).
DEFAULT_PATTERN = ("vertical_and_slash", 1000, 6096)

Config = List[Dict[str, Sequence[Any]]]


def load_config(config: Union[str, os.PathLike, Sequence[Mapping[str, Sequence[Any]]]]) -> Config:
    """Read an official MInference pattern config.

    Parameters
    ----------
    config : path or list
        A ``*_best_pattern.json`` file of microsoft/MInference (minference/configs/) or its parsed
        content: one dict per layer mapping the query head id (a string) to
        ``[pattern type, vertical_size, slash_size, search score]``.

    Returns
    -------
    list of dict, one per layer, checked: every entry has a known pattern type and int sizes.
    """
    if isinstance(config, (str, os.PathLike)):
        with open(config, "r", encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, (list, tuple)):
        raise TypeError(f"config must be a list of per-layer dicts (or a path to one), got {type(config).__name__}")
    out: Config = []
    for li, layer in enumerate(config):
        if not isinstance(layer, Mapping):
            raise TypeError(f"config layer {li} must be a dict of head id -> [type, v, s, score], "
                            f"got {type(layer).__name__}")
        checked = {}
        for head, entry in layer.items():
            if not str(head).isdigit():
                raise ValueError(f"config layer {li}: head ids must be non-negative integers, got {head!r}")
            if not isinstance(entry, (list, tuple)) or len(entry) < 3:
                raise ValueError(f"config layer {li} head {head}: entry must be [type, vertical_size, slash_size, "
                                 f"score], got {entry!r}"[:300])
            ty = entry[0]
            if ty not in ("vertical_and_slash", "stream_llm", "block_sparse"):
                raise ValueError(f"config layer {li} head {head}: unknown pattern type {ty!r}")
            checked[str(int(head))] = (ty, check_int(entry[1], f"layer {li} head {head} vertical_size"),
                                       check_int(entry[2], f"layer {li} head {head} slash_size"),
                                       *entry[3:])
        out.append(checked)
    return out


def layer_sizes(config: Config, layer: int, num_heads: Optional[int] = None,
                ratio: Optional[float] = None) -> tuple:
    """Per-query-head (vertical_size, slash_size) lists of one layer of a loaded config.

    Heads missing from the layer get the official default (1000, 6096); ``ratio`` scales both as
    the official ``minference_ratio`` does (``int(size * ratio)``). A head whose pattern is not
    vertical-and-slash raises ValueError: the official search writes only vertical-and-slash
    entries (it relabels the other two), and the published configs hold no other type; run such
    a head with ``minference_a_shape`` or ``minference_block_sparse`` instead.
    """
    config = load_config(config)
    layer = check_int(layer, "layer")
    if not 0 <= layer < len(config):
        raise ValueError(f"layer must be in [0, {len(config)}) for this config, got {layer}")
    entries = config[layer]
    heads = max((int(h) for h in entries), default=-1) + 1
    num_heads = heads if num_heads is None else check_int(num_heads, "num_heads")
    if num_heads < max(heads, 1):
        raise ValueError(f"num_heads must cover the config's heads (>= {max(heads, 1)}), got {num_heads}")
    v, s = [], []
    for h in range(num_heads):
        ty, vs, ss = entries.get(str(h), DEFAULT_PATTERN)[:3]
        if ty != "vertical_and_slash":
            raise ValueError(f"config layer {layer} head {h} uses the {ty!r} pattern; minference_vertical_slash "
                             "runs 'vertical_and_slash' heads only (use minference_a_shape or "
                             "minference_block_sparse for that pattern)")
        if ratio is not None:
            vs, ss = int(vs * float(ratio)), int(ss * float(ratio))
        v.append(vs)
        s.append(ss)
    return v, s


@register
class MInferenceVerticalSlash(Method):
    """MInference's vertical-slash pattern, as the official prefill kernel estimates and runs it.

    Follows microsoft/MInference HEAD fb56c91: ``minference_prefill_kernel`` ->
    ``vertical_and_slash_kernel`` (minference/modules/minference_forward.py) for the estimate,
    ``vertical_slash_sparse_attention`` (minference/ops/pit_sparse_flash_attention_v2.py) and
    ``convert_vertical_slash_indexes`` (csrc/vertical_slash_index.cu) for the execution:

    1. ``v' = min(L, max(vertical_size, 30))``, ``s' = min(L, max(slash_size, 50))``;
    2. the last ``min(64, L)`` queries attend causally to every key (float32 softmax);
    3. vertical score of a key = sum of its probabilities over those rows, the first 30 keys
       forced; the top v' keys;
    4. slash score of a diagonal offset o = sum of the probabilities on that diagonal, offsets
       0..99 forced; the top s' offsets;
    5. per 64-query block, the official conversion: slash ranges of 64-key tiles (starting at
       ``max(end - o, 64) - 64``, merged or extended by 64 keys as the CUDA kernel does) and the
       vertical keys left of each range as single columns (verticals past the last range dropped);
       attention over those keys with the causal rule per element, token for token.

    GQA as the official callers (``repeat_kv``): one pattern per query head, query head h reading
    kv head h // (Hq/Hkv). Causal prefill (Nq == Nk) only, as official.

    Parameters
    ----------
    vertical_size, slash_size : int or list of int (one per query head), defaults 1000, 6096
    last_q : int, default 64
    forced_vertical : int, default 30
    forced_slash : int, default 100

    Notes
    -----
    Deviations: float32 where the official code runs fp16/bf16 inputs; a user ``scale`` replaces
    1/sqrt(D) in both estimate and attention; ties among equal scores go to the lower key index
    and the smaller offset (torch.topk leaves them unspecified; this only decides which forced
    entries are kept when a size is below its forced count). The executed pattern is the csrc
    conversion's (the one used when vLLM's ``convert_vertical_slash_indexes_opt`` is absent).
    """

    name = "minference_vertical_slash"
    paper = "Jiang et al., MInference 1.0, NeurIPS 2024 (vertical-slash pattern)"
    pattern = "top vertical lines + top slash lines from the last 64 queries, token-exact"
    params_struct = _core.MInferenceVerticalSlashParams
    capabilities = Capabilities(noncausal=False, chunked=False, decode=False, mask_format="vertical_slash")

    def _estimate(self, q, k, causal, scale) -> VerticalSlashMask:
        vertical, slash = _core.estimate_minference_vertical_slash(q, k, causal, scale, self.cparams)
        return VerticalSlashMask(vertical, slash, q.shape[2])

    @classmethod
    def from_config(cls, config, layer: int, *, num_heads: Optional[int] = None, ratio: Optional[float] = None,
                    **params: Any) -> "MInferenceVerticalSlash":
        """The method with one layer's per-head sizes from an official config (see :func:`load_config`,
        :func:`layer_sizes`); ``params`` override the other parameters.

        For a model, one instance per layer:
        ``[MInferenceVerticalSlash.from_config(cfg, i) for i in range(len(cfg))]`` passed to
        ``spattn.integrations.hf.use``.
        """
        v, s = layer_sizes(config, layer, num_heads=num_heads, ratio=ratio)
        return cls(vertical_size=v, slash_size=s, **params)
