"""Argument checks and conversion shared by every public entry point.

Arrays are accepted in any real floating dtype (float16/32/64) and any strides; they are
converted to C-contiguous float32 with at most one copy (none when already so). Integer, bool
and complex arrays are rejected with a TypeError rather than silently cast.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def as_float_array(x, name: str, ndim: int) -> np.ndarray:
    """Return `x` as a C-contiguous float32 array of `ndim` dims, or raise naming `name`."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}") from exc
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a real floating-point array (float16/32/64), got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_qkv(q, k, v=None):
    """Validate q (B, Hq, Nq, D), k (B, Hkv, Nk, D) and optional v (B, Hkv, Nk, Dv)."""
    q = as_float_array(q, "q", 4)
    k = as_float_array(k, "k", 4)
    B, Hq, Nq, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"k batch must equal q batch {B}, got k shape {k.shape}")
    if k.shape[3] != D:
        raise ValueError(f"k head dim must equal q head dim {D}, got k shape {k.shape}")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"number of query heads Hq={Hq} must be a multiple of kv heads Hkv={Hkv}")
    if D == 0:
        raise ValueError(f"head dim D must be >= 1, got q shape {q.shape}")
    if B == 0 or Hq == 0:
        raise ValueError(f"q must have B >= 1 and Hq >= 1, got shape {q.shape}")
    if v is None:
        return q, k, None
    v = as_float_array(v, "v", 4)
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape (B, Hkv, Nk, Dv) = {k.shape[:3] + ('Dv',)}, got {v.shape}")
    return q, k, v


def check_scale(scale: Optional[float], D: int) -> float:
    """Scale of the logits: default 1/sqrt(D); must be finite and > 0."""
    if scale is None:
        return float(1.0 / np.sqrt(D))
    s = float(scale)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    return s


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)
