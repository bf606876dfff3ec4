"""MInference vertical-slash against numpy transcriptions of the official code (microsoft/MInference,
HEAD fb56c91): the estimate of ``minference_prefill_kernel``'s ``vertical_and_slash_kernel``
(minference/modules/minference_forward.py, with ``sum_all_diagonal_matrix``'s padded strided
diagonal sums written out literally), the index conversion of ``convert_vertical_slash_indexes_kernel``
(csrc/vertical_slash_index.cu) and the key visibility of ``_triton_mixed_sparse_attn_fwd_kernel``
(minference/ops/pit_sparse_flash_attention_v2.py: block tiles causal and < seqlen, columns
unmasked); the method's output equals float64 attention restricted to that mask; the config
loader reads the official ``*_best_pattern.json`` format."""

import json

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention, ref_probs
from spattn.methods.minference_vertical_slash import layer_sizes, load_config


def sum_all_diagonal_matrix(mat):
    """The official strided diagonal sums of (n, m): pad n zero columns each side, read row r
    shifted by r (as_strided with row stride 2n + m + 1), sum the rows, drop entry 0."""
    n, m = mat.shape
    padded = np.concatenate([np.zeros((n, n)), mat, np.zeros((n, n))], axis=1)
    strided = np.stack([padded[r, r:r + n + m] for r in range(n)])
    return strided.sum(axis=0)[1:]


def official_estimate(q, k, vertical_size, slash_size):
    """vertical_and_slash_kernel for one head (q (L, D), k (L, D)): sorted verticals, descending
    offsets. torch.topk ties: the +inf forced entries are all taken (sizes >= forced counts here)."""
    L, D = q.shape
    v_size, s_size = min(L, max(vertical_size, 30)), min(L, max(slash_size, 50))
    last_q = min(64, L)
    qk = (q[-last_q:].astype(np.float64) @ k.T.astype(np.float64)) / np.sqrt(D)
    tri = np.tril(np.ones((last_q, last_q), bool))
    qk[:, -last_q:] = np.where(tri, qk[:, -last_q:], -np.inf)
    qk = np.exp(qk - qk.max(axis=-1, keepdims=True))
    qk /= qk.sum(axis=-1, keepdims=True)
    vertical = qk.sum(axis=0)
    vertical[:30] = np.inf
    v_top = np.argsort(-vertical, kind="stable")[:v_size]
    slash = sum_all_diagonal_matrix(qk)[:L]  # [..., :-last_q + 1]: entry t is offset L - 1 - t
    slash[-100:] = np.inf
    # torch.topk over t, offsets = (L - 1) - indices. Its order among equal scores is unspecified;
    # spattn takes the smaller offsets first (only decides which forced offsets stay when s' < 100).
    by_offset = slash[::-1]
    s_top = np.argsort(-by_offset, kind="stable")[:s_size]
    return np.sort(v_top), np.sort(s_top)[::-1], vertical, by_offset


