"""MoA against the official rules, transcribed in numpy: the span of
``moa_config_to_cache_config`` (thu-nics/MoA MoA/attention/cache_utils.py) and the token form of the
prefill kernel's visit rule (``_sparse_attention_prefill_moa_fwd_kernel``: key k visible to query
q iff k <= q and (k // 64 < G // 64 or k // 64 > q // 64 - W // 64)); decode keeps the first G
and last W positions per head (``StaticCircularCache``)."""

import json
import math

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention
from spattn.methods.moa import MoA, load_plan


def official_span(alpha, beta, n):
    s = int(alpha + n * beta)
    s = min(s, n)
    s = math.ceil(max(s, 128) / 64) * 64
    g = min(s, 64)
    return g, s - g


def prefill_allowed(N, g, w):
    q = np.arange(N)[:, None]
    k = np.arange(N)[None, :]
    if N <= 64:
        return k <= q
    return (k <= q) & ((k // 64 < g // 64) | (k // 64 > q // 64 - w // 64))


PLAN = {"alphas": [[-1024, 0, 1024, 2048], [8192, 0, 0, 1024]],
        "betas": [[0.5, 0.125, 0.0, 0.25], [0.0, 0.625, 0.875, 0.75]]}


@pytest.mark.parametrize("layer, N, Hkv, D", [(0, 700, 2, 64), (1, 1300, 4, 128), (0, 50, 1, 80), (1, 777, 1, 64)])
def test_prefill_equals_official_rule(layer, N, Hkv, D, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(PLAN))
    m = MoA.from_plan(str(path), layer, max_new_tokens=100)
    q, k, v = make_qkv(1, 4, Hkv, N, N, D, seed=N)
    allowed = np.stack([prefill_allowed(N, *official_span(a, b, N + 100))
                        for a, b in zip(PLAN["alphas"][layer], PLAN["betas"][layer])])[None]
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = ref_attention(q, k, v, causal=True, allowed=allowed)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_decode_keeps_sink_and_window_per_head():
    N = 3001
    m = spattn.methods.get("moa", alphas=[0, 1024], betas=[0.0, 0.125])
    q, k, v = make_qkv(1, 2, 1, 1, N, 64, seed=3)
    idx = m.estimate(q, k, causal=True).indices
    for h, (a, b) in enumerate(zip([0, 1024], [0.0, 0.125])):
        g, w = official_span(a, b, N - 1 + 1024)
        want = np.union1d(np.arange(g), np.arange(N - w, N))
        row = idx[0, h, 0]
        np.testing.assert_array_equal(row[row >= 0], want)
    allowed = np.zeros((1, 2, 1, N), bool)
    for h in range(2):
        row = idx[0, h, 0]
        allowed[0, h, 0, row[row >= 0]] = True
    np.testing.assert_allclose(m(q, k, v, causal=True), ref_attention(q, k, v, allowed=allowed)[0], atol=ATOL, rtol=RTOL)


def test_plan_errors_and_default():
    assert official_span(-1024, 0.5, 1000) == (64, 64)    # below the 128 minimum
    assert load_plan(PLAN)["alphas"][1][0] == 8192.0
    with pytest.raises(ValueError, match="alphas"):
        load_plan({"alphas": [[1]]})
    with pytest.raises(ValueError, match="same layers"):
        load_plan({"alphas": [[1, 2]], "betas": [[0.1]]})
    with pytest.raises(ValueError, match="layer 5"):
        MoA.from_plan(PLAN, 5)
    q, k, v = make_qkv(1, 3, 1, 200, 200, 64)
    with pytest.raises(ValueError, match="plan has 4 heads"):
        MoA.from_plan(PLAN, 0)(q, k, v, causal=True)
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("moa")(q, k, v, causal=False)
    out = spattn.methods.get("moa")(q, k, v, causal=True)        # the uniform baseline
    assert np.isfinite(out).all()
