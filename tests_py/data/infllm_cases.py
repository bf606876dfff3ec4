"""Inputs of the official-reference fixtures of InfLLM-V2 and NOSA (numpy only: the tests build
the same inputs from the seeds; only the selected blocks are stored in the .npz files)."""

import numpy as np


# (Hq, Hkv, T, D, window_size, topk): block 64, init 1, kernel 32 / stride 16 (the defaults)
INFLLMV2_CASES = [(4, 2, 777, 64, 128, 3), (16, 1, 1000, 64, 192, 4), (2, 2, 641, 80, 64, 2)]


def infllmv2_inputs(n, Hq, Hkv, T, D):
    """The inputs of case n, (1, Hq, T, D) and (1, Hkv, T, D) float32, from a seeded numpy
    generator (tests_py/test_infllmv2.py and make_infllmv2_fixture.py build them the same way; only the blocks are stored)."""
    rng = np.random.default_rng(100 + n)
    q = rng.standard_normal((1, Hq, T, D)).astype(np.float32)
    k = (rng.standard_normal((1, Hkv, T, D)) + 0.5 * rng.standard_normal((1, Hkv, 1, D))).astype(np.float32)
    return q, k


# (Hq, Hkv, T, D, window_size, topk, select_blocks): block 64, init 1, kernel 32 / stride 16
NOSA_CASES = [(4, 2, 900, 64, 128, 8, 2), (2, 2, 1100, 64, 64, 6, 1), (8, 2, 700, 32, 128, 5, 1)]


def nosa_inputs(n, Hq, Hkv, T, D):
    """q (1, Hq, T, D), k and v (1, Hkv, T, D) float32 and the eviction head (A, delta_weight,
    delta_bias), from a seeded numpy generator (tests_py/test_nosa.py and make_nosa_fixture.py build them)."""
    rng = np.random.default_rng(200 + n)
    q = rng.standard_normal((1, Hq, T, D)).astype(np.float32)
    k = (rng.standard_normal((1, Hkv, T, D)) + 0.5 * rng.standard_normal((1, Hkv, 1, D))).astype(np.float32)
    v = rng.standard_normal((1, Hkv, T, D)).astype(np.float32)
    A = rng.uniform(0.5, 2.0, Hkv).astype(np.float32)
    W = (rng.standard_normal((Hkv, Hkv * D)) / np.sqrt(Hkv * D)).astype(np.float32)
    bias = rng.standard_normal(Hkv).astype(np.float32)
    return q, k, v, A, W, bias
