"""AnchorAttention against references written from the authors' AnchorAttn code (search-index id
67126152894), not from spattn's own reading:

- step 1, ``get_mask_fused_anchor_triton`` (``anchorattn_step_1(..., init_cnt=1, local_cnt=1)``):
  per query i the init loop covers keys [0, min(G, end of its 128-query tile)) and the local loop
  [max(g G, init end), (g + 1) G), both causal; the anchor is the running maximum ``m_i``;
- step 2, ``get_q_mask_triton`` / ``get_mask_block``: pooled queries and anchors per sub-block
  (sum / block), candidate key blocks ``range(block, g G - block, block)``, a key kept when
  ``pooled logit + diff >= pooled anchor`` for some sub-block of the big block;
- step 3, ``_triton_stripe_sparse_attn_fwd_kernel_step3``: continues step 1's online softmax over
  ``true_coords[g, :count]`` without a causal mask (stripes below G are then counted twice);
- the torch ``get_mask_block`` itself, run once on CPU (fixture
  data/anchor_attention_get_mask_block.npz, made by data/make_anchor_attention_fixture.py).

All in natural-log units (the official kernels compare in log2 units: the same test).
GQA: the official code runs after repeat_kv, i.e. query head h reads kv head h // (Hq / Hkv).
"""

from pathlib import Path

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv

FIXTURE = Path(__file__).parent / "data" / "anchor_attention_get_mask_block.npz"
MARGIN = 1e-4  # float32 vs float64: stripe decisions closer than this to the threshold may differ


