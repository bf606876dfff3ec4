"""PBS-Attn: the permutation, the permuted block mask and the token indices equal a float64 numpy
transcription of the official pipeline (xinghaow99/pbs-attn HEAD 8ce8e02: ``last_block_attn_sorting``,
``permuted_block_selection`` with ``block_pooled_attn``, ``select_blocks`` and ``first_token_mask``,
``permuted_block_sparse_attn_fwd``'s dense fallback and final ``block_mask | segment_mask``, the naive
torch attention's causal rule on original positions, the HF patch's ``repeat_kv``), and the
method's output equals float64 attention restricted to its indices."""

import math

import numpy as np
import pytest

import spattn
from spattn import _core
from conftest import assert_matches, make_qkv, ref_attention, ref_probs


def official_pbs(q, k, block=128, segment=256, threshold=0.9, force_first=True, perm_given=None, want_importance=False):
    """(perm (B, H, L), mask (B, H, nb, nb), dense) of the official code in float64, kv heads repeated.

    Ties in the sorts go to the lower index (torch's sorts are unstable). perm_given: run the
    block selection on this permutation instead (to follow a float32 near-tie order)."""
    B, H, L, D = q.shape
    q = np.asarray(q, np.float64)
    k = np.repeat(np.asarray(k, np.float64), H // k.shape[1], axis=1)  # repeat_kv
    nb = -(-L // block)
    if L <= segment:  # SDPA fallback
        tril = np.broadcast_to(np.tril(np.ones((nb, nb), bool)), (B, H, nb, nb))
        return np.broadcast_to(np.arange(L), (B, H, L)), tril, True
    # last_block_attn_sorting
    nseg = L // segment
    c = nseg * segment
    s = q[:, :, -block:] @ np.swapaxes(k[:, :, :c], -1, -2) / math.sqrt(D)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    imp = p.mean(-2).reshape(B, H, nseg, segment)
    local = np.argsort(-imp, axis=-1, kind="stable")
    perm = np.concatenate([(local + segment * np.arange(nseg)[:, None]).reshape(B, H, c),
                           np.broadcast_to(np.arange(c, L), (B, H, L - c))], axis=-1)
    if want_importance:
        return imp.reshape(B, H, c)
    if perm_given is not None:
        perm = np.asarray(perm_given, np.int64)
    kp = np.take_along_axis(k, perm[..., None], axis=2)
    # permuted_block_selection: zero padding, candidate mask, pooled softmax, select_blocks
    pad = nb * block - L
    Q = np.concatenate([q, np.zeros((B, H, pad, D))], axis=2)
    Kp = np.concatenate([kp, np.zeros((B, H, pad, D))], axis=2)
    key_idx = np.concatenate([perm, np.broadcast_to(np.arange(L, L + pad), (B, H, pad))], axis=-1)
    spb = segment // block
    qi, ki = np.arange(nb)[:, None], np.arange(nb)[None, :]
    seg_mask = (qi // spb) == (ki // spb)
    cand = ~seg_mask & (ki <= qi)
    qp = Q.reshape(B, H, nb, block, D).mean(-2)
    kpool = Kp.reshape(B, H, nb, block, D).mean(-2)
    sc = np.where(cand, qp @ np.swapaxes(kpool, -1, -2) / math.sqrt(D), -np.inf)
    with np.errstate(invalid="ignore"):
        e = np.exp(sc - sc.max(-1, keepdims=True))
        A = np.nan_to_num(e / e.sum(-1, keepdims=True), nan=0.0)
    tau = np.asarray(threshold, np.float64)
    tau = tau[None, :, None, None] if tau.ndim else tau
    order = np.argsort(-A, axis=-1, kind="stable")
    cum = np.cumsum(np.take_along_axis(A, order, -1), -1)
    exceed = cum >= tau
    first = np.argmax(exceed, -1)[..., None]
    sorted_sel = (np.arange(nb) <= first) & exceed.any(-1, keepdims=True)
    sel = np.zeros(A.shape, bool)
    np.put_along_axis(sel, order, sorted_sel, -1)
    # threshold 1: every candidate (the official path for the int 1; spattn also takes it for 1.0,
    # per head, where the official float path depends on the float32 rounding of the cumsum)
    sel = np.where(np.broadcast_to(tau == 1, sel.shape), cand, sel)
    if force_first:
        sel |= (key_idx.reshape(B, H, nb, block) == 0).any(-1)[:, :, None, :]
    return perm, sel | seg_mask, False


def expected_indices(perm, mask, L, block):
    """Per query block: sorted original positions of the keys of its selected permuted blocks that
    are <= its last query (the naive kernel's causal rule on original positions)."""
    B, H, nb, _ = mask.shape
    rows = []
    for b in range(B):
        for h in range(H):
            for g in range(nb):
                last = min(L, (g + 1) * block) - 1
                pos = np.concatenate([np.arange(kb * block, min(L, (kb + 1) * block))
                                      for kb in np.flatnonzero(mask[b, h, g])])
                keys = perm[b, h, pos]
                rows.append(np.sort(keys[keys <= last]))
    K = max(len(r) for r in rows)
    out = np.full((B * H * nb, K), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out.reshape(B, H, nb, K)


def allowed_from(perm, mask, L, block):
    """Element visibility (B, H, L, L) of the official naive kernel: selected permuted blocks,
    key <= query on original positions."""
    B, H, nb, _ = mask.shape
    allowed = np.zeros((B, H, L, L), bool)
    for b in range(B):
        for h in range(H):
            for g in range(nb):
                pos = np.concatenate([np.arange(kb * block, min(L, (kb + 1) * block))
                                      for kb in np.flatnonzero(mask[b, h, g])])
                allowed[b, h, g * block:(g + 1) * block, perm[b, h, pos]] = True
    return allowed & (np.arange(L)[None, :] <= np.arange(L)[:, None])


def assert_same_permutation(got, want, q, k, off):
    """Equal, except swaps of keys whose float64 importances are within float32 rounding (1e-5
    relative): float32 sums order near-equal keys either way, as the official float32 code may."""
    diff = got != want
    if not diff.any():
        return 0
    imp = official_pbs(q, k, **off, want_importance=True)
    b, h, p = np.nonzero(diff)
    a, c = imp[b, h, got[b, h, p]], imp[b, h, want[b, h, p]]
    assert np.all(np.abs(a - c) <= 1e-5 * np.maximum(np.abs(a), np.abs(c))), (p, a, c)
    assert np.array_equal(np.sort(got, -1), np.sort(want, -1))
    return int(diff.sum())


def check_against_official(q, k, **params):
    m = spattn.methods.get("pbs_attn", **params)
    pm = m.estimate(q, k, causal=True)
    assert isinstance(pm, spattn.PermutedBlockMask)
    ti = pm.to_token_indices()
    off = {"block": m.params["block_size"], "segment": m.params["segment_size"],
           "threshold": params.get("threshold", 0.9), "force_first": m.params["force_select_first_block"]}
    perm, mask, dense = official_pbs(q, k, **off)
    if assert_same_permutation(m.last_info["perm"], perm, q, k, off):  # near ties: select on our order
        perm, mask, dense = official_pbs(q, k, **off, perm_given=m.last_info["perm"])
    np.testing.assert_array_equal(m.last_info["perm"], perm)
    np.testing.assert_array_equal(m.last_info["blocks"].blocks, mask)
    assert m.last_info["dense"] == dense
    np.testing.assert_array_equal(ti.indices, expected_indices(perm, mask, q.shape[2], off["block"]))
    assert ti.group_size == off["block"] and ti.kv_len == q.shape[2]
    return m, ti, perm, mask


SHAPES = [  # B, Hq, Hkv, L, D: L not a multiple of the block or of the segment, GQA, head dims
    (1, 4, 2, 700, 64),
    (2, 2, 1, 777, 80),
    (1, 3, 3, 1000, 128),
    (1, 8, 2, 2049, 64),
    (1, 2, 1, 1024, 64),   # a multiple of the segment: no tail
    (1, 2, 2, 257, 64),    # one complete segment and a one-token tail
]


@pytest.mark.parametrize("B, Hq, Hkv, L, D", SHAPES)
def test_permutation_mask_and_indices_equal_official_pipeline(B, Hq, Hkv, L, D):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L)
    check_against_official(w.q, w.k)


@pytest.mark.parametrize("block, segment", [(64, 256), (64, 512), (32, 96), (128, 384)])
def test_other_block_and_segment_sizes(block, segment):
    q, k, _ = make_qkv(1, 4, 2, 1100, 1100, 64, seed=block + segment)
    check_against_official(q, k, block_size=block, segment_size=segment)


def test_random_inputs_and_several_batches():
    q, k, _ = make_qkv(2, 4, 1, 900, 900, 64, seed=11)
    check_against_official(q, k)


@pytest.mark.parametrize("L", [1, 63, 128, 200, 256])
def test_lengths_up_to_the_segment_run_dense(L):
    q, k, v = make_qkv(1, 4, 2, L, L, 64, seed=L)
    m, ti, perm, mask = check_against_official(q, k)
    assert m.last_info["dense"]
    np.testing.assert_array_equal(perm, np.broadcast_to(np.arange(L), perm.shape))
    out = m(q, k, v, causal=True)
    assert_matches(*spattn.token_sparse_attention(q, k, v, ti, causal=True, return_lse=True),
                   *ref_attention(q, k, v, causal=True))
    np.testing.assert_allclose(out, ref_attention(q, k, v, causal=True)[0], atol=2e-5, rtol=1e-5)


def test_segments_are_permuted_within_themselves_and_the_tail_is_not():
    L, S = 1000, 256
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=L, D=64, seed=3)
    m = spattn.methods.get("pbs_attn")
    m.estimate(w.q, w.k, causal=True)
    perm = m.last_info["perm"]
    for s0 in range(0, (L // S) * S, S):
        np.testing.assert_array_equal(np.sort(perm[..., s0:s0 + S], -1),
                                      np.broadcast_to(np.arange(s0, s0 + S), (1, 4, S)))
    np.testing.assert_array_equal(perm[..., (L // S) * S:], np.broadcast_to(np.arange((L // S) * S, L), (1, 4, L % S)))
    assert not np.array_equal(perm[..., :S], np.broadcast_to(np.arange(S), (1, 4, S)))


def token0_last_input(L=900, D=64, seed=4, rank="last"):
    """q, k where token 0's key is the least (rank='last') or second most (rank='second') attended
    key of segment 0 for the last 128 queries of every head."""
    q, k, _ = make_qkv(1, 2, 1, L, L, D, seed=seed)
    direction = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    direction /= np.linalg.norm(direction)
    q[0, :, -128:] += 4 * direction  # every last query leans on `direction`
    if rank == "last":
        k[0, 0, 0] = -30 * direction
    else:
        k[0, 0, 0] = 30 * direction
        k[0, 0, 1] = 45 * direction
    return q, k


def test_first_token_block_is_where_the_permutation_put_token_0():
    q, k = token0_last_input(rank="last")
    m, ti, perm, mask = check_against_official(q, k, threshold=0.3)
    pos0 = np.argmax(perm == 0, axis=-1)
    assert np.all(pos0 == 255)  # last of segment 0, so in permuted block 1
    assert mask[0, :, :, 1].all()
    nb = mask.shape[-1]
    assert not mask[0, :, 2:, 0].all()  # block 0 is not forced; block 1 is
    assert all(0 in ti.indices[0, h, g] for h in range(2) for g in range(nb))
    # without the forcing, some later query blocks drop token 0's block and token 0
    m2, ti2, _, mask2 = check_against_official(q, k, threshold=0.3, force_select_first_block=False)
    assert not mask2[0, :, 2:, 1].all()
    assert any(0 not in ti2.indices[0, h, g] for h in range(2) for g in range(2, nb))


def test_token_0_ranking_second_stays_in_block_0():
    q, k = token0_last_input(rank="second")
    m, ti, perm, mask = check_against_official(q, k, threshold=0.3)
    assert np.all(perm[0, :, 0] == 1) and np.all(perm[0, :, 1] == 0)
    assert mask[0, :, :, 0].all()


@pytest.mark.parametrize("threshold", [1e-6, 0.5, 0.95, 0.999, 1.0])
def test_thresholds(threshold):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=1300, D=64, seed=9)
    m, ti, perm, mask = check_against_official(w.q, w.k, threshold=threshold)
    nb = mask.shape[-1]
    own_start = np.arange(nb) // 2 * 2  # first block of each query block's segment (S / b = 2)
    cand = np.arange(nb)[None, :] < own_start[:, None]
    chosen = (mask[0] & cand).sum(-1)  # candidates kept per (head, query block)
    rows = own_start > 0
    if threshold == 1.0:  # every candidate block
        assert np.all(mask[0][:, cand])
    if threshold == 1e-6:  # the top candidate, plus token 0's block when it is another one
        assert np.all((chosen[:, rows] >= 1) & (chosen[:, rows] <= 2))
    assert np.all(chosen[:, ~rows] == 0)


def test_per_head_thresholds_one_per_query_head():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=1111, D=64, seed=5)
    tau = [0.3, 0.6, 0.9, 1.0]
    m, *_ = check_against_official(w.q, w.k, threshold=tau)
    assert m.params["threshold"] == pytest.approx(tau)
    per_head = []
    for h, t in enumerate(tau):
        mh = spattn.methods.get("pbs_attn", threshold=t)
        mh.estimate(w.q, w.k, causal=True)
        per_head.append(mh.last_info["blocks"].blocks[:, h])
    np.testing.assert_array_equal(m.last_info["blocks"].blocks, np.stack(per_head, 1))
    with pytest.raises(ValueError, match="threshold must hold 1 value or one per query head"):
        spattn.methods.get("pbs_attn", threshold=[0.9, 0.9, 0.9]).estimate(w.q, w.k, causal=True)


@pytest.mark.parametrize("B, Hq, Hkv, L, D", [(1, 4, 2, 700, 64), (1, 2, 1, 1000, 80), (2, 2, 2, 300, 32)])
def test_output_is_float64_attention_restricted_to_the_indices(B, Hq, Hkv, L, D):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L + 1)
    m = spattn.methods.get("pbs_attn", threshold=0.7)
    out, lse = m(w.q, w.k, w.v, causal=True, return_lse=True)
    perm, mask, _ = official_pbs(w.q, w.k, threshold=0.7)
    assert_matches(out, lse, *ref_attention(w.q, w.k, w.v, causal=True, allowed=allowed_from(perm, mask, L, 128)))
    assert m.readouts()["selected_blocks"] > 0
    # density and recall of the permuted mask: counted over the official keys in original positions
    pm = m.estimate(w.q, w.k, causal=True)
    allowed = allowed_from(perm, mask, L, 128)
    vis = np.tril(np.ones((L, L), bool))
    np.testing.assert_allclose(pm.density(), (allowed & vis).sum(axis=(2, 3)) / vis.sum())
    p, _ = ref_probs(w.q, w.k, causal=True)
    np.testing.assert_allclose(spattn.metrics.recall(w.q, w.k, pm, causal=True),
                               np.where(allowed, p, 0).sum(-1).mean(-1), atol=1e-5)
    tok = spattn.token_sparse_attention(w.q, w.k, w.v, pm.to_token_indices(), causal=True)
    np.testing.assert_allclose(tok, out, atol=1e-5)


def test_permuted_block_mask_checks_its_inputs():
    blocks = spattn.BlockMask(np.ones((1, 1, 2, 2), bool), 128, 128, 200, 200)
    perm = np.arange(200)[None, None].copy()
    perm[0, 0, 5] = 6
    with pytest.raises(ValueError, match="permutation"):
        spattn.PermutedBlockMask(perm, blocks)
    with pytest.raises(ValueError, match=r"perm must have shape \(B, H, 200\)"):
        spattn.PermutedBlockMask(np.arange(100)[None, None], blocks)
    with pytest.raises(TypeError, match="BlockMask"):
        spattn.PermutedBlockMask(np.arange(200)[None, None], "blocks")
    q, k, v = make_qkv(1, 1, 1, 200, 200, 64)
    pm = spattn.PermutedBlockMask(np.arange(200)[None, None], blocks)
    with pytest.raises(ValueError, match="causal"):
        spattn.permuted_block_attention(q, k, v, pm, causal=False)
    # identity permutation with every block: dense causal attention
    np.testing.assert_allclose(spattn.permuted_block_attention(q, k, v, pm), spattn.attention(q, k, v, causal=True),
                               atol=1e-6)


def test_user_scale_replaces_the_estimate_scale():
    q, k, v = make_qkv(1, 2, 1, 600, 600, 64, seed=12)
    m = spattn.methods.get("pbs_attn")
    m.estimate(q * 2, k, causal=True)
    blocks_2q = m.last_info["blocks"].blocks.copy()
    m.estimate(q, k, causal=True, scale=2 / math.sqrt(64))
    np.testing.assert_array_equal(m.last_info["blocks"].blocks, blocks_2q)


def test_parameters_have_the_official_defaults():
    p = _core.PbsAttnParams()
    assert p.to_dict() == {"block_size": 128, "segment_size": 256, "threshold": 0.9, "force_select_first_block": True}


@pytest.mark.parametrize("params, msg", [
    (dict(segment_size=200), "segment_size"),
    (dict(block_size=0), "block_size"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=[]), "threshold"),
])
def test_bad_parameters_raise_naming_them(params, msg):
    with pytest.raises(ValueError, match=msg):
        spattn.methods.get("pbs_attn", **params)


def test_bad_parameter_types_raise_type_error():
    with pytest.raises(TypeError, match="force_select_first_block"):
        spattn.methods.get("pbs_attn", force_select_first_block=1)
    with pytest.raises(TypeError, match="segment_size"):
        spattn.methods.get("pbs_attn", segment_size="256")


def test_non_causal_and_chunked_calls_are_refused():
    q, k, _ = make_qkv(1, 2, 1, 300, 300, 64)
    m = spattn.methods.get("pbs_attn")
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, k, causal=False)
    with pytest.raises(ValueError, match="Nq=100, Nk=300"):
        m.estimate(q[:, :, :100], k, causal=True)
    with pytest.raises(ValueError, match="causal prefill"):
        _core.estimate_pbs_attn(q, k, False, None, _core.PbsAttnParams())


@pytest.mark.parametrize("B, Hq, Hkv, L, D, block", [(1, 2, 1, 333, 64, 64), (2, 4, 2, 700, 80, 128),
                                                     (1, 2, 2, 129, 128, 32), (1, 1, 1, 1, 64, 16)])
def test_permuted_kernel_on_any_permutation(B, Hq, Hkv, L, D, block):
    """A shuffle of the whole sequence and random blocks: blocks mixing earlier and later keys go
    through the sorted, masked path; the output equals float64 attention over the listed keys."""
    rng = np.random.default_rng(L)
    q, k, v = make_qkv(B, Hq, Hkv, L, L, D, seed=L)
    perm = np.stack([np.stack([rng.permutation(L) for _ in range(Hq)]) for _ in range(B)])
    nb = -(-L // block)
    blocks = rng.random((B, Hq, nb, nb)) < 0.4
    pm = spattn.PermutedBlockMask(perm, spattn.BlockMask(blocks, block, block, L, L))
    allowed = np.zeros((B, Hq, L, L), bool)
    for b in range(B):
        for h in range(Hq):
            for qb in range(nb):
                for kb in np.flatnonzero(blocks[b, h, qb]):
                    allowed[b, h, qb * block:(qb + 1) * block, perm[b, h, kb * block:(kb + 1) * block]] = True
    out, lse = spattn.permuted_block_attention(q, k, v, pm, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=True, allowed=allowed))
    vis = np.tril(np.ones((L, L), bool))
    np.testing.assert_allclose(pm.density(), (allowed & vis).sum(axis=(2, 3)) / vis.sum())
    np.testing.assert_array_equal(pm.to_dense(), allowed & vis)
