"""SALE: masks equal a numpy transcription of the official selection (BirdChristopher/SALE HEAD
39d380c: the per-warp / per-token int4 quantisers of ``quant_triton.py``, the block partition,
two-pass threshold and Relative Attention Score test of ``compute_attn_1rowblock_skipping_v2``),
and the method's output equals float64 attention restricted to its mask.

The reference quantises in float32 (the precision spattn computes in; the official kernel runs
fp16) and runs the exact pass and the threshold in float64."""

import numpy as np
import pytest

import spattn
from spattn import _core
from conftest import ATOL, RTOL, make_qkv, ref_probs


def quantise(x, mode, is_key, bk):
    """int4_quant_sub_k_mean_{perwarp_SmoothQ_fullsize,pertoken_SmoothQ}_allInOne on one head (N, D):
    (int values, dequantisation scale per row, 7/max per row, mean, smoothed rows)."""
    n = x.shape[0]
    mean = x.astype(np.float64).mean(0).astype(np.float32)
    xs = (x - mean).astype(np.float32)
    rowmax = np.abs(xs).max(1)
    t = np.arange(n)
    if mode == 2:
        group = t
    elif not is_key:
        group = (t // 16) * 8 + t % 8          # reshape [.., kBlockN//16, 2, 8, D], max over axes 2, 4
    else:
        group = (t // bk) * 4 + (t % bk) // 2 % 4   # reshape [kBlockN//8, 4, 2, D], max over axes 0, 2, 3
    gmax = np.zeros(group.max() + 1, np.float32)
    np.maximum.at(gmax, group, rowmax)
    gmax = gmax[group]
    with np.errstate(divide="ignore"):
        inv = np.where(gmax > 0, np.float32(7) / gmax, np.float32(0)).astype(np.float32)
    ints = np.rint(xs * inv[:, None]).astype(np.int64)
    if not is_key and mode == 3:
        scale = (gmax / np.float32(7)).astype(np.float32)          # sq stores q_max / 7
    else:
        with np.errstate(divide="ignore"):
            scale = np.where(inv > 0, np.float32(1) / inv, 0).astype(np.float32)  # 1 / q_scale, 1 / k_scale
    return ints, scale, inv, mean, xs


def partition(m, n, bk, tau, seg=128, local=128):
    """The block split of compute_attn_1rowblock_skipping_v2 (kBlockM = 64, Lq == Lk)."""
    bps, n_local_min = seg // bk, local // bk
    n_max = min(-(-n // bk), -(-(m + 1) * 64 // bk))
    n_wo = n_max - 1
    n_segs = -(-n_wo // bps)
    rem = n_wo - n_segs * bps
    if tau < 1e-5:
        n_segs, n_local = 0, n_wo
    elif rem >= n_local_min:
        n_local = rem
    else:
        sup = -(-(n_local_min - rem) // bps)
        n_local = bps * sup + rem
        n_segs -= sup
    return n_max, 1 + bps * max(n_segs, 0), max(0, n_max - n_local)


def official_mask(q, k, thresholds=0.004, bk=32, seg=128, quant_mode=3, scale=None):
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    taus = np.broadcast_to(np.asarray(thresholds, np.float64), (Hq,))
    nqb, nkb = -(-N // 64), -(-N // bk)
    mask = np.zeros((B, Hq, nqb, nkb), bool)
    for b in range(B):
        for h in range(Hq):
            kq, sk, kinv, _, ks = quantise(k[b, h // G], quant_mode, True, bk)
            qq, sq, _, qmean, _ = quantise(q[b, h], quant_mode, False, bk)
            qmk = ks.astype(np.float64) @ qmean.astype(np.float64)     # mean(q) . k_smooth
            if quant_mode == 3:
                qmk = qmk * kinv                                       # qmk_sk
            exact = q[b, h].astype(np.float64) @ ks.astype(np.float64).T   # the kernel's q . smooth_k
            tau = taus[h]
            for m in range(nqb):
                n_max, seg_end, local_begin = partition(m, N, bk, tau, seg)
                keep = {0, *range(local_begin, n_max)}
                rows = np.arange(m * 64, min(N, m * 64 + 64))
                if seg_end > 1:
                    cols = np.array(sorted({*range(min(bk, N))} | {*range(local_begin * bk, min(N, n_max * bk))}))
                    s = exact[np.ix_(rows, cols)]
                    s = np.where(cols[None, :] <= rows[:, None], s, -np.inf)
                    mx = s.max(1)
                    lsum = np.exp(scale * (s - mx[:, None])).sum(1)
                    T = mx + np.log(lsum * tau) / scale
                    bps = seg // bk
                    for j in range(1, seg_end):
                        if quant_mode == 2 and j > 1 and (j - 1) % bps == 0:
                            # is_big_block reads the live row_max / row_sum: fold in the previous
                            # segment's selected blocks (computed exactly by the kernel)
                            for jb in range(j - bps, j):
                                if jb in keep:
                                    sx = exact[np.ix_(rows, np.arange(jb * bk, jb * bk + bk))]
                                    mn = np.maximum(mx, sx.max(1))
                                    lsum = lsum * np.exp(scale * (mx - mn)) + np.exp(scale * (sx - mn[:, None])).sum(1)
                                    mx = mn
                            T = mx + np.log(lsum * tau) / scale
                        kk = np.arange(j * bk, j * bk + bk)
                        dot = qq[rows] @ kq[kk].T
                        if quant_mode == 3:
                            rsq = np.where(sq[rows] > 0, 1 / sq[rows].astype(np.float64), 0)
                            est = (dot + np.rint(qmk[kk][None, :] * rsq[:, None])) * (sq[rows, None] * sk[None, kk])
                        else:
                            est = sk[None, kk] * sq[rows, None] * dot + qmk[kk][None, :]
                        if (est > T[:, None]).any():
                            keep.add(j)
                mask[b, h, m, sorted(keep)] = True
    return mask


def structured_qkv(B, Hq, Hkv, N, D, seed):
    """Keys of small norm with a few loud key blocks, so that selection is neither all nor nothing."""
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=seed)
    rng = np.random.default_rng(seed + 100)
    k = (0.3 * k).astype(np.float32)
    loud = rng.random((B, Hkv, -(-N // 32))) < 0.2
    k *= np.where(np.repeat(loud, 32, axis=2)[:, :, :N, None], 4.0, 1.0).astype(np.float32)
    return (2 * q).astype(np.float32), np.ascontiguousarray(k), v


def estimate(q, k, **params):
    return spattn.methods.get("sale", dense_len=0, **params).estimate(q, k, causal=True)


@pytest.mark.parametrize("B, Hq, Hkv, N, D, mode, bk", [
    (1, 4, 2, 777, 64, 3, 32), (2, 2, 1, 600, 80, 3, 32), (1, 2, 2, 530, 128, 2, 32), (1, 2, 1, 650, 64, 3, 16),
])
def test_mask_equals_official_selection(B, Hq, Hkv, N, D, mode, bk):
    q, k, _ = structured_qkv(B, Hq, Hkv, N, D, seed=N)
    taus = [0.004, 0.05, 0.2, 0.0][:Hq] if Hq > 2 else [0.01, 0.1][:Hq]
    mask = estimate(q, k, thresholds=taus, quant_mode=mode, block_k_size=bk)
    ref = official_mask(q, k, taus, bk=bk, quant_mode=mode)
    np.testing.assert_array_equal(mask.blocks, ref)
    causal = np.tril(np.ones((mask.blocks.shape[2], mask.blocks.shape[3]), bool), k=0)
    assert 0 < mask.blocks.sum() < mask.blocks.size  # some blocks skipped, some kept
    assert mask.blocks.shape == (B, Hq, -(-N // 64), -(-N // bk)) and causal.shape[0] > 0


def test_quant_modes_use_different_scale_groups():
    q, k, _ = structured_qkv(2, 2, 1, 600, 80, seed=600)
    per_token = estimate(q, k, quant_mode=2, thresholds=[0.01, 0.1]).blocks
    np.testing.assert_array_equal(per_token, official_mask(q, k, [0.01, 0.1], quant_mode=2))
    assert (per_token != estimate(q, k, quant_mode=3, thresholds=[0.01, 0.1]).blocks).any()
    # the reference's groups: 8 query rows per 16 share a scale, 4 key groups per 32-key block
    _, sq, _, _, _ = quantise(q[0, 0], 3, False, 32)
    assert sq[0] == sq[8] and sq[16] == sq[24] and len(np.unique(sq[:16])) == 8
    _, sk, _, _, _ = quantise(k[0, 0], 3, True, 32)
    assert sk[0] == sk[1] == sk[8] == sk[9] == sk[24] and len(np.unique(sk[:32])) == 4


def test_sink_local_window_and_dense_rules():
    q, k, _ = structured_qkv(1, 2, 1, 1100, 64, seed=5)
    mask = estimate(q, k, thresholds=[1.0, 0.0]).blocks
    nqb, nkb = mask.shape[2:]
    for m in range(nqb):
        n_max, seg_end, local_begin = partition(m, 1100, 32, 1.0)
        row = mask[0, 0, m]
        assert row[0] and row[local_begin:n_max].all() and not row[n_max:].any()
        assert n_max - local_begin >= 4 or local_begin == 0            # >= 128 local tokens
        assert n_max - max(local_begin, 1) <= 7 or local_begin == 0
        assert mask[0, 1, m, :n_max].all()                               # tau < 1e-5: dense
    # the official function runs dense SDPA up to 1024 tokens (dense_len)
    full = spattn.methods.get("sale").estimate(q[:, :, :1000], k[:, :, :1000], causal=True).blocks
    want = np.array([[j <= min(-(-(m + 1) * 64 // 32), 32) - 1 for j in range(32)] for m in range(16)])
    np.testing.assert_array_equal(full[0, 0], want)


@pytest.mark.parametrize("Hq, Hkv, N, D", [(4, 2, 555, 64), (2, 1, 430, 80), (2, 2, 300, 128)])
def test_output_is_attention_restricted_to_the_mask(Hq, Hkv, N, D):
    q, k, v = structured_qkv(1, Hq, Hkv, N, D, seed=7)
    m = spattn.methods.get("sale", dense_len=0, thresholds=0.05)
    mask = m.estimate(q, k, causal=True)
    np.testing.assert_array_equal(mask.blocks, official_mask(q, k, 0.05))
    out = m(q, k, v, causal=True)
    p, _ = ref_probs(q, k, causal=True, allowed=mask.to_dense(causal=False))
    ref = np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), Hq // Hkv, axis=1))
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_parameters_defaults_and_checks():
    m = spattn.methods.get("sale")
    assert m.params == {"thresholds": 0.004, "block_k_size": 32, "local_window": 128, "block_seg_size": 128,
                        "quant_mode": 3, "dense_len": 1024}
    caps = spattn.methods.capabilities("sale")
    assert not caps.noncausal and not caps.chunked and not caps.decode
    for bad, match in [(dict(local_window=64), "local_window"), (dict(block_k_size=24), "block_k_size"),
                       (dict(block_seg_size=192), "block_seg_size"), (dict(quant_mode=1), "quant_mode"),
                       (dict(thresholds=1.5), "thresholds"), (dict(dense_len=-1), "dense_len")]:
        with pytest.raises(ValueError, match=match):
            spattn.methods.get("sale", **bad)
    q, k, _ = make_qkv(1, 4, 2, 200, 200, 64)
    with pytest.raises(ValueError, match="thresholds"):
        _core.estimate_sale(q, k, True, None, spattn.methods.get("sale", thresholds=[0.1, 0.2]).cparams)
    with pytest.raises(ValueError, match="causal"):
        _core.estimate_sale(q, k, False, None, _core.SaleParams())
    with pytest.raises(ValueError, match="Nq == Nk"):
        _core.estimate_sale(np.ascontiguousarray(q[:, :, :100]), k, True, None, _core.SaleParams())


def test_estimate_timer_smoke():
    q, k, _ = make_qkv(1, 2, 1, 300, 300, 64)
    for int4 in (True, False):
        assert _core.sale_estimate_ms(q, k, _core.SaleParams(), int4, 1) >= 0.0
    assert spattn.build_info()["simd_int4"] in ("avx512-vnni", "avx512", "avx2", "generic")


def test_bench_sale_estimate_cli_smoke(capsys):
    from spattn.__main__ import main

    assert main(["bench", "--sale-estimate", "--n", "1100", "--d", "64", "--hq", "2", "--hkv", "1",
                 "--repeats", "1", "--no-roofs", "--no-torch"]) == 0
    assert "fp32/int4" in capsys.readouterr().out
