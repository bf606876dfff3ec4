"""Video-BLADE ASA (spattn.methods.blade) against a float64 numpy port of the official code
(ziplab/VIDEO-BLADE ``wanx_blocksparseattn.py`` ``adaptive_block_sparse_attn`` with
``GilbertRearranger``, ``efficient_attn_with_pooling`` / ``attn_with_pooling`` written out,
``transfer_attn_to_mask`` mode "energy", ``simple_pooling``; the CogVideoX variant's text move
and forced last blocks), with the same sampled positions; the Gilbert order against the
official ``gilbert3d`` (fixture tests_py/data/gilbert3d_official.npz, made by
make_gilbert3d_fixture.py)."""

import os

import numpy as np
import pytest

import spattn
from spattn.methods.blade import energy_mask, gilbert3d_order, sample_positions, token_order

DATA = os.path.join(os.path.dirname(__file__), "data", "gilbert3d_official.npz")


def test_gilbert_order_matches_the_official_curve():
    with np.load(DATA) as f:
        for key in f.files:
            w, h, d = map(int, key.split("x"))
            got = gilbert3d_order(w, h, d)
            np.testing.assert_array_equal(got, f[key], err_msg=key)
            assert sorted(got) == list(range(w * h * d))


def test_token_order_moves_text_last_and_checks_the_grid():
    o = token_order(2 + 3 * 2 * 1, (3, 2, 1), text_len=2)
    np.testing.assert_array_equal(o[-2:], [0, 1])
    np.testing.assert_array_equal(o[:-2], gilbert3d_order(3, 2, 1) + 2)
    with pytest.raises(ValueError, match="grid"):
        token_order(10, (3, 2, 1))


# ---------------------------------------------------------------- float64 reference (official port)
def ref_energy_mask(A, thr, lo_r, hi_r):
    nb = A.shape[-1]
    lo, hi = max(1, int(nb * lo_r)), max(1, int(nb * hi_r))
    out = np.zeros(A.shape, bool)
    for idx in np.ndindex(A.shape[:-1]):
        order = np.argsort(-A[idx], kind="stable")
        cum = np.cumsum(A[idx][order])
        t = next((i for i in range(nb) if cum[i] >= thr * cum[-1]), nb)
        t = min(max(t, lo), hi)
        out[idx + (order[:t],)] = True
    return out


