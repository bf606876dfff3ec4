"""SparseD (spattn.methods.sparsed) over multi-step runs on slowly varying inputs, against a
float64 numpy port of the official code (INV-WZQ/SparseD ``models/Dream/modeling_dream.py``
``DreamAttention.forward`` between "Start SparseD" and "End SparseD", and
``models/Dream/SparseD_utils.py`` ``create_attention_block_mask`` / ``customize_mask``, with
FlexAttention's block-masked attention written out); the stored mask reused as recomputed;
save / load / reset."""

import numpy as np
import pytest

import spattn
from spattn.methods.sparsed import generation_start_block, search_mask

TOL = dict(atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- float64 reference (official port)
def ref_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_create_attention_block_mask(P, block_size, keep_ratio):
    """create_attention_block_mask: zero-padded tiles, mean |P|, top max(1, int(nkb*r)+1) per row,
    then the official expand / crop / pad-with-True / all-over-tile round trip."""
    B, H, ql, kl = P.shape
    nq, nk = -(-ql // block_size), -(-kl // block_size)
    padded = np.zeros((B, H, nq * block_size, nk * block_size))
    padded[:, :, :ql, :kl] = P
    imp = np.abs(padded).reshape(B, H, nq, block_size, nk, block_size).mean(axis=(3, 5))
    keep = max(1, int(nk * keep_ratio) + 1)
    top = np.argsort(-imp, axis=-1, kind="stable")[..., :keep]
    bm = np.zeros(imp.shape, bool)
    np.put_along_axis(bm, top, True, axis=-1)
    tok = np.repeat(np.repeat(bm, block_size, axis=2), block_size, axis=3)[:, :, :ql, :kl]
    full = np.ones((B, H, nq * block_size, nk * block_size), bool)
    full[:, :, :ql, :kl] = tok
    return full.reshape(B, H, nq, block_size, nk, block_size).all(axis=(3, 5))


class RefDreamAttention:
    """One DreamAttention layer's SparseD state (fine_mask, last) on float64 (B, H, T, d) q and
    repeat_kv'd k, v."""

    def __init__(self, whole_steps, skip, select, block_size, new_generation):
        self.whole_steps, self.skip, self.select = whole_steps, skip, select
        self.bs, self.new_generation = block_size, new_generation
        self.fine_mask = self.last = None

    def __call__(self, q, k, v, now_step):
        bs = self.bs
        if now_step == 0:
            self.fine_mask = self.last = None
        end_time = int(self.whole_steps * self.skip) + 1
        B, H, T, d = q.shape
        nb = -(-T // bs)
        if now_step <= end_time:
            if now_step == end_time and self.fine_mask is None:
                self.fine_mask = np.zeros((B, H, nb, nb), bool)
                for idx in range(nb):
                    if T - idx * bs <= self.new_generation or idx == nb - 1:
                        if self.last is None:
                            self.last = idx
                    qr = q[:, :, idx * bs:(idx + 1) * bs]
                    w = ref_softmax(qr @ k.transpose(0, 1, 3, 2) / np.sqrt(d))
                    self.fine_mask[:, :, idx:idx + 1, :] = ref_create_attention_block_mask(w, bs, self.select)
                self.fine_mask[:, :, :, self.last:] = False
            if self.fine_mask is not None:
                kr = k[:, :, self.last * bs:]
                for idx in range(nb):
                    qr = q[:, :, idx * bs:(idx + 1) * bs]
                    w = ref_softmax(qr @ kr.transpose(0, 1, 3, 2) / np.sqrt(d))
                    fm = ref_create_attention_block_mask(w, bs, self.select)
                    self.fine_mask[:, :, idx:idx + 1, self.last:] |= fm
            return ref_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)) @ v  # SDPA, non-causal
        # flex_attention with customize_mask: element (i, j) kept iff fine_mask[b, h, i // bs, j // bs]
        allowed = np.repeat(np.repeat(self.fine_mask, bs, axis=2), bs, axis=3)[:, :, :T, :T]
        s = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)
        return ref_softmax(s) @ v


def f64(q, k, v):
    G = q.shape[1] // k.shape[1]
    return (np.asarray(q, np.float64), np.repeat(np.asarray(k, np.float64), G, axis=1),
            np.repeat(np.asarray(v, np.float64), G, axis=1))


CASES = [  # B, Hq, Hkv, T, D, block_size, select, new_generation, whole_steps, skip
    (1, 4, 2, 300, 64, 32, 0.3, 100, 20, 0.2),
    (2, 2, 2, 257, 80, 64, 0.5, 64, 10, 0.3),
    (1, 2, 1, 130, 128, 16, 0.3, 129, 8, 0.2),
    (1, 4, 2, 190, 64, 32, 0.25, 500, 8, 0.2),  # every block is generation: pass A cleared entirely
    (1, 2, 2, 99, 64, 32, 0.3, 0, 8, 0.2),      # no generation tokens: the final block is "last"
]


