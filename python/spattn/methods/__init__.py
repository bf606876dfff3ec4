"""Method registry: one module per sparse-attention method, each registering one Method class.

A method is an estimator (``estimate(q, k, causal=...) -> BlockMask | TokenIndices``) plus the
kernel that executes its mask format (``__call__(q, k, v, causal=..., return_lse=False)``),
with declared :class:`Capabilities`. The CLI, :func:`spattn.evaluate`, the README table and the
parametrised tests iterate this registry and filter on capabilities, so adding a method is: an
estimator in C++, a binding, a module here, tests, a README row. Every module of this package
other than ``base`` is imported here (it registers its method on import), so a new module needs
no edit of this file.

>>> import spattn
>>> spattn.methods.available()
['dense', 'flexprefill', 'oracle_topk', 'sea', 'seerattention', 'streaming']
>>> m = spattn.methods.get("streaming", local_tokens=512)
>>> m.capabilities.mask_format
'block'
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, List

from .base import Capabilities, Method, lookup, register, registered

METHOD_MODULES: List[str] = sorted(info.name for info in pkgutil.iter_modules(__path__)
                                   if info.name != "base" and not info.name.startswith("_"))
for _module in METHOD_MODULES:
    importlib.import_module(f"{__name__}.{_module}")


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


__all__ = ["available", "get", "register", "capabilities", "Capabilities", "Method", "METHOD_MODULES"]
