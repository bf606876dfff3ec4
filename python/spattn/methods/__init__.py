"""Method registry: one module per sparse-attention method, each registering one Method class.

A method is an estimator (``estimate(q, k, causal=...) -> BlockMask | TokenIndices``) plus the
kernel that executes its mask format (``__call__(q, k, v, causal=..., return_lse=False)``),
with declared :class:`Capabilities`. The CLI, :func:`spattn.evaluate`, the README table and the
parametrised tests iterate this registry and filter on capabilities, so adding a method is: an
estimator in C++, a binding, a module here, tests, a README row.

>>> import spattn
>>> spattn.methods.available()
['dense', 'flexprefill', 'oracle_topk', 'sea', 'seerattention', 'streaming']
>>> m = spattn.methods.get("streaming", local_tokens=512)
>>> m.capabilities.mask_format
'block'
"""

from __future__ import annotations

from typing import Any, List

from . import dense, flexprefill, oracle_topk, sea, seerattention, streaming
from .base import Capabilities, Method, lookup, register, registered


def available() -> List[str]:
    """Names of the registered methods, sorted."""
    return [cls.name for cls in registered()]


def get(name: str, **params: Any) -> Method:
    """Instantiate method `name` with parameters overriding its defaults.

    Raises ValueError for an unknown name, TypeError for an unknown parameter and
    ValueError/TypeError naming the parameter for an out-of-range value.
    """
    return lookup(name)(**params)


def capabilities(name: str) -> Capabilities:
    """The capabilities method `name` declares (without instantiating it)."""
    return lookup(name).capabilities


__all__ = ["available", "get", "register", "capabilities", "Capabilities", "Method",
           "dense", "streaming", "oracle_topk", "flexprefill", "seerattention", "sea"]