def official_convert(v, s, L, block=64):
    """convert_vertical_slash_indexes_kernel: per query block (block_offset list, column list)."""
    out = []
    for m in range((L + block - 1) // block):
        end = m * block + block
        offsets, cols = [], []
        vi, si = 0, 0
        v_idx = v[vi] if len(v) else end + block
        vi += 1
        s_idx = s[si]
        si += 1
        while s_idx >= end:
            s_idx = s[si]
            si += 1
        s_idx = max(end - s_idx, block)
        rs, re = s_idx - block, s_idx
        while True:
            if v_idx < re:
                if v_idx < rs:
                    cols.append(v_idx)
                if vi < len(v):
                    v_idx = v[vi]
                    vi += 1
                else:
                    v_idx = end + block
            else:
                if si < len(s):
                    s_idx = max(end - s[si], block)
                    si += 1
                else:
                    offsets += list(range(rs, re, block))
                    break
                if s_idx > re + block:
                    offsets += list(range(rs, re, block))
                    rs, re = s_idx - block, s_idx
                elif s_idx > re:
                    re += block
        out.append((offsets, cols))
    return out


def official_allowed(v, s, L, block=64):
    """The Triton kernel's visibility (L, L): tiles [off, off + block) causal and < L, columns."""
    allowed = np.zeros((L, L), bool)
    i = np.arange(L)
    for m, (offsets, cols) in enumerate(official_convert(list(v), list(s), L, block)):
        rows = slice(m * block, min(L, m * block + block))
        for off in offsets:
            j = np.arange(off, min(off + block, L))
            allowed[rows, j] |= j[None, :] <= i[rows, None]
        for c in cols:
            allowed[rows, c] = True
    return allowed


def rows_of(a):
    """Per-head lists of a (B, H, n) -1 padded index array."""
    return [[list(r[r >= 0]) for r in b] for b in a]


@pytest.mark.parametrize("B, Hq, Hkv, L, D, v, s", [
    (1, 4, 2, 700, 64, 40, 60),        # L not a multiple of 64, GQA
    (1, 2, 1, 257, 80, 1000, 6096),     # official defaults capped at L
    (2, 2, 2, 64 * 6, 128, 30, 100),    # L a multiple of 64
    (1, 2, 2, 37, 64, 5, 5),            # L < 64: every query scores, forced entries cover everything
])
def test_estimate_equals_official_kernel(B, Hq, Hkv, L, D, v, s):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L + D)
    mask = spattn.methods.get("minference_vertical_slash", vertical_size=v, slash_size=s).estimate(w.q, w.k, causal=True)
    G = Hq // Hkv
    for b in range(B):
        for h in range(Hq):
            ev, es, vert, slash = official_estimate(w.q[b, h], w.k[b, h // G], v, s)
            got_v = mask.vertical[b, h][mask.vertical[b, h] >= 0]
            got_s = mask.slash[b, h][mask.slash[b, h] >= 0]
            # float32 vs float64 sums may swap entries tied to ~1e-7 at the cut: allow only those
            for got, exp, score in ((got_v, ev, vert), (got_s, es, slash)):
                assert len(got) == len(exp)
                diff = set(got.tolist()) ^ set(exp.tolist())
                if diff:
                    cut = np.sort(score)[::-1][len(exp) - 1]
                    assert all(abs(score[i] - cut) <= 1e-6 * max(1.0, abs(cut)) for i in diff), diff
            assert np.all(np.diff(got_v) > 0) and np.all(np.diff(got_s) < 0)


def test_forced_lines_are_kept():
    q, k, _ = make_qkv(1, 2, 1, 500, 500, 64, seed=3)
    mask = spattn.methods.get("minference_vertical_slash", vertical_size=30, slash_size=100).estimate(q, k, causal=True)
    for h in range(2):
        assert set(range(30)) <= set(mask.vertical[0, h].tolist())
        assert set(range(100)) == set(mask.slash[0, h].tolist())  # exactly the forced offsets


def test_per_head_sizes_pad_with_minus_one():
    q, k, _ = make_qkv(1, 3, 1, 400, 400, 64, seed=4)
    mask = spattn.methods.get("minference_vertical_slash", vertical_size=[30, 50, 70],
                              slash_size=[50, 60, 500]).estimate(q, k, causal=True)
    assert mask.vertical.shape == (1, 3, 70) and mask.slash.shape == (1, 3, 400)
    assert [(r >= 0).sum() for r in mask.vertical[0]] == [30, 50, 70]
    assert [(r >= 0).sum() for r in mask.slash[0]] == [50, 60, 400]  # 500 capped at L
    with pytest.raises(ValueError, match="vertical_size must hold 1 or Hq=3"):
        spattn.methods.get("minference_vertical_slash", vertical_size=[1, 2]).estimate(q, k, causal=True)


@pytest.mark.parametrize("B, Hq, Hkv, L, D", [(1, 4, 2, 700, 64), (1, 2, 1, 129, 80), (2, 2, 2, 300, 128),
                                               (1, 2, 1, 1, 64), (1, 2, 2, 64, 64)])
def test_output_equals_attention_over_the_official_mask(B, Hq, Hkv, L, D):
    q, k, v = make_qkv(B, Hq, Hkv, L, L, D, seed=L)
    m = spattn.methods.get("minference_vertical_slash", vertical_size=[35, 60][: 1], slash_size=70)
    mask = m.estimate(q, k, causal=True)
    allowed = np.zeros((B, Hq, L, L), bool)
    for b in range(B):
        for h in range(Hq):
            allowed[b, h] = official_allowed(rows_of(mask.vertical)[b][h], rows_of(mask.slash)[b][h], L)
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, causal=True, allowed=allowed)
    np.testing.assert_allclose(out, ref_out, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)
    # the mask helpers describe the same keys
    np.testing.assert_array_equal(mask.to_dense(), allowed)
    causal_pairs = L * (L + 1) / 2
    np.testing.assert_allclose(mask.density(), allowed.sum(axis=(2, 3)) / causal_pairs)
    p, _ = ref_probs(q, k, causal=True)
    rec = np.where(allowed, p, 0).sum(axis=-1).mean(axis=-1)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, mask, causal=True), rec, atol=1e-5)


