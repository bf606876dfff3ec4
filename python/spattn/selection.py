"""Statistical top-k: a selection threshold from the mean and standard deviation, without a sort.

Spark Transformer (You et al., 2025) selects with ``theta = mean + std * Phi^-1(s)``; the operator
ships in Gemma 3n (transformers ``Gemma3nTextMLP._gaussian_topk``, the same in vLLM and SGLang):
``relu(x - theta)`` over the last axis with the population std and s the target sparsity. spattn
uses it as a selection helper: to keep about k of n scores, ``s = 1 - k / n`` and the entries
above theta are kept (:func:`statistical_topk`; every decode method takes
``statistical_topk=True`` to use it in place of its exact top-k). :func:`gaussian_topk` is the
official operator itself.

Choices of spattn (not in the official operator, which reduces over the whole last axis):
the statistics cover the finite entries of a row only (masked ``-inf`` scores are not
candidates); ``+inf`` entries are always kept; when nothing exceeds theta (all entries equal, or
a heavy tail) the largest entry is kept so a selection is never empty; ``k >= n`` keeps every
finite entry. The count kept varies per row (about k under a Gaussian assumption).

>>> import numpy as np, spattn
>>> x = np.random.default_rng(0).standard_normal((4, 10000)).astype(np.float32)
>>> keep, theta = spattn.statistical_topk(x, 500)
>>> bool(abs(keep.sum(axis=1).mean() - 500) < 60)
True
"""

from __future__ import annotations

import numpy as np

from . import _core
from ._validation import as_float_array, check_int


def normal_quantile(p: float) -> float:
    """The standard normal quantile Phi^-1(p) (``NormalDist().inv_cdf``; -inf / +inf at 0 / 1)."""
    return float(_core.normal_quantile(float(p)))


def statistical_topk(scores, k: int, *, return_threshold: bool = True):
    """Keep about `k` entries of each row of `scores` (..., n): those above
    ``mean + std * Phi^-1(1 - k / m)`` over the row's m finite entries (population std).

    Returns ``(keep, theta)``: a bool array shaped like `scores` and the float64 thresholds
    (...,) (``-inf`` when k >= m, ``+inf`` for a row without finite entries); only `keep` when
    ``return_threshold=False``.
    """
    x = as_float_array(scores, "scores")
    if x.ndim < 1:
        raise ValueError(f"scores must have at least one dimension (..., n), got shape {x.shape}")
    k = check_int(k, "k", lo=0)
    keep, theta = _core.statistical_topk(np.ascontiguousarray(x, dtype=np.float32), k)
    return (keep, theta) if return_threshold else keep


def gaussian_topk(x, sparsity: float) -> np.ndarray:
    """The official statistical top-k operator (Gemma 3n ``_gaussian_topk``): ``relu(x - theta)``
    with ``theta = mean + std * Phi^-1(sparsity)`` over the last axis (population std, all
    entries), in float32 as the official fp32 path. `sparsity` in [0, 1): the fraction to zero."""
    arr = as_float_array(x, "x").astype(np.float32, copy=False)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)):
        raise TypeError(f"sparsity must be a float in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {s}")
    if arr.ndim < 1:
        raise ValueError(f"x must have at least one dimension, got shape {arr.shape}")
    m = np.float32(normal_quantile(s))
    mean = arr.mean(axis=-1, keepdims=True, dtype=np.float32)
    std = arr.std(axis=-1, keepdims=True, dtype=np.float32)
    return np.maximum(arr - (mean + std * m), np.float32(0))


def statistical_threshold(scores, k: int) -> np.ndarray:
    """The thresholds (...,) of :func:`statistical_topk`."""
    return statistical_topk(scores, k)[1]


__all__ = ["normal_quantile", "statistical_topk", "statistical_threshold", "gaussian_topk"]