# ------------------------------------------------------------------ official steps, float64 numpy
def scores(q, k, scale):
    kk = np.repeat(np.asarray(k, np.float64), q.shape[1] // k.shape[1], axis=1)  # repeat_kv
    return np.einsum("bhid,bhjd->bhij", np.asarray(q, np.float64), kk) * scale


def step1_region(N, G, tile=128):
    """Keys of step 1 per query: the init loop [0, min(G, tile end)) and the local loop
    [max(g G, init end), (g + 1) G), causal (get_mask_fused_anchor_triton, init_cnt = local_cnt = 1)."""
    i = np.arange(N)[:, None]
    j = np.arange(N)[None, :]
    g = i // G
    init_end = np.minimum(G, (i // tile + 1) * tile)
    local = (j >= np.maximum(g * G, init_end)) & (j < (g + 1) * G)
    return (j <= i) & ((j < init_end) | local)


def official_anchors(q, k, scale, G):
    s = scores(q, k, scale)
    return np.where(step1_region(q.shape[2], G), s, -np.inf).max(-1)


def official_stripes(q, k, anchors, scale, block, step, theta, official=True):
    """Per (b, h, big block): (ascending stripes, margin of every candidate) where margin =
    max_r (scale qbar_r . k_j - abar_r) + theta and a candidate is kept iff margin >= 0."""
    B, Hq, N, _ = q.shape
    G = block * step
    kk = np.repeat(np.asarray(k, np.float64), Hq // k.shape[1], axis=1)
    out = {}
    for b in range(B):
        for h in range(Hq):
            for g in range(-(-N // G)):
                q0, q1 = g * G, min(N, (g + 1) * G)
                subs = [(i0, min(q1, i0 + block)) for i0 in range(q0, q1, block)]
                qbar = np.stack([q[b, h, i0:i1].astype(np.float64).mean(0) for i0, i1 in subs])
                abar = np.array([anchors[b, h, i0:i1].astype(np.float64).mean() for i0, i1 in subs])
                c0, c1 = (block, g * G - block) if official else (G, g * G)
                cand = np.arange(c0, min(c1, N))
                margin = (scale * qbar @ kk[b, h, cand].T - abar[:, None]).max(0) + theta if cand.size else cand
                out[b, h, g] = (cand[margin >= 0], cand, margin)
    return out


def assert_stripes_match(stripes, counts, ref):
    """Estimator stripes equal the reference except candidates within MARGIN of the threshold."""
    for (b, h, g), (sel, cand, margin) in ref.items():
        got = stripes[b, h, g, : counts[b, h, g]]
        assert np.all(np.diff(got) > 0) and np.all(stripes[b, h, g, counts[b, h, g]:] == -1)
        diff = np.setxor1d(got, sel)
        if diff.size:
            m = margin[np.searchsorted(cand, diff)]
            assert np.all(np.abs(m) < MARGIN), (b, h, g, diff, m)


def multiset_attention(q, k, v, scale, G, stripes, counts):
    """Official step 3: softmax over step 1's region plus the big block's stripes, a key in both
    counted twice; returns (out, lse)."""
    B, Hq, N, _ = q.shape
    s = scores(q, k, scale)
    mult = np.broadcast_to(step1_region(N, G), s.shape).astype(np.float64).copy()
    for b in range(B):
        for h in range(Hq):
            for g in range(stripes.shape[2]):
                rows = slice(g * G, min(N, (g + 1) * G))
                mult[b, h, rows, stripes[b, h, g, : counts[b, h, g]]] += 1.0
    mx = np.where(mult > 0, s, -np.inf).max(-1, keepdims=True)
    e = mult * np.exp(np.where(mult > 0, s - mx, -np.inf))
    tot = e.sum(-1, keepdims=True)
    vv = np.repeat(np.asarray(v, np.float64), Hq // v.shape[1], axis=1)
    return np.einsum("bhij,bhjd->bhid", e / tot, vv), mx[..., 0] + np.log(tot[..., 0])


def structured(B, Hq, Hkv, N, D, seed):
    """Random q/k with a few strong key directions, so that stripes are a real selection."""
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=seed)
    rng = np.random.default_rng(seed + 1)
    hot = rng.choice(N, size=max(1, N // 40), replace=False)
    k[:, :, hot] += 0.6 * q.mean(axis=(1, 2))[:, None, None, :] * np.sqrt(D)
    return q, k, v


# ------------------------------------------------------------------ tests
CASES = [  # B, Hq, Hkv, N, D, block, step, theta
    (1, 4, 2, 700, 64, 16, 4, 2.2),     # GQA, N not a multiple of G = 64 nor of the block
    (2, 2, 1, 517, 80, 8, 8, 1.9),      # D 80, odd N
    (1, 2, 2, 333, 128, 16, 2, 2.1),    # D 128
    (1, 1, 1, 300, 64, 128, 16, 12.0),  # official defaults, N < G: all dense
]


@pytest.mark.parametrize("official", [True, False])
@pytest.mark.parametrize("B, Hq, Hkv, N, D, block, step, theta", CASES)
def test_anchors_stripes_and_output_follow_the_official_steps(B, Hq, Hkv, N, D, block, step, theta, official):
    q, k, v = structured(B, Hq, Hkv, N, D, seed=N)
    scale = 1 / np.sqrt(D)
    G = block * step
    m = spattn.methods.get("anchor_attention", block_size=block, step=step, theta=theta,
                           official_candidates=official)
    mask = m.estimate(q, k, causal=True)
    info = m.last_info
    np.testing.assert_allclose(info["anchors"], official_anchors(q, k, scale, G), rtol=1e-5, atol=1e-5)
    ref = official_stripes(q, k, info["anchors"], scale, block, step, theta, official)
    assert_stripes_match(info["stripes"], info["counts"], ref)
    if N > 2 * G:  # a real selection: neither nothing nor everything
        frac = info["counts"][..., 2:].sum() / sum(c.size for (_, _, g), (_, c, _) in ref.items() if g >= 2)
        assert 0.02 < frac < 0.98, frac
    # the mask is the attended set: init keys, stripes, own big block (causal in the kernel)
    assert mask.group_size == min(G, N) and mask.indices.shape[2] == -(-N // G)
    for g in range(mask.indices.shape[2]):
        row = mask.indices[0, 0, g]
        want = set(range(min(G, N))) | set(range(g * G, min(N, (g + 1) * G)))
        want |= set(info["stripes"][0, 0, g, : info["counts"][0, 0, g]].tolist())
        assert row[row >= 0].tolist() == sorted(want)
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref_out, ref_lse = multiset_attention(q, k, v, scale, G, info["stripes"], info["counts"])
    np.testing.assert_allclose(out, ref_out, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_official_quirks_double_counting_and_the_gap():
    """official_candidates: stripes below G are counted twice and keys [g G - b, g G) are never
    attended for g >= 2; the older range [G, g G) has neither."""
    B, Hq, N, D, block, step = 1, 2, 900, 64, 16, 4
    G = block * step
    q, k, v = structured(B, Hq, Hq, N, D, seed=5)
    m = spattn.methods.get("anchor_attention", block_size=block, step=step, theta=2.2)
    mask = m.estimate(q, k, causal=True)
    st, cnt = m.last_info["stripes"], m.last_info["counts"]
    rep = m.repeated_keys()
    assert rep is not None and (rep.indices >= 0).sum() > 0
    for g in range(2, mask.indices.shape[2]):
        gap = np.arange(g * G - block, g * G)
        assert not np.isin(gap, mask.indices[0, 0, g]).any()
        s = st[0, 0, g, : cnt[0, 0, g]]
        assert s.min() >= block and s.max() < g * G - block
    out = m(q, k, v, causal=True)
    once = spattn.token_sparse_attention(q, k, v, mask, causal=True)
    assert np.abs(out - once).max() > 1e-4  # the double-counted stripes change the output
    older = spattn.methods.get("anchor_attention", block_size=block, step=step, theta=2.2, official_candidates=False)
    mask2 = older.estimate(q, k, causal=True)
    assert older.repeated_keys() is None
    for g in range(1, mask2.indices.shape[2]):
        s = older.last_info["stripes"][0, 0, g, : older.last_info["counts"][0, 0, g]]
        assert s.size == 0 or (s.min() >= G and s.max() < g * G)
    np.testing.assert_array_equal(older(q, k, v, causal=True),
                                  spattn.token_sparse_attention(q, k, v, mask2, causal=True))


@pytest.mark.parametrize("case", ["gqa_d64", "mha_d80"])
def test_stripes_equal_the_official_torch_get_mask_block(case):
    """get_mask_block (official torch reference) on CPU, fed the official step-1 anchors."""
    d = np.load(FIXTURE)
    q, k = d[f"{case}/q"].astype(np.float32), d[f"{case}/k"].astype(np.float32)
    block, step, theta, scale = d[f"{case}/meta"]
    block, step = int(block), int(step)
    m = spattn.methods.get("anchor_attention", block_size=block, step=step, theta=float(theta))
    m.estimate(q, k, causal=True, scale=float(scale))
    info = m.last_info
    np.testing.assert_allclose(info["anchors"], d[f"{case}/anchors"], rtol=1e-5, atol=1e-5)
    coords, counts = d[f"{case}/coords"], d[f"{case}/counts"]
    assert info["counts"].shape == counts.shape
    ref = official_stripes(q, k, info["anchors"], float(scale), block, step, float(theta))
    for (b, h, g), (_, cand, margin) in ref.items():
        want = coords[b, h, g, : counts[b, h, g]]
        got = info["stripes"][b, h, g, : info["counts"][b, h, g]]
        diff = np.setxor1d(got, want)
        assert np.all(np.abs(margin[np.searchsorted(cand, diff)]) < MARGIN), (b, h, g, diff)
    assert np.array_equal(info["counts"], counts) or np.abs(info["counts"] - counts).max() <= 1


def test_defaults_and_bad_input():
    m = spattn.methods.get("anchor_attention")
    assert m.params == {"block_size": 128, "step": 16, "theta": 12.0, "official_candidates": True}
    assert spattn.methods.get("anchorattn").name == "anchor_attention"
    q, k, v = make_qkv(1, 2, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, k, causal=False)
    qc, kc, _ = make_qkv(1, 2, 1, 16, 64, 64)
    with pytest.raises(ValueError, match=r"Nq=16, Nk=64"):
        m.estimate(qc, kc, causal=True)
    with pytest.raises(ValueError, match=r"Nq=1, Nk=64"):
        m(qc[:, :, :1], kc, kc, causal=True)
    for bad, msg in [(dict(block_size=0), "block_size must be >= 1"), (dict(step=0), "step must be >= 1"),
                     (dict(theta=float("nan")), "theta must be finite"),
                     (dict(block_size=2**20, step=2**12), r"block_size \* step")]:
        with pytest.raises(ValueError, match=msg):
            spattn.methods.get("anchor_attention", **bad)
    with pytest.raises(TypeError, match="official_candidates"):
        spattn.methods.get("anchor_attention", official_candidates=1)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        m.estimate(make_qkv(1, 3, 2, 8, 8, 64)[0], make_qkv(1, 3, 2, 8, 8, 64)[1], causal=True)


def test_up_to_two_big_blocks_with_step_2_is_dense():
    """With step = 2 the candidates of big block 1, [b, G - b), are empty: every query then
    attends its whole causal prefix (R(i) covers it)."""
    m = spattn.methods.get("anchor_attention", block_size=4, step=2)
    for N in (1, 7, 9, 16):
        q, k, v = make_qkv(1, 2, 1, N, N, 64, seed=N)
        out, lse = m(q, k, v, causal=True, return_lse=True)
        ref, ref_lse = spattn.attention(q, k, v, causal=True, return_lse=True)
        np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)