def test_hand_built_pattern_runs_token_exact():
    """A user-built VerticalSlashMask with far offsets and verticals past the last range (dropped,
    as in the official conversion) equals attention over the official mask."""
    L = 333
    q, k, v = make_qkv(1, 1, 1, L, L, 64, seed=9)
    vert = np.array([[[0, 5, 70, 150, 300, 332]]])
    slash = np.array([[[250, 129, 64, 3, 0, -1]]])
    mask = spattn.VerticalSlashMask(vert, slash, L)
    allowed = official_allowed([0, 5, 70, 150, 300, 332], [250, 129, 64, 3, 0], L)
    out = spattn.vertical_slash_attention(q, k, v, mask)
    ref, _ = ref_attention(q, k, v, causal=True, allowed=allowed[None, None])
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    tok = spattn.token_sparse_attention(q, k, v, mask.to_token_indices(), causal=True)
    np.testing.assert_array_equal(tok.shape, out.shape)
    np.testing.assert_allclose(tok, out, atol=1e-6)


@pytest.mark.parametrize("vert, slash, match", [
    ([[[5, 4]]], [[[0]]], "strictly increasing"),
    ([[[1, 2]]], [[[0, 3]]], "strictly decreasing"),
    ([[[1, -1, 2]]], [[[0]]], "padding must end"),
    ([[[1, 500]]], [[[0]]], r"\[0, 100\)"),
])
def test_bad_patterns_raise(vert, slash, match):
    with pytest.raises(ValueError, match=match):
        spattn.VerticalSlashMask(np.array(vert), np.array(slash), 100)


def test_bad_calls_raise():
    q, k, v = make_qkv(1, 2, 1, 100, 120, 64, seed=1)
    m = spattn.methods.get("minference_vertical_slash")
    with pytest.raises(ValueError, match="Nq=100, Nk=120"):
        m.estimate(q, k, causal=True)
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, q[:, :1], causal=False)
    mask = spattn.VerticalSlashMask(np.zeros((1, 2, 1), np.int64), np.zeros((1, 2, 1), np.int64), 100)
    with pytest.raises(ValueError, match="Nq = Nk = 100"):
        spattn.vertical_slash_attention(q, k, v, mask)
    with pytest.raises(TypeError, match="VerticalSlashMask"):
        spattn.vertical_slash_attention(q, k, v, "mask")
    with pytest.raises(TypeError, match="vertical_size must be an int"):
        spattn.methods.get("minference_vertical_slash", vertical_size=1.5)
    with pytest.raises(ValueError, match="slash_size must be >= 1"):
        spattn.methods.get("minference_vertical_slash", slash_size=[5, 0])


def test_official_config_format(tmp_path):
    cfg = [{"0": ["vertical_and_slash", 1000, 6096, 0.9], "2": ["vertical_and_slash", 30, 800, 0.8]},
           {"1": ["vertical_and_slash", 3500, 100, 0.7]},
           {"0": ["stream_llm", 100, 800, 0.5]}]
    path = tmp_path / "best_pattern.json"
    path.write_text(json.dumps(cfg))
    loaded = load_config(path)
    assert layer_sizes(loaded, 0, num_heads=4) == ([1000, 1000, 30, 1000], [6096, 6096, 800, 6096])
    assert layer_sizes(str(path), 1, num_heads=2, ratio=0.5) == ([500, 1750], [3048, 50])
    m = spattn.methods.minference_vertical_slash.MInferenceVerticalSlash.from_config(path, 0, num_heads=4)
    assert m.params["vertical_size"] == [1000, 1000, 30, 1000]
    with pytest.raises(ValueError, match="stream_llm"):
        layer_sizes(loaded, 2)
    with pytest.raises(ValueError, match="layer must be in"):
        layer_sizes(loaded, 3)
    with pytest.raises(ValueError, match="unknown pattern type"):
        load_config([{"0": ["dense", 1, 2, 0]}])
    with pytest.raises(TypeError, match="list of per-layer dicts"):
        load_config({"0": ["vertical_and_slash", 1, 2, 0]})
