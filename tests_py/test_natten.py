"""Neighbourhood attention (spattn.na1d / na2d / na3d, spattn.na_mask) against a float64 numpy
reference whose mask transcribes NATTEN's pure-Python definition, ``single_dim_tiling_mask`` inside
``get_na_flex_mask`` (SHI-Labs/NATTEN, src/natten/backends/flex.py, commit 8c8729f): per axis,
dilation groups with NATTEN's corrected group length, the stride-group leader, the clamped
window centre (non-causal) or the leader-bounded causal window, AND over the axes.

When NATTEN's Python package is importable (``natten`` on PYTHONPATH with torch), the official
mask_mod itself is compared with ``na_mask``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, assert_matches, ref_attention


def natten_flex_mask(shape, kernel, stride, dilation, causal) -> np.ndarray:
    """(N, N) bool: NATTEN's single_dim_tiling_mask evaluated on every (query, key) pair."""
    n = int(np.prod(shape))
    q_idx = np.arange(n)[:, None]
    kv_idx = np.arange(n)[None, :]

    def idx2crd(index):  # row-major, last axis fastest (flex.py idx2crd)
        crd, rest = [], index
        for extent in reversed(shape):
            crd.append(rest % extent)
            rest = rest // extent
        return crd[::-1]

    q_crd, kv_crd = idx2crd(q_idx), idx2crd(kv_idx)
    mask = np.ones((n, n), bool)
    for i, (x, k, s, d, c) in enumerate(zip(shape, kernel, stride, dilation, causal)):
        qg, kg = q_crd[i] % d, kv_crd[i] % d
        qu, ku = q_crd[i] // d, kv_crd[i] // d
        n_g = x // d + 1 - ((qg + (d - (x % d))) // d)  # the official group-length correction
        wl, wr = k // 2, k // 2 + (k % 2 - 1)
        if c:
            leader = np.minimum((qu // s) * s + s - 1, n_g - 1)
            m = (qu - ku >= 0) & (leader - ku < k)
        else:
            leader = np.minimum((qu // s) * s + s // 2, n_g - 1)
            centre = np.clip(leader, wl, n_g - 1 - wr)
            w0, w1 = centre - ku, ku - centre
            m = ((0 <= w0) & (w0 <= wl)) | ((0 <= w1) & (w1 <= wr))
        mask &= m & (qg == kg)
    return mask


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def to_heads_first(x, rank):
    return np.ascontiguousarray(np.moveaxis(x, -2, 1))


def check(shape, kernel, stride=1, dilation=1, causal=False, B=1, Hq=2, Hkv=1, D=64, Dv=None, seed=0):
    rank = len(shape)
    tup = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * rank)
    Dv = D if Dv is None else Dv
    q = rand((B, *shape, Hq, D), seed)
    k = rand((B, *shape, Hkv, D), seed + 1)
    v = rand((B, *shape, Hkv, Dv), seed + 2)
    fn = {1: spattn.na1d, 2: spattn.na2d, 3: spattn.na3d}[rank]
    out, lse = fn(q, k, v, kernel, stride=stride, dilation=dilation, is_causal=causal, return_lse=True)
    n = int(np.prod(shape))
    qf = to_heads_first(q, rank).reshape(B, Hq, n, D)
    kf = to_heads_first(k, rank).reshape(B, Hkv, n, D)
    vf = to_heads_first(v, rank).reshape(B, Hkv, n, Dv)
    allowed = natten_flex_mask(shape, tup(kernel), tup(stride), tup(dilation), tup(causal))
    ro, rl = ref_attention(qf, kf, vf, allowed=allowed)
    assert out.shape == (B, *shape, Hq, Dv) and lse.shape == (B, *shape, Hq)
    assert_matches(to_heads_first(out, rank).reshape(B, Hq, n, Dv), np.moveaxis(lse, -1, 1).reshape(B, Hq, n),
                   ro, rl)
    # the same pattern as TokenIndices through the token-sparse kernel
    mask = spattn.na_mask(shape, kernel, dilation, stride, causal, batch=B, heads=Hq)
    np.testing.assert_array_equal(mask.to_dense(n)[0, 0], allowed)
    o2, l2 = spattn.token_sparse_attention(qf, kf, vf, mask, return_lse=True)
    np.testing.assert_allclose(o2, to_heads_first(out, rank).reshape(B, Hq, n, Dv), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(l2, np.moveaxis(lse, -1, 1).reshape(B, Hq, n), atol=ATOL, rtol=RTOL)
    return allowed


@pytest.mark.parametrize("n, kernel, stride, dilation, causal", [
    (1, 1, 1, 1, False),
    (17, 5, 1, 1, False),
    (17, 4, 1, 1, False),      # even kernel: 2 left, 1 right
    (17, 4, 1, 1, True),
    (23, 6, 3, 1, False),      # strided
    (23, 6, 3, 1, True),
    (24, 4, 4, 1, False),      # blocked (stride = kernel)
    (29, 3, 1, 3, False),      # dilation with unequal groups (29 % 3 = 2)
    (29, 4, 2, 3, True),
    (31, 7, 7, 4, False),
    (40, 40, 1, 1, True),      # window = extent: plain causal
])
def test_na1d_matches_natten_definition(n, kernel, stride, dilation, causal):
    check((n,), kernel, stride, dilation, causal, seed=n + kernel)


@pytest.mark.parametrize("shape, kernel, stride, dilation, causal", [
    ((7, 9), 3, 1, 1, False),
    ((7, 9), (2, 4), 1, 1, False),
    ((10, 13), (3, 4), (2, 3), 1, False),
    ((10, 13), (3, 5), (3, 2), (2, 2), (True, False)),
    ((11, 12), (4, 3), 1, (2, 3), (False, True)),
    ((9, 9), 3, 3, 1, True),
    ((5, 40), (3, 7), (1, 4), (1, 3), False),
])
def test_na2d_matches_natten_definition(shape, kernel, stride, dilation, causal):
    check(shape, kernel, stride, dilation, causal, seed=sum(shape))


@pytest.mark.parametrize("shape, kernel, stride, dilation, causal", [
    ((4, 5, 6), (3, 2, 3), 1, 1, False),
    ((5, 6, 7), (2, 3, 3), (1, 3, 2), (2, 1, 2), (True, False, False)),
    ((3, 7, 5), (3, 3, 5), (3, 1, 5), 1, (False, True, True)),
    ((6, 4, 9), (2, 2, 4), (2, 1, 3), (3, 2, 2), False),
])
def test_na3d_matches_natten_definition(shape, kernel, stride, dilation, causal):
    check(shape, kernel, stride, dilation, causal, seed=int(np.prod(shape)))


@pytest.mark.parametrize("D, Dv", [(64, 64), (80, 80), (128, 128), (64, 32)])
@pytest.mark.parametrize("Hq, Hkv", [(1, 1), (4, 2), (8, 1)])
def test_head_dims_and_gqa(D, Dv, Hq, Hkv):
    check((6, 11), (3, 4), (1, 2), (1, 2), (False, True), B=2, Hq=Hq, Hkv=Hkv, D=D, Dv=Dv, seed=D + Hq)


def test_long_axes_cross_key_tiles_and_split_rows():
    # 1D windows longer than a K^T tile (256 keys), rows of the last axis cut into several work items
    check((700,), 301, 1, 1, False, Hq=1, seed=1)
    check((700,), 300, 37, 2, True, Hq=4, Hkv=4, seed=2)
    check((3, 333), (2, 129), (1, 64), 1, (True, False), Hq=4, Hkv=1, seed=3)
    # small kernels on long rows: rows cut into chunks of about 32 queries
    check((500,), 5, 1, 1, True, Hq=1, seed=4)
    check((4, 101), (3, 6), (1, 2), (1, 2), False, Hq=2, Hkv=2, seed=5)


def test_non_causal_queries_see_exactly_the_kernel_product():
    mask = spattn.na_mask((9, 10, 11), (3, 4, 5), (2, 1, 2), (1, 3, 2), False)
    assert mask.shape == (1, 1, 990, 60)
    assert (mask.indices >= 0).all()
    causal = spattn.na_mask((9, 10, 11), (3, 4, 5), (2, 1, 2), (1, 3, 2), (True, False, False))
    assert causal.shape[-1] == 60 and (causal.indices < 0).any()


def test_gna_worked_example():
    # n = 8, K = 4, s = 2: q0,q1 -> [0, 4); q2,q3 -> [1, 5); q4,q5 -> [3, 7); q6,q7 -> [4, 8)
    idx = spattn.na_mask((8,), 4, stride=2).indices[0, 0]
    starts = idx[:, 0]
    np.testing.assert_array_equal(starts, [0, 0, 1, 1, 3, 3, 4, 4])
    np.testing.assert_array_equal(idx - starts[:, None], np.tile(np.arange(4), (8, 1)))


def test_heads_first_layout_equals_heads_last():
    shape, B, H, D = (5, 6, 7), 2, 3, 64
    q, k, v = (rand((B, *shape, H, D), s) for s in (10, 11, 12))
    kw = dict(dilation=(1, 2, 1), stride=(1, 1, 2), is_causal=(True, False, False), return_lse=True)
    out, lse = spattn.na3d(q, k, v, (3, 3, 4), **kw)
    hf = [np.ascontiguousarray(np.moveaxis(x, -2, 1)) for x in (q, k, v)]
    out2, lse2 = spattn.na3d(*hf, (3, 3, 4), layout="heads_first", **kw)
    np.testing.assert_array_equal(np.moveaxis(out2, 1, -2), out)
    np.testing.assert_array_equal(np.moveaxis(lse2, 1, -1), lse)


def test_float64_and_strided_inputs_and_scale():
    q = rand((1, 9, 10, 2, 64), 20).astype(np.float64)
    out = spattn.na2d(q, q[..., ::-1], q, 3, scale=0.3)
    out2 = spattn.na2d(q.astype(np.float32), np.ascontiguousarray(q[..., ::-1]).astype(np.float32),
                       q.astype(np.float32), (3, 3), scale=0.3)
    np.testing.assert_array_equal(out, out2)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_full_window_non_causal_is_dense_attention():
    q, k, v = (rand((1, 6, 7, 2, 64), s) for s in (30, 31, 32))
    out = spattn.na2d(q, k, v, (6, 7))
    hf = [np.ascontiguousarray(np.moveaxis(x, -2, 1)).reshape(1, 2, 42, 64) for x in (q, k, v)]
    dense = spattn.attention(*hf)
    np.testing.assert_allclose(np.moveaxis(out, -2, 1).reshape(1, 2, 42, 64), dense, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=8), r"kernel_size must be <= the extent 7 along axis 0, got kernel_size\[0\]=8"),
    (dict(kernel_size=(3, 10)), r"kernel_size must be <= the extent 9 along axis 1, got kernel_size\[1\]=10"),
    (dict(kernel_size=3, dilation=3), r"kernel_size \* dilation must be <= the extent 7 along axis 0, got "
                                      r"kernel_size\[0\]=3 \* dilation\[0\]=3 = 9"),
    (dict(kernel_size=3, stride=4), r"stride must lie in \[1, kernel_size=3\] along axis 0, got stride\[0\]=4"),
    (dict(kernel_size=0), r"kernel_size must be >= 1 along every axis, got kernel_size\[0\]=0"),
    (dict(kernel_size=3, dilation=(1, 0)), r"dilation must be >= 1 along every axis, got dilation\[1\]=0"),
    (dict(kernel_size=(3, 3, 3)), r"kernel_size must have one entry per axis \(2\), got 3"),
    (dict(kernel_size=3, is_causal=(True,)), r"is_causal must have one entry per axis \(2\), got 1"),
    (dict(kernel_size=3, layout="bhwd"), r"layout must be 'heads_last'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    q = rand((1, 7, 9, 2, 64), 0)
    with pytest.raises(ValueError, match=match):
        spattn.na2d(q, q, q, **kwargs)


def test_bad_types_raise_type_error():
    q = rand((1, 7, 9, 2, 64), 0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a tuple of 2 ints"):
        spattn.na2d(q, q, q, 3.0)
    with pytest.raises(TypeError, match="is_causal must be a bool or a tuple of 2 bools"):
        spattn.na2d(q, q, q, 3, is_causal=1)
    with pytest.raises(TypeError, match="q must be a real floating-point array"):
        spattn.na2d(q.astype(np.int32), q, q, 3)


def test_wrong_ndim_and_mismatched_axes_raise_value_error():
    q = rand((1, 7, 9, 2, 64), 0)
    with pytest.raises(ValueError, match=r"q must have 4 dimensions \[B, L, H, D\] \(heads_last\) for na1d, got 5"):
        spattn.na1d(q, q, q, 3)
    with pytest.raises(ValueError, match=r"k must have 6 dimensions \[B, H, X, Y, Z, D\] \(heads_first\)"):
        spattn.na3d(rand((1, 2, 3, 3, 3, 8), 0), q, q, 3, layout="heads_first")
    with pytest.raises(ValueError, match=r"k must have the token axes of q \(7, 9\), got \(7, 8\)"):
        spattn.na2d(q, q[:, :, :8], q, 3)
    with pytest.raises(ValueError, match=r"Hq=2 must be a multiple of kv heads Hkv=3"):
        spattn.na2d(q, rand((1, 7, 9, 3, 64), 1), rand((1, 7, 9, 3, 64), 2), 3)
    with pytest.raises(ValueError, match=r"shape must be a tuple of 1 to 3 ints"):
        spattn.na_mask((2, 3, 4, 5), 2)


def test_official_flex_mask_agrees_when_natten_is_importable():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("natten.backends.flex")
    cases = [((13,), (4,), (2,), (3,), (True,)), ((9, 11), (3, 4), (3, 2), (2, 1), (False, True)),
             ((5, 6, 7), (2, 3, 3), (1, 3, 2), (2, 1, 2), (True, False, False)), ((31,), (7,), (7,), (4,), (False,))]
    for shape, kernel, stride, dilation, causal in cases:
        block = flex.get_na_flex_mask("cpu", len(shape), shape, kernel, stride, dilation, causal)
        n = int(np.prod(shape))
        qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
        official = block.mask_mod(torch.zeros(()), torch.zeros(()), qi, ki).numpy()
        ours = spattn.na_mask(shape, kernel, dilation, stride, causal).to_dense(n)[0, 0]
        np.testing.assert_array_equal(ours, official)
        np.testing.assert_array_equal(natten_flex_mask(shape, kernel, stride, dilation, causal), official)


@pytest.mark.parametrize("causal", [False, True])
def test_registry_entry_is_na1d_on_heads_first_tokens(causal):
    q, k, v = (rand((1, 4, 300, 64), s) if s == 40 else rand((1, 2, 300, 64), s) for s in (40, 41, 42))
    m = spattn.methods.get("natten", kernel_size=64, dilation=2, stride=8)
    out = m(q, k, v, causal=causal)
    ref = spattn.na1d(q, k, v, 64, dilation=2, stride=8, is_causal=causal, layout="heads_first")
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    mask = m.estimate(q, k, causal=causal)
    assert mask.shape == (1, 4, 300, 64)
    if causal:  # stride 1 causal NA is the causal sliding window of kernel_size keys
        w = spattn.methods.get("natten", kernel_size=50).estimate(q, k, causal=True).to_dense(300)[0, 0]
        i, j = np.arange(300)[:, None], np.arange(300)[None, :]
        np.testing.assert_array_equal(w, (j <= i) & (j > i - 50))


def test_registry_entry_covers_short_sequences_and_checks_its_parameters():
    q = rand((1, 1, 10, 64), 50)
    dense = spattn.attention(q, q, q)
    np.testing.assert_allclose(spattn.methods.get("natten")(q, q, q), dense, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="natten: stride must be <= kernel_size=4, got 5"):
        spattn.methods.get("natten", kernel_size=4, stride=5)
    with pytest.raises(ValueError, match="natten: dilation must be >= 1"):
        spattn.methods.get("natten", dilation=0)
    with pytest.raises(ValueError, match=r"kernel_size \* dilation must be <= the extent 10"):
        spattn.methods.get("natten", kernel_size=4, dilation=3).estimate(q, q)


def test_non_finite_values_outside_a_neighbourhood_do_not_leak():
    q, k, v = (rand((1, 12, 40, 2, 64), s) for s in (60, 61, 62))
    v[0, 5, 20] = np.inf
    out = spattn.na2d(q, k, v, (3, 5))
    allowed = natten_flex_mask((12, 40), (3, 5), (1, 1), (1, 1), (False, False))
    sees = allowed[:, 5 * 40 + 20].reshape(12, 40)
    assert np.isfinite(out[0][~sees]).all()
    assert not np.isfinite(out[0][sees]).all(axis=-1).any()


def brute_tile_stats(shape, kernel, stride, dilation, causal, tq, tk):
    """Tile counts from the dense mask: tokens of each dilation group tiled per axis in group coordinates."""
    allowed = natten_flex_mask(shape, kernel, stride, dilation, causal)
    crd = np.array(np.unravel_index(np.arange(int(np.prod(shape))), shape)).T
    group = crd % np.array(dilation)
    u = crd // np.array(dilation)

    def tile_ids(t):
        keys = np.concatenate([group, u // np.array(t)], axis=1)
        _, ids = np.unique(keys, axis=0, return_inverse=True)
        return ids.ravel()

    qi, ki = tile_ids(tq), tile_ids(tk)
    counts = {}
    for a, b in zip(*np.nonzero(allowed)):
        counts[(qi[a], ki[b])] = counts.get((qi[a], ki[b]), 0) + 1
    full = sum(c == np.prod(tq) * np.prod(tk) for c in counts.values())
    return len(counts), full, int(allowed.sum())


@pytest.mark.parametrize("shape, kernel, stride, dilation, causal, tq, tk", [
    ((37,), (5,), (1,), (1,), (False,), (8,), (4,)),
    ((40,), (8,), (8,), (1,), (False,), (8,), (8,)),
    ((41,), (6,), (3,), (2,), (True,), (4,), (8,)),
    ((9, 14), (3, 4), (1, 2), (2, 1), (False, True), (2, 4), (4, 2)),
    ((6, 7, 8), (2, 3, 4), (2, 3, 4), (1, 2, 1), (True, False, False), (2, 1, 4), (2, 3, 4)),
])
def test_gna_tile_stats_match_the_tiled_dense_mask(shape, kernel, stride, dilation, causal, tq, tk):
    st = spattn.gna_tile_stats(shape, kernel, dilation, stride, causal, q_tile=tq, kv_tile=tk)
    visited, full, visible = brute_tile_stats(shape, kernel, stride, dilation, causal, tq, tk)
    assert (st["visited_tiles"], st["full_tiles"], st["visible_pairs"]) == (visited, full, visible)
    assert st["perfectly_block_sparse"] == (visited == full)


def test_gna_tile_stats_reproduce_natten_profiler_examples():
    # docs/profiler.md: 1D 32K, K=2K, stride 256 is the least stride that is fully block-sparse
    # (FLOP bound 16x); 2D 256x256, K=(80, 80), tiles (16, 8), stride (16, 16) likewise (bound 10.2x).
    one = spattn.gna_tile_stats((32768,), 2048, stride=256, q_tile=256, kv_tile=128)
    assert one["perfectly_block_sparse"] and one["speedup_bound"] == 16.0
    assert not spattn.gna_tile_stats((32768,), 2048, stride=128, q_tile=256, kv_tile=128)["perfectly_block_sparse"]
    two = spattn.gna_tile_stats((256, 256), 80, stride=16, q_tile=(16, 8), kv_tile=(16, 8))
    assert two["perfectly_block_sparse"] and round(two["speedup_bound"], 2) == 10.24
    na = spattn.gna_tile_stats((256, 256), 80, q_tile=(16, 8), kv_tile=(16, 8))
    assert not na["perfectly_block_sparse"] and na["useful_fraction"] < 1


SWEEP = int(os.environ.get("SPATTN_NATTEN_SWEEP", "24"))


@pytest.mark.parametrize("case", range(SWEEP))
def test_random_sweep_matches_natten_definition(case):
    """Random patterns (size of the tier: SPATTN_NATTEN_SWEEP cases, default 24)."""
    rng = np.random.default_rng(1000 + case)
    rank = int(rng.integers(1, 4))
    limits = {1: (1, 120), 2: (1, 14), 3: (1, 7)}[rank]
    shape = tuple(int(rng.integers(*limits, endpoint=True)) for _ in range(rank))
    kernel, dilation, stride = [], [], []
    for n in shape:
        k = int(rng.integers(1, n + 1))
        d = int(rng.integers(1, n // k + 1))
        kernel.append(k)
        dilation.append(d)
        stride.append(int(rng.integers(1, k + 1)))
    causal = tuple(bool(c) for c in rng.integers(0, 2, rank))
    Hkv, G = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    D = int(rng.choice([16, 32, 64, 80]))
    check(shape, tuple(kernel), tuple(stride), tuple(dilation), causal, B=int(rng.integers(1, 3)), Hq=Hkv * G,
          Hkv=Hkv, D=D, Dv=int(rng.choice([D, 24])), seed=case)


@pytest.mark.parametrize("shape, kernel, stride, dilation, causal", [
    ((37,), 5, 1, 1, False), ((40,), 8, 3, 1, False), ((41,), 6, 3, 2, True), ((9, 14), (3, 4), (1, 2), (2, 1), False),
    ((6, 7, 8), (2, 3, 4), (2, 3, 4), (1, 2, 1), (True, False, False)), ((33, 35), 7, 7, 1, False),
])
@pytest.mark.parametrize("heads_per_kv", [1, 4])
def test_na_work_counts_the_pattern_and_a_superset_of_it(shape, kernel, stride, dilation, causal, heads_per_kv):
    w = spattn.na_work(shape, kernel, dilation, stride, causal, heads_per_kv=heads_per_kv)
    idx = spattn.na_mask(shape, kernel, dilation, stride, causal).indices[0, 0]
    n = int(np.prod(shape))
    assert w["visible_pairs"] == int((idx >= 0).sum())
    assert w["visible_pairs"] <= w["computed_pairs"] <= n * n
    assert w["dense_pairs"] == n * n and w["speedup_bound"] == n * n / w["computed_pairs"]
    assert len(w["box_shape"]) == len(shape) and w["boxes"] >= 1
    st = (stride,) * len(shape) if isinstance(stride, int) else stride
    dl = (dilation,) * len(shape) if isinstance(dilation, int) else dilation
    for t, s, m, d in zip(w["box_shape"], st, shape, dl):  # whole stride groups or a divisor of one
        assert t >= -(-m // d) or t % s == 0 or s % t == 0 or t * 4 < s


@pytest.mark.parametrize("n, kernel, stride", [(1024, 64, 1), (1024, 64, 16), (2048, 256, 256), (4096, 512, 128)])
def test_na_work_in_1d_is_the_gna_tile_model_of_the_kernels_boxes(n, kernel, stride):
    # Boxes that tile the axis evenly, keys read as exact runs: GNA's model with q_tile = box, kv_tile = 1.
    w = spattn.na_work(n, kernel, stride=stride)
    box = w["box_shape"][0]
    assert n % box == 0
    g = spattn.gna_tile_stats(n, kernel, stride=stride, q_tile=box, kv_tile=1)
    assert w["computed_pairs"] == g["computed_pairs"] and w["visible_pairs"] == g["visible_pairs"]
    if stride % box == 0 or box % stride == 0 and stride == kernel:
        assert w["useful_fraction"] == 1.0  # perfectly block-sparse: every computed slot is visible


def test_na_work_brute_force_in_2d():
    # The kernel's boxes for a 2D pattern at dilation 1: computed = sum over boxes of rows x the
    # per-key-row hull of the box's windows, rebuilt from na_mask and the reported box shape.
    shape, kernel, stride = (20, 24), (5, 6), (2, 3)
    w = spattn.na_work(shape, kernel, stride=stride)
    tx, ty = w["box_shape"]
    idx = spattn.na_mask(shape, kernel, stride=stride).indices[0, 0]
    total = 0
    for x0 in range(0, shape[0], tx):
        for y0 in range(0, shape[1], ty):
            qs = [x * shape[1] + y for x in range(x0, min(x0 + tx, shape[0])) for y in range(y0, min(y0 + ty, shape[1]))]
            keys = idx[qs]
            keys = keys[keys >= 0]
            rows = {}
            for kk in keys.tolist():
                r, c = divmod(kk, shape[1])
                lo, hi = rows.get(r, (c, c))
                rows[r] = (min(lo, c), max(hi, c))
            total += len(qs) * sum(hi - lo + 1 for lo, hi in rows.values())
    assert w["computed_pairs"] == total


def test_na_work_rejects_bad_input():
    with pytest.raises(ValueError, match="heads_per_kv"):
        spattn.na_work((8, 8), 3, heads_per_kv=0)
    with pytest.raises(ValueError, match="stride"):
        spattn.na_work((8, 8), 3, stride=4)
