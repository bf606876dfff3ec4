"""AdamW with linear warmup, cosine decay and gradient-norm clipping, in numpy float64.

Shared by the trainable estimator parts (SeerAttention's gate, SEA's decoder); the same update
as ``torch.optim.AdamW`` with a warmup-then-cosine schedule (the HF Trainer's "cosine").
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np


class AdamW:
    """In-place AdamW over a list of float64 arrays."""

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
