"""Direct3D-S2 SSA against a float64 numpy transcription of the official code (DreamTechAI/Direct3D-S2:
``SpatialSparseAttention.forward``, ``get_block_score`` / ``score_kernel``, ``spatial_selection_attention``,
``calc_window_partition`` + ``sparse_window_attention``), with the mean-pool compression stand-in.
Tolerance: 2e-5 absolute on outputs (float32 kernels); selections exact except at reference near-ties."""

import numpy as np
import pytest

import spattn
from spattn.methods.direct3d_ssa import default_coords, sort_block

ATOL = 2e-5


def _voxels(rng, M, res, cube=0):
    if cube:  # M voxels of a filled cube of side `cube` at a random offset: full blocks and windows
        g = np.indices((cube,) * 3).reshape(3, -1).T[rng.choice(cube ** 3, size=M, replace=False)]
        return (g + rng.integers(0, res - cube, size=3)).astype(np.int64)
    flat = rng.choice(res ** 3, size=M, replace=False)
    return np.stack([flat // (res * res), (flat // res) % res, flat % res], axis=1).astype(np.int64)


def _softmax_rows(s):
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return p / l, (m + np.log(l))[..., 0]


def _masked_attention(q, k, v, allowed, scale):
    """Softmax attention of q (Hq, N, D) over the allowed (Hq, N, N) keys of its kv head (grouped)."""
    G = q.shape[0] // k.shape[0]
    s = np.where(allowed, np.einsum("hid,hjd->hij", q, np.repeat(k, G, axis=0)) * scale, -np.inf)
    p, _ = _softmax_rows(s)
    return p @ np.repeat(v, G, axis=0)


def _reference(q, k, v, coords, *, c=4, b=8, topk=8, w=8, shift=4, res=64, pe=None, kcvc=None, scale=None):
    """One sample: q (Hq, N, D), k/v (Hkv, N, D), coords (N, 3). Returns cmp, slc, win, block_topk."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    Hq, N, D = q.shape
    Hkv = k.shape[0]
    G = Hq // Hkv
    scale = 1 / np.sqrt(D) if scale is None else scale
    # compression (sparse3d_compression with the mean-pool stand-in): cells sorted by coords
    cells, cell_of = np.unique(coords // c, axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    kk = k.copy()
    if pe is not None:
        m = coords % c
        kk = kk + pe[m[:, 0], m[:, 1], m[:, 2]].astype(np.float64).reshape(N, Hkv, D).transpose(1, 0, 2)
    if kcvc is None:
        kc = np.stack([[kk[h, cell_of == j].mean(axis=0) for j in range(len(cells))] for h in range(Hkv)])
        vc = np.stack([[v[h, cell_of == j].mean(axis=0) for j in range(len(cells))] for h in range(Hkv)])
    else:
        kc, vc = (x.astype(np.float64) for x in kcvc)
    kcg, vcg = np.repeat(kc, G, axis=0), np.repeat(vc, G, axis=0)
    p, lse = _softmax_rows(np.einsum("hid,hjd->hij", q, kcg) * scale)
    cmp = p @ vcg
    # get_block_score: exp(qk - lse) summed over the group, scatter-sum to block ids, occupied ones, topk
    score = np.exp(np.einsum("hid,hjd->hij", q, kcg) * scale - lse[..., None]).reshape(Hkv, G, N, -1).sum(axis=1)
    block_res = res // b
    bc = cells // (b // c)
    flat = bc[:, 0] * block_res ** 2 + bc[:, 1] * block_res + bc[:, 2]
    full = np.zeros((Hkv, N, block_res ** 3))
    for j in range(len(cells)):
        full[..., flat[j]] += score[..., j]
    uniq = np.unique(flat)
    sb = full[..., uniq]
    K = min(topk, len(uniq))
    top = np.sort(np.argsort(-sb, axis=-1, kind="stable")[..., :K], axis=-1)
    # selection attention: each query over every token of its selected blocks
    tb = coords // b
    tok_block = np.searchsorted(uniq, tb[:, 0] * block_res ** 2 + tb[:, 1] * block_res + tb[:, 2])
    allowed = (tok_block[None, None, :, None] == top[:, :, None, :]).any(axis=-1)  # (Hkv, N, N)
    slc = _masked_attention(q, k, v, np.repeat(allowed, G, axis=0), scale)
    # calc_window_partition + flash attention inside each window
    sh = coords + shift
    nwin = [int(np.ceil((mc + 1) / w)) for mc in sh.max(axis=0)]
    offset = [nwin[1] * nwin[2], nwin[2], 1]
    wid = ((sh // w) * np.array(offset)).sum(axis=1)
    win = _masked_attention(q, k, v, np.broadcast_to(wid[:, None] == wid[None, :], (Hq, N, N)), scale)
    return cmp, slc, win, top, sb


def _assert_selection(got, ref_top, ref_scores):
    """Equal top-k rows, except where the reference's k-th and (k+1)-th block scores nearly tie."""
    diff = np.any(got != ref_top, axis=-1)
    if not diff.any():
        return
    srt = -np.sort(-ref_scores, axis=-1)
    K = ref_top.shape[-1]
    assert srt.shape[-1] > K
    gap = srt[..., K - 1] - srt[..., K]
    assert np.all(gap[diff] < 1e-5 * np.maximum(1.0, srt[..., 0][diff])), "selection differs beyond near-ties"


def _qkv(rng, Hq, Hkv, N, D, B=1):
    q = rng.standard_normal((B, Hq, N, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("D, M, res, c, b, topk, shift, cube", [
    (64, 301, 32, 4, 8, 5, 4, 0),
    (64, 333, 32, 2, 4, 4, 2, 11),  # a dense 11^3 region: blocks and windows full of voxels
    (80, 257, 32, 4, 4, 6, 0, 0),   # b == c: the cells are the blocks
    (128, 199, 16, 2, 8, 3, 4, 0),
])
def test_branches_match_the_official_transcription(D, M, res, c, b, topk, shift, cube):
    rng = np.random.default_rng(D + M)
    coords = _voxels(rng, M, res, cube)
    q, k, v = _qkv(rng, 4, 2, M, D)
    q *= 2.0  # sharper compressed softmax: fewer near-ties among block scores
    m = spattn.methods.get("direct3d_ssa", compression_block_size=c, selection_block_size=b, topk=topk,
                           shift_window=shift, resolution=res)
    br = m.branches(q, k, v, coords=coords)
    cmp, slc, win, top, sb = _reference(q[0], k[0], v[0], coords, c=c, b=b, topk=topk, shift=shift, res=res)
    np.testing.assert_allclose(br["cmp"][0], cmp, atol=ATOL)
    _assert_selection(br["blocks"][0], top, sb)
    assert sb.shape[-1] > topk and br["mask"].density().max() < 1  # the selection is sparse
    if np.array_equal(br["blocks"][0], top):
        np.testing.assert_allclose(br["slc"][0], slc, atol=ATOL)
    np.testing.assert_allclose(br["win"][0], win, atol=ATOL)
    # the gated sum with the default gates sigmoid(0)
    out = m(q, k, v, coords=coords)
    np.testing.assert_allclose(out, 0.5 * (br["cmp"] + br["slc"] + br["win"]), atol=1e-6)


def test_pe_gate_weight_and_given_compressed_kv_follow_the_official_forward():
    rng = np.random.default_rng(7)
    M, res, D, hidden = 211, 32, 64, 24
    coords = _voxels(rng, M, res)
    q, k, v = _qkv(rng, 4, 2, M, D)
    pe = 0.5 * rng.standard_normal((4, 4, 4, 2 * D)).astype(np.float32)
    gw = rng.standard_normal((3, hidden)).astype(np.float32)
    x = rng.standard_normal((1, M, hidden)).astype(np.float32)
    m = spattn.methods.get("direct3d_ssa", resolution=res, weights={"intra_block_pe": pe, "gate_weight": gw})
    cmp, slc, win, top, sb = _reference(q[0], k[0], v[0], coords, res=res, pe=pe)
    g = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ gw.T.astype(np.float64))))  # (M, 3)
    out = m(q, k, v, coords=coords, hidden=x)
    br = m.branches(q, k, v, coords=coords)
    _assert_selection(br["blocks"][0], top, sb)
    ref = g[None, :, 0:1] * cmp + g[None, :, 1:2] * br["slc"][0] + g[None, :, 2:3] * win
    np.testing.assert_allclose(out[0], ref, atol=ATOL)
    # trained compressed keys/values given directly (cells in sorted order)
    C = len(np.unique(coords // 4, axis=0))
    kc = rng.standard_normal((1, 2, C, D)).astype(np.float32)
    vc = rng.standard_normal((1, 2, C, D)).astype(np.float32)
    br = m.branches(q, k, v, coords=coords, compressed_kv=(kc, vc))
    cmp, slc, _, top, sb = _reference(q[0], k[0], v[0], coords, res=res, kcvc=(kc[0], vc[0]))
    np.testing.assert_allclose(br["cmp"][0], cmp, atol=ATOL)
    _assert_selection(br["blocks"][0], top, sb)
    with pytest.raises(ValueError, match="compressed_kv"):
        m.branches(q, k, v, coords=coords, compressed_kv=(kc[:, :, 1:], vc))


def test_token_order_does_not_matter_and_sort_block_is_the_official_order():
    rng = np.random.default_rng(3)
    M, res = 173, 32
    coords = _voxels(rng, M, res)
    q, k, v = _qkv(rng, 2, 2, M, 64)
    m = spattn.methods.get("direct3d_ssa", resolution=res)
    perm = sort_block(coords, 8)
    blk = coords[perm] // 8
    keys = (blk[:, 0] * 8 + blk[:, 1]) * 8 + blk[:, 2]
    assert np.all(np.diff(keys) >= 0)  # each selection block's tokens contiguous, blocks in id order
    out = m(q, k, v, coords=coords)
    out_sorted = m(q[:, :, perm], k[:, :, perm], v[:, :, perm], coords=coords[perm])
    np.testing.assert_allclose(out_sorted, out[:, :, perm], atol=1e-5)


def test_batches_with_their_own_voxels_and_default_layout():
    rng = np.random.default_rng(5)
    M, res = 150, 16
    coords = np.stack([_voxels(rng, M, res), _voxels(rng, M, res)])
    q, k, v = _qkv(rng, 4, 1, M, 64, B=2)
    m = spattn.methods.get("direct3d_ssa", resolution=res, topk=2)
    out = m(q, k, v, coords=coords)
    for bi in range(2):
        np.testing.assert_allclose(out[bi:bi + 1], m(q[bi:bi + 1], k[bi:bi + 1], v[bi:bi + 1], coords=coords[bi]),
                                   atol=1e-6)
    assert m.capabilities.coords_input
    np.testing.assert_array_equal(default_coords(10)[[0, 1, 3, 9]], [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(m(q, k, v), m(q, k, v, coords=default_coords(M)), atol=0)


def test_bad_inputs_name_the_argument():
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 2, 2, 20, 64)
    m = spattn.methods.get("direct3d_ssa", resolution=16)
    coords = _voxels(rng, 20, 16)
    with pytest.raises(ValueError, match=r"coords must lie in \[0, resolution=16\)"):
        m(q, k, v, coords=coords + 8)
    with pytest.raises(TypeError, match="coords must be an integer array"):
        m(q, k, v, coords=coords.astype(np.float32))
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 3\) = \(20, 3\)"):
        m(q, k, v, coords=coords[:5])
    with pytest.raises(ValueError, match="non-causal"):
        m(q, k, v, causal=True)
    with pytest.raises(ValueError, match="selection_block_size must be a multiple of compression_block_size"):
        spattn.methods.get("direct3d_ssa", selection_block_size=6)
    with pytest.raises(ValueError, match="resolution must be a multiple"):
        spattn.methods.get("direct3d_ssa", resolution=60)
    with pytest.raises(ValueError, match=r"gates must have shape \(B, N, 3\)"):
        m(q, k, v, coords=coords, gates=np.zeros((1, 20, 2)))
    q2, k2, _ = _qkv(rng, 1, 1, 600, 64)  # a 9^3 cube does not fit resolution 8
    with pytest.raises(ValueError, match="default layout"):
        spattn.methods.get("direct3d_ssa", resolution=8).estimate(q2, k2)


def test_equal_block_scores_go_to_the_lower_block_id():
    from spattn.methods.direct3d_ssa import _top_blocks

    rng = np.random.default_rng(1)
    s = rng.integers(0, 3, size=(2, 40, 9)).astype(np.float64)  # many ties
    for K in (1, 4, 9):
        np.testing.assert_array_equal(_top_blocks(s, K), np.sort(np.argsort(-s, axis=-1, kind="stable")[..., :K], -1))
