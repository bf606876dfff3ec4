"""The seeded inputs of gui_kv_official.npz (shared by make_gui_kv_fixture.py and the tests, so the
fixture stores only the official kept lists)."""

import numpy as np

CASES = {  # B, Hq, Hkv, L, D, C, percent, spans (None: no hidden states)
    "snapkv_gqa": (1, 4, 2, 301, 80, 48, 10, None),
    "three_frames": (1, 4, 2, 333, 64, 48, 20, [(20, 90), (100, 160), (170, 240)]),
    "two_frames_d128": (2, 2, 1, 257, 128, 32, 15, [(10, 60), (70, 130)]),
}


def make_inputs(name):
    """(q, k, v, hidden_states, spans, percent) of case `name`, float32."""
    B, Hq, Hkv, L, D, C, pct, spans = CASES[name]
    rng = np.random.default_rng(len(name) * 1000 + L)
    q = rng.standard_normal((B, Hq, L, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    h = (rng.standard_normal((B, L, C)) * rng.uniform(0.5, 2.0, (B, L, 1))).astype(np.float32)
    if spans is not None and len(spans) > 2:  # frame 0 repeats the current frame, with noise
        a, b = spans[-1]
        x, y = spans[0]
        n = min(y - x, b - a)
        k[:, :, x:x + n] = k[:, :, a:a + n] + 0.05 * rng.standard_normal((B, Hkv, n, D)).astype(np.float32)
    return q, k, v, h, spans, pct
