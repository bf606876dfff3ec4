"""DHSA against references written from the official legacy code (xiongsiheng/DHSA @ cc8e9c7,
legacy/utils/helper.py), not from spattn's own reading:

- ``dhsa_sdpa``: the last ``instruction_tokens`` queries split off and run dense; the rest padded
  to query blocks; ``topk_tokens = min(budget, N)``; after ``_obtain_dhsa_mask`` the first
  ``global_tokens`` slots replaced by ``min(t, q_upper - 1)``; attention over the gathered slot
  list (repeated entries count repeatedly) with token-level causality;
- ``_obtain_dhsa_mask``: head means in float; block repr = padded mean (times sqrt(real length)
  for avgpool_norm); chunk repr = prefix-sum difference / clamp(len, 1) (times sqrt of it);
  scores r_q . r_c; upsampled by ``searchsorted(boundaries, j, right=True) - 1``; allowed keys
  j < (qb + 1) B; last min(local, T, allowed) allowed keys, top-k of the rest, padding N - 1;
  sorted;
- the official functions themselves on CPU torch (fixture data/dhsa_official.npz, made by
  data/make_dhsa_fixture.py).

The reference breaks score ties towards the lower position (torch.topk's choice among the equal
scores of one chunk is arbitrary; spattn's rule). GQA: the official code runs after repeat_kv,
so its head mean of k is the mean over the kv heads; one mask for every head.
"""

from pathlib import Path

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv

FIXTURE = Path(__file__).parent / "data" / "dhsa_official.npz"


# ------------------------------------------------------------------ official steps, float64 numpy
def fixed_boundaries(N, chunk):
    return np.array(list(range(0, N, chunk)) + [N])


