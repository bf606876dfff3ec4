"""The seeded inputs of spatten_official.npz (shared by make_spatten_fixture.py and the tests)."""

import numpy as np

CASES = {  # kv length n, heads, start_size, important_size, recent_size, num_coming
    "defaults": (413, 4, 0, 150, 150, 0),
    "start_and_coming": (413, 4, 4, 150, 150, 20),
    "coming_past_recent": (290, 3, 4, 100, 60, 171),  # the MT-Bench flow: next prompt + 64 > recent
}


def make_scores(name):
    """Per-head raw logits of 3 queries, float32 (1, H, 3, n)."""
    n, H = CASES[name][:2]
    return np.random.default_rng(n + H).standard_normal((1, H, 3, n)).astype(np.float32)
