"""Shared part of the stateful methods (``capabilities.stateful``): one :class:`MethodState` per
instance, its schedule derived from the parameters, and the start / end of a call (a call whose
shapes differ from the state's starts a new run)."""

from __future__ import annotations

from typing import Any, Dict

from ..state import MethodState, Schedule, shape_signature
from .base import Method


class StatefulMethod(Method):
    """A Method whose calls are the steps of a run (see ``Capabilities.stateful``).

    Subclasses define ``schedule()`` from their parameters and run one step in ``__call__``
    between ``_begin_step`` (returns the phase) and ``_end_step``.
    """

    def __init__(self, **params: Any):
        self.state = MethodState()
        super().__init__(**params)

    def set_params(self, **params: Any) -> "StatefulMethod":
        super().set_params(**params)
        sched = self.schedule()
        if sched != self.state.schedule:  # new parameters: a new run
            self.state.schedule = sched
            self.state.reset()
        return self

    def schedule(self) -> Schedule:
        """The method's schedule under its current parameters."""
        raise TypeError(f"{type(self).__name__} must define schedule()")  # abstract

    def reset(self) -> None:
        """Forget the state and restart the schedule at step 0."""
        self.state.reset()

    def warm_up(self, q, k, v, *, causal: bool = False, scale=None, max_steps: int = 1 << 16) -> int:
        """Run the schedule on (q, k, v) from the current step until the next call is a reuse
        (sparse) step; return the number of calls made. Harnesses measure a stateful method there,
        with its state built on the same input."""
        calls = 0
        while self.state.phase() != "reuse" or not self._ready_to_reuse():
            if calls >= max_steps:
                raise ValueError(f"{self.name}: no reuse step within {max_steps} calls of step {self.state.step}")
            self(q, k, v, causal=causal, scale=scale)
            calls += 1
        return calls

    def _ready_to_reuse(self) -> bool:
        """The state holds what a reuse step reads (subclasses say what)."""
        return True

    def _begin_step(self, q, k, v, causal: bool, scale) -> str:
        sig = shape_signature(q, k, v, causal, scale)
        old = self.state.meta.get("shape")
        if old is not None and old != sig:
            self.state.reset()
        self.state.meta["shape"] = sig
        self.last_info = {"step": self.state.step, "phase": self.state.phase()}
        return self.last_info["phase"]

    def _end_step(self) -> None:
        self.state.advance()

    def readouts(self) -> Dict[str, Any]:
        return {k: self.last_info[k] for k in ("step", "phase") if k in self.last_info}