def official_slot_lists(q, k, bnd, bs, budget, local, glob, instr, norm):
    """Per (batch, sparse block): the official slot list (with repeats) and the chunk scores.
    `bnd` (B, C + 1); instr = 0 means no instruction split. Returns (lists, scores, q_len)."""
    B, _, N, D = q.shape
    q_len = max(0, N - instr)
    nqb = -(-q_len // bs)
    T = min(budget, N)
    qh = np.asarray(q, np.float64).mean(1)
    kh = np.asarray(k, np.float64).mean(1)
    lists, scores = {}, {}
    for b in range(B):
        starts, ends = bnd[b][:-1], bnd[b][1:]
        rq = np.zeros((nqb, D))
        for qb in range(nqb):
            rows = qh[b, qb * bs: min(q_len, (qb + 1) * bs)]
            rq[qb] = rows.sum(0) / bs * (np.sqrt(len(rows)) if norm else 1.0)
        length = np.maximum(ends - starts, 1).astype(np.float64)
        rc = np.stack([kh[b, s:e].sum(0) for s, e in zip(starts, ends)]) / length[:, None]
        if norm:
            rc *= np.sqrt(length)[:, None]
        S = rq @ rc.T
        chunk_of = np.searchsorted(bnd[b], np.arange(N), side="right") - 1
        for qb in range(nqb):
            tok = S[qb, chunk_of]
            n_allowed = min(N, (qb + 1) * bs)
            recent = min(local, T, n_allowed)
            cand = np.arange(n_allowed - recent)
            k_sel = min(T - recent, cand.size)
            sel = cand[np.argsort(-tok[cand], kind="stable")][:max(k_sel, 0)]
            pads = [N - 1] * max(0, T - recent - k_sel)
            lst = sorted(sel.tolist() + list(range(n_allowed - recent, n_allowed)) + pads)
            if glob > 0:
                q_upper = min(qb * bs + bs, N)
                g = [min(t, max(q_upper - 1, 0)) for t in range(glob)]
                lst = g + lst[glob:] if glob < len(lst) else g[: len(lst)]
            lists[b, qb] = lst
            scores[b, qb] = (S[qb], chunk_of)
    return lists, scores, q_len


def assert_lists_match(blocks, lists, scores, tol=1e-5):
    """spattn's sets equal the reference sets; where they differ, the chunks involved must tie
    (within tol) with each other at the budget cut."""
    for (b, qb), lst in lists.items():
        got = blocks[b, qb][blocks[b, qb] >= 0]
        want = np.unique(lst)
        assert np.all(np.diff(got) > 0)
        if got.size == want.size and np.array_equal(got, want):
            continue
        S, chunk_of = scores[b, qb]
        diff = np.setxor1d(got, want)
        s = S[chunk_of[diff]]
        assert got.size == want.size and s.max() - s.min() <= tol * (1 + np.abs(s).max()), (b, qb, diff)


def multiset_reference(q, k, v, lists, q_len, bs, scale):
    """Official output: sparse queries over their block's slot list (repeats counted), causal;
    instruction queries dense."""
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    kk = np.repeat(np.asarray(k, np.float64), G, 1)
    vv = np.repeat(np.asarray(v, np.float64), G, 1)
    qq = np.asarray(q, np.float64)
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    lse = np.zeros(q.shape[:3])
    for b in range(B):
        for h in range(Hq):
            for i in range(N):
                keys = np.array(lists[b, i // bs]) if i < q_len else np.arange(N)
                keys = keys[keys <= i]
                s = kk[b, h, keys] @ qq[b, h, i] * scale
                m = s.max()
                e = np.exp(s - m)
                out[b, h, i] = e @ vv[b, h, keys] / e.sum()
                lse[b, h, i] = m + np.log(e.sum())
    return out, lse


# ------------------------------------------------------------------ tests
CASES = [  # B, Hq, Hkv, N, D, block, chunk, budget, local, global, instruction, norm
    (1, 4, 2, 300, 64, 32, 8, 96, 16, 16, 20, True),     # GQA, N and N - instruction off the block grid
    (2, 2, 1, 517, 80, 64, 32, 160, 40, 64, 64, True),   # D 80, partial last chunk
    (1, 2, 2, 333, 128, 16, 12, 48, 8, 0, 0, False),     # D 128, avgpool, no instruction, no globals
    (1, 1, 1, 190, 64, 128, 32, 2048, 128, 128, 64, True),  # official defaults but block (budget > N)
]


@pytest.mark.parametrize("B, Hq, Hkv, N, D, bs, chunk, budget, local, glob, instr, norm", CASES)
def test_lists_and_outputs_follow_the_official_steps(B, Hq, Hkv, N, D, bs, chunk, budget, local, glob, instr, norm):
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    m = spattn.methods.get("dhsa", block_size=bs, chunk_size=chunk, token_budget=budget, local_tokens=local,
                           global_tokens=glob, instruction_tokens=instr, length_norm=norm)
    mask = m.estimate(q, k, causal=True)
    bnd = np.tile(fixed_boundaries(N, chunk), (B, 1))
    lists, scores, q_len = official_slot_lists(q, k, bnd, bs, budget, local, glob, instr, norm)
    assert m.last_info["q_len"] == q_len
    assert_lists_match(m.last_info["blocks"], lists, scores)
    # one mask for every head; groups of block_size; instruction groups see their whole prefix
    assert mask.group_size == bs and mask.indices.shape[:3] == (B, Hq, -(-N // bs))
    assert (mask.indices == mask.indices[:, :1]).all()
    for g in range(mask.indices.shape[2]):
        row = mask.indices[0, 0, g]
        row = row[row >= 0]
        end = min(N, (g + 1) * bs)
        if end <= q_len:  # sparse rows only
            assert np.array_equal(row, np.unique(lists[0, g]))
        else:
            assert np.array_equal(row[row < end], np.arange(end))
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = multiset_reference(q, k, v, lists, q_len, bs, 1 / np.sqrt(D))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_given_boundaries_and_empty_chunks():
    B, Hq, Hkv, N, D = 2, 2, 1, 203, 64
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=7)
    rng = np.random.default_rng(7)
    bnd = np.stack([np.concatenate([[0], np.sort(rng.choice(np.arange(1, N), 15, replace=False)), [N]])
                    for _ in range(B)])
    bnd[:, 5] = bnd[:, 4]  # an empty chunk
    m = spattn.methods.get("dhsa", block_size=32, token_budget=64, local_tokens=16, global_tokens=8,
                           instruction_tokens=10, boundaries=bnd)
    m.estimate(q, k, causal=True)
    lists, scores, q_len = official_slot_lists(q, k, bnd, 32, 64, 16, 8, 10, True)
    assert_lists_match(m.last_info["blocks"], lists, scores)
    out = m(q, k, v, causal=True)
    ref, _ = multiset_reference(q, k, v, lists, q_len, 32, 1 / np.sqrt(D))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    one = spattn.methods.get("dhsa", block_size=32, token_budget=64, local_tokens=16, global_tokens=8,
                             instruction_tokens=10, boundaries=bnd[0])  # (C + 1,): the same for every batch
    one.estimate(q, k, causal=True)
    lists1, scores1, _ = official_slot_lists(q, k, np.tile(bnd[0], (B, 1)), 32, 64, 16, 8, 10, True)
    assert_lists_match(one.last_info["blocks"], lists1, scores1)


@pytest.mark.parametrize("case", ["fixed_gqa", "fixed_avgpool_d128", "predicted"])
def test_equals_the_official_dhsa_sdpa(case):
    """The official dhsa_sdpa on CPU: identical key sets and outputs where the budget cut falls on
    chunk boundaries; with predicted (unequal) chunks the same number of keys from every chunk."""
    d = np.load(FIXTURE)
    q, k = d[f"{case}/q"].astype(np.float32), d[f"{case}/k"].astype(np.float32)
    bnd, official = d[f"{case}/boundaries"], d[f"{case}/indices"]
    bs, T, local, glob, instr, norm, chunk = (int(x) for x in d[f"{case}/meta"])
    m = spattn.methods.get("dhsa", block_size=bs, token_budget=T, local_tokens=local, global_tokens=glob,
                           instruction_tokens=instr, length_norm=bool(norm), boundaries=bnd)
    m.estimate(q, k, causal=True)
    blocks = m.last_info["blocks"]
    assert blocks.shape[:2] == official.shape[:2]
    for b in range(official.shape[0]):
        for qb in range(official.shape[1]):
            got = blocks[b, qb][blocks[b, qb] >= 0]
            want = np.unique(official[b, qb])
            if chunk:
                np.testing.assert_array_equal(got, want)
            else:
                chunk_of = np.searchsorted(bnd[b], np.arange(q.shape[2]), side="right") - 1
                np.testing.assert_array_equal(np.bincount(chunk_of[got], minlength=bnd.shape[1]),
                                              np.bincount(chunk_of[want], minlength=bnd.shape[1]))
    if chunk:
        v = d[f"{case}/v"].astype(np.float32)
        np.testing.assert_allclose(m(q, k, v, causal=True), d[f"{case}/out"], atol=1e-4, rtol=1e-4)


def test_repeated_slots_count_once_a_documented_deviation():
    """block_size < global_tokens: the official slot list of block 0 repeats key block_size - 1
    (global keys capped at q_upper - 1), which the official gather weighs global_tokens -
    block_size + 1 times for query block_size - 1; spattn counts it once. Every other row agrees."""
    B, Hq, N, D, bs, glob = 1, 2, 96, 64, 16, 32
    q, k, v = make_qkv(B, Hq, Hq, N, N, D, seed=3)
    m = spattn.methods.get("dhsa", block_size=bs, chunk_size=8, token_budget=48, local_tokens=8,
                           global_tokens=glob, instruction_tokens=0)
    out = m(q, k, v, causal=True)
    lists, _, q_len = official_slot_lists(q, k, np.tile(fixed_boundaries(N, 8), (B, 1)), bs, 48, 8, glob, 0, True)
    assert lists[0, 0].count(bs - 1) == glob - bs + 1
    ref, _ = multiset_reference(q, k, v, lists, q_len, bs, 1 / np.sqrt(D))
    rows = np.arange(N) != bs - 1
    np.testing.assert_allclose(out[:, :, rows], ref[:, :, rows], atol=ATOL, rtol=RTOL)
    assert np.abs(out[:, :, bs - 1] - ref[:, :, bs - 1]).max() > 1e-3


def test_all_instruction_queries_is_dense_attention():
    q, k, v = make_qkv(1, 2, 1, 50, 50, 64, seed=1)
    m = spattn.methods.get("dhsa", instruction_tokens=64)
    mask = m.estimate(q, k, causal=True)
    assert m.last_info["q_len"] == 0 and mask.indices.shape == (1, 2, 1, 50)
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = spattn.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_defaults_and_bad_input():
    m = spattn.methods.get("dhsa")
    assert m.params == {"block_size": 128, "chunk_size": 32, "token_budget": 2048, "local_tokens": 128,
                        "global_tokens": 128, "instruction_tokens": 64, "length_norm": True, "boundaries": None}
    q, k, v = make_qkv(1, 2, 1, 40, 40, 64)
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, k, causal=False)
    qc, kc, _ = make_qkv(1, 2, 1, 8, 40, 64)
    with pytest.raises(ValueError, match=r"Nq=8, Nk=40"):
        m.estimate(qc, kc, causal=True)
    with pytest.raises(ValueError, match=r"Nq=1, Nk=40"):
        m(qc[:, :, :1], kc, kc, causal=True)
    for bad, exc, msg in [
        (dict(block_size=0), ValueError, "block_size must be >= 1"),
        (dict(token_budget=0), ValueError, "token_budget must be >= 1"),
        (dict(local_tokens=-1), ValueError, "local_tokens must be >= 0"),
        (dict(length_norm=1), TypeError, "length_norm"),
        (dict(boundaries=[0.0, 40.0]), TypeError, "boundaries must be an integer array"),
        (dict(boundaries=[[[0, 40]]]), ValueError, "boundaries must have shape"),
        (dict(boundaries=[0, 30, 20, 40]), ValueError, "non-decreasing"),
    ]:
        with pytest.raises(exc, match=msg):
            spattn.methods.get("dhsa", **bad)
    for bnd, msg in [([0, 10, 39], "end at N=40"), ([1, 10, 40], "start at 0"),
                     ([[0, 40], [0, 40]], r"boundaries must have shape \(B, C \+ 1\) with B=1")]:
        with pytest.raises(ValueError, match=msg):
            spattn.methods.get("dhsa", boundaries=bnd).estimate(q, k, causal=True)
