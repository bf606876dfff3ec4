"""Inputs of the NSA official-reference fixture (numpy only: tests_py/test_nsa.py and
make_nsa_fixture.py build the same inputs from the seeds; only outputs are stored in the .npz)."""

import numpy as np

# (name, l, d, l', topk, init_blocks, local_blocks, N, Hq, Hkv, D)
NSA_CASES = [
    ("defaults", 32, 16, 64, 16, 1, 2, 1100, 4, 2, 32),
    ("small", 16, 8, 32, 5, 1, 2, 203, 4, 1, 32),
    ("d80", 32, 16, 64, 4, 1, 2, 333, 2, 2, 80),
]
ROW_STRIDE = 7  # the stored prefill outputs: rows 0, 7, 14, ... (the selections: every row)


def nsa_inputs(n, l, Hq, Hkv, N, D):
    """Case n as token-major arrays (the official layout): q (N, Hq, D), k and v (N, Hkv, D),
    compress_key / compress_value (Hkv, l D, D), intra_block_pe (Hkv, l, D), all float32."""
    rng = np.random.default_rng(300 + n)
    q = rng.standard_normal((N, Hq, D)).astype(np.float32)
    k = (rng.standard_normal((N, Hkv, D)) + 0.5 * rng.standard_normal((1, Hkv, D))).astype(np.float32)
    v = rng.standard_normal((N, Hkv, D)).astype(np.float32)
    wk = (rng.standard_normal((Hkv, l * D, D)) * 3 / np.sqrt(l * D)).astype(np.float32)
    wv = (rng.standard_normal((Hkv, l * D, D)) / np.sqrt(l * D)).astype(np.float32)
    pe = (rng.standard_normal((Hkv, l, D)) * 0.5).astype(np.float32)
    return q, k, v, wk, wv, pe
