"""HiP against a float64 reference written from the authors' v1.0 code (DeepAuto-AI/hip-attention,
src/hip_attn/v1_0), not from spattn's own reading:

- ``hip_attention``: dense prefix ``int((log2(Nk / K / 2) K + K) 3) - Nk + Nq`` queries for causal
  prompts; ``block_size_q = min(bq, next_pow2(T_DST))``, ``block_size_k = min(bk, next_pow2(T_SRC))``;
  ``w_start = ceil(K scale_up)``, ``n_patches = ceil(K / scale_up)``;
- ``hip_attention_mask``: ``estimator_lower_resolution`` (halves K, w_start, n_patches when
  ``cdiv(K, bk) > 64``), ``w_curr = round(w_start / scale_up)``, ``tsrcs`` = block start +
  ``max(bq, bk)`` + T_SRC - T_DST clamped (T_SRC when not causal), initial nodes ``j / ks``;
- ``_masking_iteration_compute``: ``w_new = min(round(w_old scale_up), t_src)``, children
  ``[int(j b_new / b_old), int((j + 1) b_new / b_old))``, ``k_new = max(N_PATCHES,
  int(min(MASK_K / cdiv(t_src, bk), 1) cdiv(w_new, bk)))`` capped at ``cdiv(t_src, bk)``;
- ``_masking_iteration_topk``: representative ``int(loc t_src)`` clamped and rounded down to bk
  ("first" sampling), rows ``idx_bdst bq + arange(BLOCK_SIZE_Q_PADDED) reduce_stride``, max of q.k over
  rows and the bk keys, pairs ``tdst + T_SRC - T_DST < tsrc + max(0, window - bq - bk)`` ignored, the
  k-th value threshold and cumsum slots;
- ``safe_indices`` ("biased" collisions), ``calc_prob_return_context``: sink ``ceil(32 / bk) bk``
  keys, selected blocks, window ``[e - window, e)`` with e = block start + bq + T_SRC - T_DST.

Locations in exact integer arithmetic and the tie rule of the last top-k slot as the docstring of
``spattn.methods.hip.Hip`` says (the official float locations and GPU store order are not
reproducible on CPU).
"""

import math

import numpy as np
import pytest

import spattn
from conftest import assert_matches, make_qkv, ref_attention


def next_pow2(n):
    return 1 << (max(1, n) - 1).bit_length()


