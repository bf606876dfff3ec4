"""One fit loop for every learned estimator part (SeerAttention's gate, SEA's decoder, ...).

- :class:`AdamW`: the same update as ``torch.optim.AdamW`` with linear warmup then cosine decay
  to 0 (the HF Trainer's "cosine" schedule) and gradient-norm clipping, in numpy float64.
- :func:`prepare_samples`: turns captured inputs into training samples (targets computed once),
  behind a progress bar.
- :func:`fit`: the loop: a method supplies ``loss_and_grads(step)`` (its loss and exact
  gradients stay in its own module), the loop steps the optimiser, shows a progress bar and
  returns the loss history.
- :func:`save_npz` / :func:`load_npz`: learned artifacts as ``.npz`` files holding named arrays
  plus one JSON config entry (``__config__``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from ._validation import check_positive_int

CONFIG_KEY = "__config__"


class AdamW:
    """In-place AdamW over a list of float64 arrays, with warmup + cosine schedule and clipping.

    Parameters
    ----------
    params : sequence of numpy arrays
        Updated in place by :meth:`step`.
    lr : float
        Peak learning rate.
    steps : int
        Length of the schedule (cosine reaches 0 at ``steps``).
    warmup_steps : int
        Linear warmup: step s (0-based) uses ``lr * (s + 1) / warmup_steps``.
    betas, eps, weight_decay
        As ``torch.optim.AdamW`` (decoupled weight decay ``p *= 1 - lr_t * weight_decay``).
    max_grad_norm : float
        Gradients are scaled by ``max_grad_norm / (norm + 1e-6)`` when their global L2 norm
        exceeds it (0 or None: no clipping).
    """

    def __init__(self, params: Sequence[np.ndarray], *, lr: float, steps: int, warmup_steps: int = 0,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float = 1.0):
        self.params: List[np.ndarray] = list(params)
        self.lr, self.steps, self.warmup = lr, steps, warmup_steps
        self.betas, self.eps, self.wd, self.clip = betas, eps, weight_decay, max_grad_norm
        self.m1 = [np.zeros_like(p) for p in self.params]
        self.m2 = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based `step`: linear warmup, then cosine decay to 0."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        prog = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))

    def step(self, grads: Sequence[np.ndarray]) -> float:
        """Apply one update; returns the gradient norm before clipping."""
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        factor = self.clip / (norm + 1e-6) if self.clip and norm > self.clip else 1.0
        lr_t = self.lr_at(self.t)
        self.t += 1
        b1, b2 = self.betas
        for p, g, a, b in zip(self.params, grads, self.m1, self.m2):
            g = g * factor
            p *= 1.0 - lr_t * self.wd
            a[:] = b1 * a + (1 - b1) * g
            b[:] = b2 * b + (1 - b2) * g * g
            p -= lr_t * (a / (1 - b1 ** self.t)) / (np.sqrt(b / (1 - b2 ** self.t)) + self.eps)
        return norm


def prepare_samples(data: Iterable, prepare: Callable[[Any], Any], *, desc: str = "targets",
                    progress: bool = True) -> List[Any]:
    """Apply `prepare` to every captured item (targets are computed once, before the loop).

    Raises ValueError when `data` is empty.
    """
    from tqdm.auto import tqdm

    items = list(data)
    if not items:
        raise ValueError("data must hold at least one (q, k) item")
    return [prepare(it) for it in tqdm(items, desc=desc, disable=not progress)]


def fit(params: Sequence[np.ndarray], loss_and_grads: Callable[[int], Tuple[float, Sequence[np.ndarray]]], *,
        steps: int, lr: float, warmup_steps: int = 0, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0, max_grad_norm: float = 1.0, progress: bool = True,
        desc: str = "fit") -> List[float]:
    """The fit loop: ``steps`` AdamW updates of `params` (in place), with a progress bar.

    Parameters
    ----------
    params : sequence of float64 arrays
        The trainable weights, updated in place.
    loss_and_grads : callable(step) -> (loss, grads)
        The method's loss at the current weights and its gradients (same order as `params`);
        it draws its own mini-batch.
    steps, lr, warmup_steps, betas, eps, weight_decay, max_grad_norm
        See :class:`AdamW`.
    progress : bool
        Show a tqdm bar with the running loss.
    desc : str
        Label of the bar.

    Returns
    -------
    list of float
        The loss of every step (before its update).
    """
    from tqdm.auto import tqdm

    steps = check_positive_int(steps, "steps")
    opt = AdamW(params, lr=lr, steps=steps, warmup_steps=warmup_steps, betas=betas, eps=eps,
                weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    losses: List[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        loss, grads = loss_and_grads(step)
        opt.step(grads)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{loss:.5g}")
    return losses


def save_npz(path: str, arrays: Mapping[str, np.ndarray], config: Any) -> None:
    """Write named arrays plus a JSON-serialisable `config` to an ``.npz`` artifact."""
    if CONFIG_KEY in arrays:
        raise ValueError(f"array name {CONFIG_KEY!r} is reserved for the config")
    np.savez(path, **{CONFIG_KEY: np.array(json.dumps(config))}, **arrays)


def load_npz(path: str) -> Tuple[Dict[str, np.ndarray], Any]:
    """Read an artifact written by :func:`save_npz`: (arrays by name, config)."""
    with np.load(path, allow_pickle=False) as z:
        if CONFIG_KEY not in z:
            raise ValueError(f"{path} has no {CONFIG_KEY} entry: not a spattn artifact")
        config = json.loads(str(z[CONFIG_KEY]))
        return {n: z[n] for n in z.files if n != CONFIG_KEY}, config
