"""AdaSpa (spattn.methods.adaspa) over multi-step runs on slowly varying inputs, against a float64
numpy port of the official code (flagos-ai/FlagScale ``diffusion/adaspa/adasparse/attn_func.py``
``adaptive_sparse_attn`` / ``search_block_mask`` and the two Triton search kernels written out);
the budgets, the forced blocks, the cached-LSE search, reuse equal to recomputation, save / load."""

import numpy as np
import pytest

import spattn
from spattn.methods.adaspa import block_mass, force_blocks, select_blocks

TOL = dict(atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- float64 reference (official port)
def ref_scores(q, k):
    g = q.shape[1] // k.shape[1]
    k = np.repeat(k, g, axis=1)
    return q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])


def ref_search_kernel(q, k, bs, cached_lse2=None):
    """_flash_attn_triton_search(_cache_lse) on zero-padded q, k: (block sums, lse base 2)."""
    B, H, S, D = q.shape
    P = -(-S // bs) * bs
    qp = np.zeros((B, H, P, D))
    kp = np.zeros((B, k.shape[1], P, D))
    qp[:, :, :S], kp[:, :, :S] = q, k
    s2 = ref_scores(qp, kp) * np.log2(np.e)
    m = s2.max(-1, keepdims=True)
    lse2 = (m + np.log2(np.exp2(s2 - m).sum(-1, keepdims=True)))[..., 0]
    use = lse2 if cached_lse2 is None else cached_lse2
    p = np.exp2(s2 - use[..., None])
    M = P // bs
    return p.reshape(B, H, M, bs, M, bs).sum(axis=(3, 5)), lse2


def ref_topk_mask(W3, s, row_wise):
    X, M, _ = W3.shape
    kr = min(max(round((1.0 - s) * M), 0), M)
    out = np.zeros(W3.shape, bool)
    if kr == 0:
        return out
    for x in range(X):
        if row_wise:
            for r in range(M):
                out[x, r, np.argsort(-W3[x, r], kind="stable")[:kr]] = True
        else:
            kf = min(max(round((1.0 - s) * M * M), 0), M * M)
            idx = np.argsort(-W3[x].ravel(), kind="stable")[:kf]
            out[x].ravel()[idx] = True
    return out


def ref_search_block_mask(W, sparsity, recall, modes, N, bs, frame_len=0, text_len=0):
    B, H, M, _ = W.shape
    BH = B * H
    W3 = W.reshape(BH, M, M)
    if "head_adaptive" in modes:
        rw = "row_wise" in modes
        tot = W3.sum(axis=(1, 2))
        s_up, s_down = (1.0 + sparsity) / 2.0, (3.0 * sparsity - 1.0) / 2.0
        r_up = (W3 * ref_topk_mask(W3, s_up, rw)).sum(axis=(1, 2)) / (tot + 1e-9)
        cand = [h for h in range(BH) if r_up[h] >= recall]
        cand.sort(key=lambda h: -r_up[h])
        up = cand[:min(len(cand), BH // 2)]
        left = [h for h in range(BH) if h not in up]
        r_dn = (W3 * ref_topk_mask(W3, s_down, rw)).sum(axis=(1, 2)) / (tot + 1e-9)
        down = sorted(left, key=lambda h: r_dn[h])[:min(len(left), len(up))]
        mask = ref_topk_mask(W3, sparsity, rw)
        for h in up:
            mask[h] = ref_topk_mask(W3[h:h + 1], s_up, rw)[0]
        for h in down:
            mask[h] = ref_topk_mask(W3[h:h + 1], s_down, rw)[0]
    else:
        kk = round(M * M * (1 - sparsity))
        mask = np.zeros((BH, M * M), bool)
        for x in range(BH):
            mask[x, np.argsort(-W3[x].ravel(), kind="stable")[:kk]] = True
    mask = mask.reshape(B, H, M, M)
    if frame_len > 0:
        fb = (frame_len - 1) // bs + 1
        mask[..., :fb, :] = True
        mask[..., :, :fb] = True
    if "text_sink" in modes:
        vb = (N - text_len) // bs
        mask[..., vb:, :] = True
        mask[..., :, vb:] = True
    return mask


def ref_block_sparse(q, k, v, mask, bs):
    N = q.shape[2]
    g = q.shape[1] // k.shape[1]
    allowed = np.repeat(np.repeat(mask, bs, axis=2), bs, axis=3)[:, :, :N, :N]
    s = np.where(allowed, ref_scores(q, k), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ np.repeat(v, g, axis=1)


class RefAdaSpaLayer:
    """One layer of adaptive_sparse_attn (its mask_cache / lse_cache entries)."""

    def __init__(self, search_steps, modes, **kw):
        self.ts, self.modes, self.kw = list(search_steps), modes, kw
        self.mask = self.lse = None

    def __call__(self, q, k, v, step):
        bs = self.kw["bs"]
        if step < self.ts[0]:
            return ref_block_sparse(q, k, v, np.ones((1, 1, 1, 1), bool).repeat(-(-q.shape[2] // bs), 2)
                                    .repeat(-(-q.shape[2] // bs), 3), bs)
        if step in self.ts:
            cached = self.lse if ("cache_lse" in self.modes and step != self.ts[0]) else None
            W, lse2 = ref_search_kernel(q, k, bs, cached)
            if "cache_lse" in self.modes and step == self.ts[0]:
                self.lse = lse2
            self.mask = ref_search_block_mask(W, self.kw["sparsity"], self.kw["recall"], self.modes, q.shape[2], bs,
                                              self.kw.get("frame_len", 0), self.kw.get("text_len", 0))
        return ref_block_sparse(q, k, v, self.mask, bs)


# ---------------------------------------------------------------- tests
def _run(N=300, D=64, Hq=4, Hkv=2, steps=9, drift=0.05, seed=0):
    w = spattn.synthetic.structured_qkv(B=1, Hq=Hq, Hkv=Hkv, N=N, D=D, seed=seed)
    return spattn.synthetic.denoising_steps(w, steps, drift=drift, seed=seed)


@pytest.mark.parametrize("N, D, Hq, Hkv, bs", [(300, 64, 4, 2, 32), (257, 80, 2, 2, 64), (200, 128, 4, 4, 16)])
def test_block_mass_matches_the_official_search_kernels(N, D, Hq, Hkv, bs):
    (q, k, _), (q2, k2, _) = _run(N, D, Hq, Hkv, steps=2, drift=0.1)[:2]
    W, lse = block_mass(q, k, bs)
    Wr, lse2 = ref_search_kernel(q.astype(np.float64), k.astype(np.float64), bs)
    np.testing.assert_allclose(W, Wr, **TOL)
    np.testing.assert_allclose(lse, lse2 * np.log(2), **TOL)
    np.testing.assert_allclose(W.sum(-1)[..., :-1], bs, rtol=1e-4)  # full rows hold one block of queries
    Wc, lse_c = block_mass(q2, k2, bs, cached_lse=lse)  # the one-pass search against the cached LSE
    Wcr, _ = ref_search_kernel(q2.astype(np.float64), k2.astype(np.float64), bs, cached_lse2=lse2)
    np.testing.assert_allclose(Wc, Wcr, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(lse_c, block_mass(q2, k2, bs)[1], **TOL)


def test_head_adaptive_budgets_keep_the_mean_sparsity():
    rng = np.random.default_rng(0)
    M = 10
    W = rng.random((2, 4, M, M)) ** 8  # a spread of concentrations over the heads
    W[0, 0] = np.eye(M) + 1e-4  # very concentrated: recall at s_up reaches 0.9
    W[0, 1] = np.eye(M) * 2 + 1e-4
    W[1, 3] = np.ones((M, M))  # flat: the lowest recall
    for modes in (("head_adaptive", "row_wise"), ("head_adaptive",), ()):
        mask, info = select_blocks(W.astype(np.float32), 0.8, 0.9, head_adaptive="head_adaptive" in modes,
                                   row_wise="row_wise" in modes)
        ref = ref_search_block_mask(W, 0.8, 0.9, modes, M * 8, 8)
        np.testing.assert_array_equal(mask, ref)
    mask, info = select_blocks(W.astype(np.float32), 0.8, 0.9)
    lv = info["level"].reshape(2, 4)
    assert lv[0, 0] == 1 and lv[0, 1] == 1 and lv[1, 3] == -1 and (lv == 1).sum() == (lv == -1).sum()
    assert mask.sum(axis=(2, 3)).mean() == pytest.approx(2 * M)  # rows keep 1, 2 or 3 blocks: the mean is 2


def test_forced_first_frame_and_text_blocks():
    m = np.zeros((1, 1, 8, 8), bool)
    force_blocks(m, 8 * 16 - 5, 16, first_frame_len=20, text_sink=True, text_len=30)
    assert m[:, :, :2].all() and m[:, :, :, :2].all()  # ceil(20 / 16) = 2 first-frame blocks
    vb = (8 * 16 - 5 - 30) // 16  # 5: the block holding the first text token on
    assert m[:, :, vb:].all() and m[:, :, :, vb:].all() and not m[:, :, 2:vb, 2:vb].any()
    r = np.zeros((2, 3, 10, 10), bool)
    force_blocks(r, 160, 16, text_sink=False, random_select=True, seed=3)
    assert r.sum() == 6  # int(1 % of 600 entries)


@pytest.mark.parametrize("modes, kw", [
    (("head_adaptive", "cache_lse", "row_wise", "text_sink"), dict(N=300, D=64, Hq=4, Hkv=2, bs=32)),
    (("head_adaptive", "text_sink"), dict(N=231, D=80, Hq=2, Hkv=2, bs=32, frame_len=40, text_len=20)),
    ((), dict(N=200, D=128, Hq=4, Hkv=4, bs=16)),
])
def test_multi_step_run_matches_the_official_layer(modes, kw):
    bs, N = kw["bs"], kw["N"]
    ts = (2, 5)
    steps = _run(N, kw["D"], kw["Hq"], kw["Hkv"], steps=8, drift=0.08)
    m = spattn.methods.get("adaspa", block_size=bs, search_steps=ts, num_steps=8,
                           head_adaptive="head_adaptive" in modes, cache_lse="cache_lse" in modes,
                           row_wise="row_wise" in modes, text_sink="text_sink" in modes,
                           first_frame_len=kw.get("frame_len", 0), text_len=kw.get("text_len", 0))
    ref = RefAdaSpaLayer(ts, modes, bs=bs, sparsity=0.8, recall=0.9, frame_len=kw.get("frame_len", 0),
                         text_len=kw.get("text_len", 0))
    phases = []
    for t, (q, k, v) in enumerate(steps):
        out = m(q, k, v)
        phases.append(m.last_info["phase"])
        expect = ref(*(x.astype(np.float64) for x in (q, k, v)), t)
        if t >= ts[0]:
            np.testing.assert_array_equal(m.state["mask"], ref.mask)
        np.testing.assert_allclose(out, expect, atol=3e-5, rtol=1e-4)
    assert phases == ["dense", "dense", "search", "reuse", "reuse", "search", "reuse", "reuse"]
    assert ("lse" in m.state) == ("cache_lse" in modes)
    q, k, v = steps[0]
    m(q, k, v)  # call num_steps: a new generation starts dense
    assert m.last_info["phase"] == "dense" and m.state.step == 1 and "mask" not in m.state


def test_reuse_equals_recomputation_and_state_round_trip(tmp_path):
    steps = _run(300, 64, 4, 2, steps=5, drift=0.05)
    m = spattn.methods.get("adaspa", search_steps=(1, 3), num_steps=5, block_size=32)
    for q, k, v in steps[:2]:
        m(q, k, v)
    q, k, v = steps[2]
    mask = spattn.BlockMask(m.state["mask"], 32, 32, 300, 300)
    m.state.save(tmp_path / "s.npz")
    out = m(q, k, v)
    np.testing.assert_array_equal(out, spattn.block_sparse_attention(q, k, v, mask))  # the stored mask, run again
    m.state.restore(spattn.state.MethodState.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(m(q, k, v), out)
    np.testing.assert_array_equal(m.estimate(q, k, causal=False).blocks, mask.blocks)
    m.reset()
    assert m.state.step == 0 and "mask" not in m.state


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="search_steps"):
        spattn.methods.get("adaspa", search_steps=(10, 60))
    with pytest.raises(TypeError, match="cache_lse"):
        spattn.methods.get("adaspa", cache_lse=1)
    with pytest.raises(ValueError, match="sparsity"):
        spattn.methods.get("adaspa", sparsity=1.5)
    with pytest.raises(ValueError, match="cached_lse"):
        q = np.zeros((1, 1, 10, 8), np.float32)
        block_mass(q, q, 4, cached_lse=np.zeros((1, 1, 10), np.float32))