@pytest.mark.parametrize("B, Hq, Hkv, T, D, bs, select, new_gen, whole, skip", CASES)
def test_multi_step_run_matches_the_official_attention(B, Hq, Hkv, T, D, bs, select, new_gen, whole, skip):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=T, D=D, seed=11)
    n_steps = int(whole * skip) + 5
    steps = spattn.synthetic.denoising_steps(w, n_steps, drift=0.02, seed=2)
    m = spattn.methods.get("sparsed", block_size=bs, select=select, new_generation=new_gen,
                           whole_steps=whole, skip=skip)
    ref = RefDreamAttention(whole, skip, select, bs, new_gen)
    end = int(whole * skip) + 1
    for t, (q, k, v) in enumerate(steps):
        got = m(q, k, v)
        want = ref(*f64(q, k, v), now_step=t)
        assert m.last_info["phase"] == ("dense" if t < end else "search" if t == end else "reuse")
        np.testing.assert_allclose(got, want, err_msg=f"step {t}", **TOL)
        if t >= end:
            np.testing.assert_array_equal(m.state["mask"], ref.fine_mask)
            assert int(m.state["last"]) == ref.last
    assert m.state.step == n_steps


def test_search_budgets_prompt_and_generation_keys_apart():
    q, k, _ = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=320, D=64, seed=4))[:3]
    blocks, last = search_mask(q, k, block_size=32, select=0.3, new_generation=96)
    assert last == generation_start_block(320, 32, 96) == 7
    assert (blocks[..., :last].sum(-1) <= int(10 * 0.3) + 1).all()   # what pass A kept among prompt keys
    assert (blocks[..., last:].sum(-1) == int(3 * 0.3) + 1).all()    # pass B's own budget
    assert generation_start_block(100, 32, 0) == 3 and generation_start_block(100, 32, 1000) == 0


def test_reuse_equals_the_kernel_on_the_mask_searched_at_the_switch():
    """The mask is searched once and reused for all later steps: every reuse step equals
    block-sparse attention of that step's inputs with the switch step's mask."""
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=200, D=64, seed=5)
    steps = spattn.synthetic.denoising_steps(w, 9, drift=0.05, seed=6)
    m = spattn.methods.get("sparsed", block_size=32, whole_steps=10, skip=0.2)   # end = 3
    for q, k, v in steps[:4]:
        m(q, k, v)
    searched = spattn.BlockMask(search_mask(steps[3][0], steps[3][1], block_size=32, select=0.3,
                                            new_generation=128)[0], 32, 32, 200, 200)
    np.testing.assert_array_equal(m.state["mask"], searched.blocks)
    for q, k, v in steps[4:]:
        np.testing.assert_array_equal(m(q, k, v), spattn.block_sparse_attention(q, k, v, searched))
        np.testing.assert_array_equal(m.estimate(q, k).blocks, searched.blocks)  # the stored mask
    # with every block kept, the reused mask is exact attention
    full = spattn.methods.get("sparsed", block_size=32, whole_steps=10, skip=0.2, select=1.0)
    for q, k, v in steps[:4]:
        full(q, k, v)
    q, k, v = steps[5]
    np.testing.assert_allclose(full(q, k, v), spattn.attention(q, k, v), **TOL)


def test_step_zero_starts_a_new_generation_and_save_load_continue(tmp_path):
    w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=150, D=64, seed=7)
    steps = spattn.synthetic.denoising_steps(w, 8, drift=0.02, seed=8)
    m = spattn.methods.get("sparsed", block_size=32, whole_steps=10, skip=0.2)
    for q, k, v in steps[:5]:
        m(q, k, v)
    m.state.save(tmp_path / "sparsed.npz")
    other = spattn.methods.get("sparsed", block_size=32, whole_steps=10, skip=0.2)
    other.state.restore(spattn.MethodState.load(tmp_path / "sparsed.npz"))
    for q, k, v in steps[5:]:
        np.testing.assert_array_equal(m(q, k, v), other(q, k, v))
    m.state.step = 0  # the official now_step == 0: the stored mask is dropped
    q, k, v = steps[0]
    np.testing.assert_array_equal(m(q, k, v), spattn.attention(q, k, v))
    assert "mask" not in m.state


def test_bad_input_names_the_argument():
    q, k, v = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=64, D=32, seed=0))[:3]
    with pytest.raises(ValueError, match="select"):
        spattn.methods.get("sparsed", select=1.5)
    with pytest.raises(ValueError, match="block_size"):
        spattn.methods.get("sparsed", block_size=0)
    with pytest.raises(TypeError, match="whole_steps"):
        spattn.methods.get("sparsed", whole_steps=1.5)
    m = spattn.methods.get("sparsed")
    with pytest.raises(ValueError, match="causal"):
        m(q, k, v, causal=True)
    with pytest.raises(ValueError, match="Nq=10, Nk=64"):
        m(q[:, :, :10], k, v)
    assert m.state.step == 0