def cdiv(a, b):
    return -(-a // b)


def official_setup(Nq, Nk, causal, p):
    K, s = p["mask_k"], p["scale_up"]
    dq = 0
    if causal and Nq > 32:  # hip_attention: is_prompt
        exp_q = p["dense_queries_exp"]
        if exp_q is None:
            exp_q = int(((math.log2(Nk / K / 2)) * K + K) * 3)
        dense = int(max(0, exp_q - Nk + Nq))
        if dense > 0 and exp_q > 0:
            dq = min(dense, Nq)
    bq = min(p["block_size_q"], next_pow2(Nq - dq if dq < Nq else Nq))  # all dense: no sparse call
    bk = min(p["block_size_k"], next_pow2(Nk))
    w_start, n_patches = math.ceil(K * s), math.ceil(K / s)
    lr = 1 if cdiv(K, bk) <= 64 else p["estimator_lower_resolution"]
    if lr > 1:
        K, w_start, n_patches = K // lr, w_start // lr, n_patches // lr
    w_curr = round(w_start / s)
    assert w_curr <= K
    window = p["sliding_window_size"]
    num_sink = cdiv(32, bk) if p["num_sink"] is None else p["num_sink"]
    return dict(dq=min(Nq, cdiv(dq, bq) * bq), bq=bq, bk=bk, lr=lr, s=s, w_curr=w_curr, MASK_K=cdiv(K, bk),
                N_PATCHES=cdiv(n_patches, bk), stride=p["reduce_stride"], window=window,
                shift=max(0, window - bq - bk) if window > 0 else 0, sink=num_sink * bk if window > 0 else 0)


def official_topk(live, score, k):
    """k-th largest rank (live first, then score) as threshold; the first k - 1 children at or above
    it in position order (cumsum slots), the last slot to the best of the others."""
    rank = list(zip(live, score))
    thr = sorted(rank, reverse=True)[k - 1]
    above = [i for i, r in enumerate(rank) if r >= thr]
    rest = above[k - 1:]
    best = max(rest, key=lambda i: (rank[i], -i))
    return above[:k - 1] + [best]


def search_block(q_rows, rows, k_head, tsrc, Nk, off, causal, c):
    """_masking_iteration_compute for one (head, query block): final nodes at resolution cdiv(tsrc, bk)."""
    bk, s = c["bk"], c["s"]
    w_old = min(tsrc, c["w_curr"])
    nodes = list(range(cdiv(w_old, bk)))
    while True:
        w_new = min(w_old * s, tsrc)
        if w_new == w_old:
            return nodes
        b_old, b_new = cdiv(w_old, bk), cdiv(w_new, bk)
        pixels = [x for j in nodes for x in range(j * b_new // b_old, (j + 1) * b_new // b_old)]
        bt = cdiv(tsrc, bk)
        k_new = b_new if c["MASK_K"] >= bt else c["MASK_K"] * b_new // bt
        k_new = min(bt, max(c["N_PATCHES"], k_new))
        if k_new < len(pixels):
            t = np.clip(np.array(pixels) * tsrc // b_new, 0, tsrc - 1) // bk * bk
            keys = t[:, None] + np.arange(bk)[None, :]  # (n, bk)
            valid = keys < Nk
            dots = np.einsum("rd,nkd->rnk", q_rows, k_head[np.minimum(keys, Nk - 1)])
            ok = valid[None] & np.ones((len(rows), 1, 1), bool)
            ign = (np.array(rows)[:, None, None] + off < keys[None] + c["shift"]) if causal else np.zeros_like(ok)
            live_pairs = ok & ~ign
            live = live_pairs.any(axis=(0, 2))
            score = np.where(live, np.where(live_pairs, dots, -np.inf).max(axis=(0, 2)),
                             np.where(ok, dots, -np.inf).max(axis=(0, 2)))
            nodes = [pixels[i] for i in official_topk(live.tolist(), score.tolist(), k_new)]
        else:
            nodes = pixels
        w_old = w_new


def official_key_sets(q, k, causal, p):
    """Per (b, h, group) the sorted attended keys, and ks per group (-1: dense prefix)."""
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    c = official_setup(Nq, Nk, causal, p)
    bq, bk, off = c["bq"], c["bk"], Nk - Nq
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    G = cdiv(Nq, bq)
    P = next_pow2(max(cdiv(bq, c["stride"]), 16))  # BLOCK_SIZE_Q_PADDED
    sets, ks = {}, np.full((B, Hq, G), -1)
    for b in range(B):
        for h in range(Hq):
            kh = k64[b, h // (Hq // Hkv)]
            for g in range(G):
                b0 = g * bq
                end = b0 + bq + off
                if b0 < c["dq"]:
                    sets[b, h, g] = list(range(min(end, Nk)))
                    continue
                tsrc = min(b0 + max(bq, bk) + off, Nk) if causal else Nk
                rows = [b0 + r * c["stride"] for r in range(P)
                        if (P == bq or r * c["stride"] < bq) and b0 + r * c["stride"] < Nq]
                nodes = search_block(q64[b, h, rows], rows, kh, tsrc, Nk, off, causal, c)
                ks[b, h, g] = len(nodes) * c["lr"]
                bt, last, keys = cdiv(tsrc, bk), -1, set()
                for j in np.repeat(nodes, c["lr"]):
                    col = max(last + 1, cdiv(int(j) * tsrc, bk * bt))
                    last = col
                    keys |= {t for t in range(col * bk, col * bk + bk) if c["sink"] <= t < Nk}
                keys |= set(range(min(c["sink"], Nk)))
                if c["window"] > 0:
                    keys |= set(range(max(0, end - c["window"]), min(end, Nk)))
                sets[b, h, g] = sorted(keys)
    return sets, ks, c


def allowed_of(sets, B, Hq, Nq, Nk, bq):
    a = np.zeros((B, Hq, Nq, Nk), bool)
    for (b, h, g), keys in sets.items():
        a[b, h, g * bq:(g + 1) * bq, keys] = True
    return a


CASES = [
    # B, Hq, Hkv, Nq, Nk, D, causal, params
    (1, 4, 2, 300, 300, 64, True, dict(mask_k=64, dense_queries_exp=0)),
    (1, 2, 1, 150, 333, 80, True, dict(mask_k=48, block_size_q=16, block_size_k=4, reduce_stride=1,
                                       dense_queries_exp=0)),
    (1, 2, 2, 257, 257, 128, False, dict(mask_k=40, block_size_k=1, sliding_window_size=16)),
    (1, 2, 1, 600, 600, 64, True, dict(mask_k=256, dense_queries_exp=0)),  # lower resolution r = 2
    (2, 2, 1, 301, 301, 64, True, dict(mask_k=32, scale_up=3, dense_queries_exp=100, num_sink=3)),
    (1, 4, 2, 1, 299, 64, True, dict(mask_k=32)),  # decode: bq = 1, the prompt search
]


@pytest.mark.parametrize("B,Hq,Hkv,Nq,Nk,D,causal,params", CASES)
def test_mask_and_output_match_the_official_tree_search(B, Hq, Hkv, Nq, Nk, D, causal, params):
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=Nq + D)
    m = spattn.methods.get("hip", **params)
    mask = m.estimate(q, k, causal=causal)
    sets, ks, c = official_key_sets(q, k, causal, m.params)
    assert mask.group_size == c["bq"] and m.last_info["dense_queries"] == c["dq"]
    np.testing.assert_array_equal(m.last_info["ks"], ks)
    for (b, h, g), keys in sets.items():
        row = mask.indices[b, h, g]
        assert row[row >= 0].tolist() == keys, (b, h, g)
    assert ((ks > 0) | (ks == -1)).all()
    out, lse = m(q, k, v, causal=causal, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, causal=causal, allowed=allowed_of(sets, B, Hq, Nq, Nk, c["bq"]))
    assert_matches(out, lse, ref_out, ref_lse)


def test_search_prunes_and_lower_resolution_doubles_leaves():
    q, k, _ = make_qkv(1, 1, 1, 600, 600, 64, seed=3)
    m = spattn.methods.get("hip", mask_k=256, dense_queries_exp=0)
    mask = m.estimate(q, k, causal=True)
    ks = m.last_info["ks"][0, 0]
    # r = 2: 64 leaves of 2 keys searched (MASK_K = 128 / 2), each repeated twice: 128 leaves = 256 keys
    assert ks[-1] == 128
    last = mask.indices[0, 0, -1]
    assert (last >= 0).sum() < 600 and (last >= 0).sum() <= 256 + 32 + 128


def test_defaults_are_the_official_ones_and_small_prompts_run_dense():
    m = spattn.methods.get("hip")
    assert {k: m.params[k] for k in ("mask_k", "block_size_q", "block_size_k", "scale_up", "reduce_stride",
                                     "sliding_window_size", "num_sink", "dense_queries_exp",
                                     "estimator_lower_resolution")} == dict(
        mask_k=512, block_size_q=32, block_size_k=2, scale_up=2, reduce_stride=2, sliding_window_size=128,
        num_sink=None, dense_queries_exp=None, estimator_lower_resolution=2)
    q, k, _ = make_qkv(1, 2, 1, 700, 700, 64, seed=4)
    mask = m.estimate(q, k, causal=True)
    # int((log2(700/1024) 512 + 512) 3) = 693 dense queries; the 7 others: bq = min(32, next_pow2(7)) = 8,
    # so the dense prefix is rounded up to 696
    assert m.last_info["dense_queries"] == 696 and mask.group_size == 8
    assert (m.last_info["ks"][..., :87] == -1).all() and (m.last_info["ks"][..., 87] > 0).all()
    np.testing.assert_array_equal(mask.indices[0, 0, 86, :696], np.arange(696))
    q, k, _ = make_qkv(1, 1, 1, 1500, 1500, 64, seed=5)
    mask = m.estimate(q, k, causal=True)  # int((log2(1500/1024) 512 + 512) 3) = 2382: every query dense
    assert m.last_info["dense_queries"] == 1500 and mask.group_size == 32 and mask.density(causal=True).min() == 1


def test_longer_queries_are_refused_and_bad_params_named():
    q, k, _ = make_qkv(1, 2, 1, 60, 50, 64)
    with pytest.raises(ValueError, match=r"Nq=60, Nk=50"):
        spattn.methods.get("hip").estimate(q, k, causal=False)
    for field, bad in (("mask_k", 0), ("scale_up", 1), ("block_size_k", 0), ("num_sink", -1),
                       ("sliding_window_size", -2)):
        with pytest.raises(ValueError, match=field):
            spattn.methods.get("hip", **{field: bad})
    assert spattn.methods.get("hip_attention").name == "hip"


@pytest.mark.parametrize("Nq, Nk", [(300, 300), (200, 333), (64, 64)])
def test_call_runs_the_dense_prefix_with_the_dense_kernel(Nq, Nk):
    """The call (dense prefix by the dense kernel, no prefix rows in its index table) equals the
    token-sparse kernel over estimate's whole mask, lse included."""
    q, k, v = make_qkv(1, 4, 2, Nq, Nk, 64, seed=5)
    m = spattn.methods.get("hip", mask_k=32, block_size_q=16, sliding_window_size=16, dense_queries_exp=Nk - Nq + 100)
    mask = m.estimate(q, k, causal=True)
    assert m.last_info["dense_queries"] > 0
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = spattn.token_sparse_attention(q, k, v, mask, causal=True, return_lse=True)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=1e-5)
    idx = spattn._core.estimate_hip(q, k, True, m.cparams, False)[0]
    assert idx.shape[-1] < mask.indices.shape[-1] or Nq == m.last_info["dense_queries"]
