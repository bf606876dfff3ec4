"""Method state across calls: per-layer arrays a method reads and updates, a step counter and a
schedule (dense warm-up steps, search steps, reuse steps) kept as data.

Diffusion models (DiTs, diffusion LMs) call every attention layer once per denoising step on
slowly varying inputs; several sparse-attention methods for them keep statistics from one step
to the next (Re-ttention's mass ratio and cached correction, SparseD's block mask). Such a method
owns one :class:`MethodState` per instance (the transformers backend copies the method per layer,
so the state is per layer), declares ``capabilities.stateful`` and exposes ``state`` and
``reset()``. The state is plain data: named numpy arrays, the step counter, a few JSON scalars
(``meta``) and the :class:`Schedule`; ``save`` / ``load`` write and read one ``.npz``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

PHASES = ("dense", "search", "reuse")


def _check_step_int(value: Any, name: str, lo: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if int(value) < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


@dataclass(frozen=True)
class Schedule:
    """What a stateful method does at each step (call) of a run, as data.

    Step ``s`` (0-based) is

    - ``"dense"`` when ``s < dense_steps``: exact attention (warm-up);
    - ``"search"`` when ``s`` is in ``search_steps``, or ``refresh_period > 0`` and
      ``s % refresh_period == 0``: the method (re)computes its state (a mask search, a refresh of
      cached statistics) -- what it outputs at that step is the method's choice (both Re-ttention
      and SparseD output exact attention there);
    - ``"reuse"`` otherwise: the method runs sparse from its stored state.

    Parameters
    ----------
    dense_steps : int
        Warm-up steps run dense.
    search_steps : tuple of int
        Steps that (re)compute the state.
    refresh_period : int
        0: none; otherwise every multiple of it (counted from step 0, as Re-ttention's
        ``stepi % 5 == 0``) at or after ``dense_steps`` is also a search step.
    """

    dense_steps: int = 0
    search_steps: Tuple[int, ...] = ()
    refresh_period: int = 0

    def __post_init__(self):
        object.__setattr__(self, "dense_steps", _check_step_int(self.dense_steps, "dense_steps"))
        object.__setattr__(self, "refresh_period", _check_step_int(self.refresh_period, "refresh_period"))
        steps = self.search_steps
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            steps = (steps,)
        if not isinstance(steps, (tuple, list, np.ndarray)):
            raise TypeError(f"search_steps must be a sequence of ints, got {type(steps).__name__}")
        object.__setattr__(self, "search_steps",
                           tuple(sorted({_check_step_int(s, "search_steps") for s in steps})))

    def phase(self, step: int) -> str:
        """``"dense"``, ``"search"`` or ``"reuse"`` for step `step` (see the class docstring)."""
        step = _check_step_int(step, "step")
        if step < self.dense_steps:
            return "dense"
        if step in self.search_steps or (self.refresh_period > 0 and step % self.refresh_period == 0):
            return "search"
        return "reuse"

    def phases(self, steps: int) -> Tuple[str, ...]:
        """The phase of each of the first `steps` steps."""
        return tuple(self.phase(s) for s in range(_check_step_int(steps, "steps")))

    def to_dict(self) -> Dict[str, Any]:
        return {"dense_steps": self.dense_steps, "search_steps": list(self.search_steps),
                "refresh_period": self.refresh_period}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Schedule":
        unknown = set(d) - {"dense_steps", "search_steps", "refresh_period"}
        if unknown:
            raise ValueError(f"unknown Schedule field(s) {sorted(unknown)}")
        return cls(dense_steps=d.get("dense_steps", 0), search_steps=tuple(d.get("search_steps", ())),
                   refresh_period=d.get("refresh_period", 0))


@dataclass
class MethodState:
    """Per-layer state of a stateful method: named arrays, a step counter, scalars and a schedule.

    Attributes
    ----------
    schedule : Schedule
        The phases of the run (``phase()`` reads it at ``step``).
    step : int
        The number of calls since the last ``reset()`` (the denoising step about to run). Set it
        to resume or to follow an external step count (SparseD's ``now_step``).
    arrays : dict of str -> numpy.ndarray
        What the method keeps (masks, ratios, cached outputs ...); ``state["name"]`` reads one.
    meta : dict
        JSON scalars (the shape the state was built for, counters).
    """

    schedule: Schedule = field(default_factory=Schedule)
    step: int = 0
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __setitem__(self, name: str, value) -> None:
        self.arrays[name] = np.asarray(value)

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def get(self, name: str, default=None):
        return self.arrays.get(name, default)

    def phase(self) -> str:
        """The schedule's phase of the current step."""
        return self.schedule.phase(self.step)

    def advance(self) -> None:
        self.step += 1

    def reset(self) -> None:
        """Forget every array and scalar and restart at step 0 (the schedule stays)."""
        self.arrays.clear()
        self.meta.clear()
        self.step = 0

    def copy(self) -> "MethodState":
        """A deep copy (arrays copied)."""
        return MethodState(schedule=self.schedule, step=self.step,
                           arrays={k: v.copy() for k, v in self.arrays.items()},
                           meta=json.loads(json.dumps(self.meta)))

    def restore(self, other: "MethodState") -> None:
        """Take the contents of `other` (a copy of them) in place."""
        c = other.copy()
        self.schedule, self.step, self.arrays, self.meta = c.schedule, c.step, c.arrays, c.meta

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    # ------------------------------------------------------------------ .npz
    def to_arrays(self, prefix: str = "") -> Dict[str, np.ndarray]:
        """The state as flat numpy arrays under `prefix` (for one ``.npz`` holding many layers)."""
        head = {"step": self.step, "schedule": self.schedule.to_dict(), "meta": self.meta}
        out = {f"{prefix}__state__": np.array(json.dumps(head))}
        for k, v in self.arrays.items():
            out[f"{prefix}{k}"] = v
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> "MethodState":
        """Inverse of :meth:`to_arrays`."""
        key = f"{prefix}__state__"
        if key not in arrays:
            raise ValueError(f"no method state under prefix {prefix!r} (missing {key!r})")
        head = json.loads(str(np.asarray(arrays[key])))
        st = cls(schedule=Schedule.from_dict(head["schedule"]), step=int(head["step"]), meta=dict(head["meta"]))
        for k, v in arrays.items():
            if k.startswith(prefix) and k != key and "/" not in k[len(prefix):]:
                st.arrays[k[len(prefix):]] = np.array(v)
        return st

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the state to one ``.npz`` (no pickle)."""
        np.savez(path, **self.to_arrays())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "MethodState":
        """Read a state written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            return cls.from_arrays({k: f[k] for k in f.files})


def shape_signature(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool,
                    scale: Optional[float]) -> list:
    """The call shape a state was built for (a new one starts a new run)."""
    return [list(map(int, q.shape)), list(map(int, k.shape)), list(map(int, v.shape)), bool(causal),
            None if scale is None else float(scale)]


__all__ = ["MethodState", "Schedule", "PHASES", "shape_signature"]