def ref_pad(x, mult):
    n = x.shape[2]
    m = -(-n // mult) * mult
    return np.concatenate([x, np.repeat(x[:, :, -1:], m - n, axis=2)], axis=2)


def ref_softmax_lse(s):
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    return e / e.sum(-1, keepdims=True), (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]


def ref_blade(q, k, v, *, order, bs, sn, thr, lo_r, hi_r, gap, force_last, seed):
    g = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    qr, kr, vr = q[:, :, order], k[:, :, order], v[:, :, order]  # GilbertRearranger.rearrange
    B, H, N, D = qr.shape
    scale = 1 / np.sqrt(D)
    rng = np.random.default_rng(seed)
    pos_q = sample_positions(B, H, bs, sn, rng)
    pos_k = sample_positions(B, H // g, bs, sn, rng)
    qp, kp = ref_pad(qr, bs), ref_pad(kr, bs)
    nb = qp.shape[2] // bs
    qs = np.stack([np.stack([qp[b, h].reshape(nb, bs, D)[:, pos_q[b, h]].reshape(-1, D) for h in range(H)])
                   for b in range(B)])
    ks = np.stack([np.stack([kp[b, h].reshape(nb, bs, D)[:, pos_k[b, h // g]].reshape(-1, D) for h in range(H)])
                   for b in range(B)])
    s = qs @ ks.transpose(0, 1, 3, 2) * scale
    r = s.reshape(B, H, nb * sn, nb, sn).max(-1)  # per row, max over each key block
    A = np.exp(r - s.max(-1)[..., None]).reshape(B, H, nb, sn, nb).max(3)
    mask = ref_energy_mask(A, thr, lo_r, hi_r)
    if force_last:
        mask[:, :, -force_last:, :] = True
        mask[:, :, :, -force_last:] = True
    allowed = np.repeat(np.repeat(mask, bs, axis=2), bs, axis=3)[:, :, :N, :N]
    p1, lse1 = ref_softmax_lse(np.where(allowed, qr @ kr.transpose(0, 1, 3, 2) * scale, -np.inf))
    out1 = p1 @ vr
    kbar = ref_pad(kr, gap).reshape(B, H, -1, gap, D).mean(3)
    vbar = ref_pad(vr, gap).reshape(B, H, -1, gap, D).mean(3)
    p2, lse2 = ref_softmax_lse(qr @ kbar.transpose(0, 1, 3, 2) * scale)
    out2 = p2 @ vbar
    w1, w2 = lse1, lse2 + np.log(gap)
    mx = np.maximum(w1, w2)
    alpha = (np.exp(w1 - mx) / (np.exp(w1 - mx) + np.exp(w2 - mx)))[..., None]
    out_r = out1 * alpha + out2 * (1 - alpha)
    out = np.empty_like(out_r)
    out[:, :, order] = out_r  # reversed_rearrange
    return out, mask


@pytest.mark.parametrize("kw", [
    dict(N=7 * 5 * 6, Hq=4, Hkv=2, D=64, grid=(7, 5, 6), text_len=0, bs=32, sn=8, gap=30, force=0, hi=0.45),
    dict(N=26 + 5 * 3 * 9, Hq=2, Hkv=2, D=80, grid=(5, 3, 9), text_len=26, bs=16, sn=4, gap=15, force=2, hi=0.1),
    dict(N=301, Hq=2, Hkv=1, D=128, grid=None, text_len=0, bs=64, sn=32, gap=7, force=0, hi=0.5),
])
def test_matches_the_official_forward(kw):
    w = spattn.synthetic.structured_qkv(B=1, Hq=kw["Hq"], Hkv=kw["Hkv"], N=kw["N"], D=kw["D"], seed=4)
    m = spattn.methods.get("blade", grid=kw["grid"], text_len=kw["text_len"], block_size=kw["bs"],
                           sample_num=kw["sn"], sample_gap=kw["gap"], force_last_blocks=kw["force"],
                           max_retain_ratio=kw["hi"], seed=5)
    out = m(w.q, w.k, w.v, causal=False)
    ref, ref_mask = ref_blade(*(x.astype(np.float64) for x in (w.q, w.k, w.v)), order=m.order(kw["N"]), bs=kw["bs"],
                              sn=kw["sn"], thr=0.95, lo_r=0.05, hi_r=kw["hi"], gap=kw["gap"],
                              force_last=kw["force"], seed=5)
    np.testing.assert_array_equal(m.last_info["mask"].map, ref_mask)
    np.testing.assert_allclose(out, ref, atol=5e-5, rtol=1e-4)
    # the mask in original order: query i and key j meet iff their ordered blocks are selected
    o = m.order(kw["N"])
    blk = np.empty(kw["N"], int)
    blk[o] = np.arange(kw["N"]) // kw["bs"]
    dense = m.estimate(w.q, w.k, causal=False).to_dense(kw["N"], causal=False)
    np.testing.assert_array_equal(dense[0, 0], ref_mask[0, 0][blk[:, None], blk[None, :]])


def test_energy_mask_keeps_below_the_crossing_and_clamps():
    A = np.array([[[0.5, 0.3, 0.15, 0.05] + [0.0] * 16]])  # crossing at index 2 (0.95): keep 2
    got = energy_mask(A, energy_threshold=0.95, min_retain_ratio=0.05, max_retain_ratio=0.5)
    np.testing.assert_array_equal(np.flatnonzero(got[0, 0]), [0, 1])
    got = energy_mask(A, energy_threshold=0.95, min_retain_ratio=0.05, max_retain_ratio=0.05)
    assert got.sum() == 1  # max(1, int(20 * 0.05)) = 1
    got = energy_mask(A, energy_threshold=0.5, min_retain_ratio=0.2, max_retain_ratio=0.5)
    assert got.sum() == 4  # the crossing is index 0, the min clamp keeps int(20 * 0.2)
    rnd = np.random.default_rng(0).random((2, 3, 9, 9))
    np.testing.assert_array_equal(energy_mask(rnd), ref_energy_mask(rnd, 0.95, 0.05, 0.17))


def test_seeded_sampling_is_reproducible_and_bad_parameters_are_named():
    w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=2, N=200, D=64, seed=1)
    a = spattn.methods.get("blade", block_size=32, sample_num=8, seed=1)
    b = spattn.methods.get("blade_asa", block_size=32, sample_num=8, seed=1)
    np.testing.assert_array_equal(a(w.q, w.k, w.v, causal=False), b(w.q, w.k, w.v, causal=False))
    whole = spattn.methods.get("blade", block_size=16, sample_num=32)  # takes whole blocks
    np.testing.assert_array_equal(whole(w.q, w.k, w.v, causal=False),
                                  spattn.methods.get("blade", block_size=16, sample_num=16)(w.q, w.k, w.v, causal=False))
    with pytest.raises(TypeError, match="grid"):
        spattn.methods.get("blade", grid=5)
    with pytest.raises(ValueError, match="grid"):
        spattn.methods.get("blade", grid=(3, 3, 3))(w.q, w.k, w.v, causal=False)
