"""Conversion of array arguments before they reach the C++ core.

Python converts dtypes only: arrays are accepted in any real floating dtype (float16/32/64) and
any strides, and converted to C-contiguous float32 with at most one copy (none when already so);
integer, bool and complex arrays are rejected with a TypeError rather than silently cast.
torch CPU tensors are read through numpy without a copy when float32 and contiguous. Shapes,
ranges and scales are checked in C++ (``cpp/bindings/convert.hpp``), whose messages name the
argument and are raised as ValueError.
"""

from __future__ import annotations

import numpy as np


def as_float_array(x, name: str) -> np.ndarray:
    """Return `x` as a C-contiguous float32 array, or raise TypeError naming `name`."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor: share its memory when possible
            x = x.detach()
            if getattr(x, "device", None) is not None and str(x.device) != "cpu":
                raise TypeError(f"{name} must be on the CPU, got a tensor on {x.device}")
            if x.is_floating_point() and (str(x.dtype) != "torch.float32" or not x.is_contiguous()):
                import torch  # one copy straight to contiguous float32 (bf16 has no numpy dtype)

                x = torch.empty(x.shape, dtype=torch.float32).copy_(x)
            x = x.numpy()
        else:
            try:
                x = np.asarray(x)
            except Exception as exc:  # pragma: no cover - exotic objects
                raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}") from exc
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a real floating-point array (float16/32/64), got dtype {x.dtype}")
    return np.asarray(x, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)


def half_bits(x):
    """(uint16 C-contiguous bits, is_bf16) when `x` is a float16 numpy array or a float16 / bfloat16
    torch CPU tensor (at most one copy, for a non-contiguous input); None otherwise."""
    if isinstance(x, np.ndarray):
        if x.dtype == np.float16:
            return np.ascontiguousarray(x).view(np.uint16), False
        return None
    if hasattr(x, "detach") and hasattr(x, "numpy") and str(getattr(x, "device", "cpu")) == "cpu":
        dt = str(getattr(x, "dtype", ""))
        if dt in ("torch.float16", "torch.bfloat16"):
            import torch

            bits = x.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
            return bits, dt == "torch.bfloat16"
    return None


def as_causal(causal) -> bool:
    """`causal` as a bool; anything but a bool (or numpy bool) raises TypeError, since the string
    "False" or an array would otherwise be silently truthy."""
    if isinstance(causal, (bool, np.bool_)):
        return bool(causal)
    raise TypeError(f"causal must be a bool, got {type(causal).__name__} {causal!r}"[:200])


def as_scale(scale):
    """`scale` as None or a Python float (its range is checked in C++)."""
    if scale is None:
        return None
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__} {scale!r}"[:200])
    try:
        return float(scale)
    except OverflowError:  # an int beyond float64 (2**1100): far outside float32 too
        raise ValueError(f"scale must lie in the float32 range [1.2e-38, 3.4e38], got {scale!r}"[:200]) from None


def check_qkv(q, k, v=None):
    """Convert q, k and (optional) v to C-contiguous float32; their shapes are checked in C++."""
    q = as_float_array(q, "q")
    k = as_float_array(k, "k")
    return q, k, (None if v is None else as_float_array(v, "v"))


INT32_MAX = 2**31 - 1  # sizes, lengths and block sizes are 32-bit in the core


def check_int(value, name: str, lo: int = 0, hi: int = INT32_MAX) -> int:
    """`value` as a Python int in [lo, hi]: a Python or numpy integer (not a bool), else TypeError;
    out of range (2**40, 2**70, ...) a ValueError naming `name`, before anything reaches the
    core, whose 32-bit arguments would otherwise fail with pybind's generic message."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}"[:200])
    value = int(value)
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if value > hi:
        bound = "2**31 - 1 (sizes are 32-bit in the core)" if hi == INT32_MAX else str(hi)
        raise ValueError(f"{name} must be <= {bound}, got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    """For the Python value types (BlockMask, TokenIndices): an int in [1, 2**31 - 1]."""
    return check_int(value, name, lo=1)
