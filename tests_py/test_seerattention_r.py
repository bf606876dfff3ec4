"""SeerAttention-R decode gate: selections equal float64 numpy transcriptions of the official code
(microsoft/SeerAttention HEAD aba03e3, seer_attn/decode_sparse/): ``AttnGate.forward`` of
attn_gate_inf.py (prefill branch filling the compressed cache, decode branch scoring it),
``KCompressionCache.update`` (cache_utils.py), ``HeadPoolingLinear`` / ``MultiHeadLinear`` /
``RMSNorm`` / ``apply_rotary_pos_emb_single``, ``get_sparse_attn_mask_from_budget`` /
``_from_threshold``; the training loss against the training attention's post-processing of
``attn_pooling_qkv_varlen`` (block max, group max, block tril -1 mask, sum + 1e-9 normalisation,
log_softmax, KLDivLoss mean, x gate_loss_scale); the decode output equals float64 attention over
the selected tokens; the cache state after appends equals the state built from scratch; exact
gradients against finite differences; npz round trip; official weights layout; errors."""

import math

import numpy as np
import pytest

import spattn
from spattn.methods.seerattention_r import (SeerAttentionR, SeerRBlocks, SeerRGate, _prepare, gate_loss_and_grads,
                                            load_gates, load_official_gates, pool_blocks, save_gates, train_gate)
from conftest import assert_matches, ref_attention

# ---------------------------------------------------------------------------- official references (float64)


def ref_inv_freq(theta, dim):
    """transformers' default rope init: 1 / theta^(arange(0, dim, 2) / dim)."""
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def ref_cos_sin(positions, theta, dim):
    """Qwen3RotaryEmbedding.forward: emb = cat(freqs, freqs); (cos, sin) (n, dim)."""
    freqs = np.asarray(positions, np.float64)[:, None] * ref_inv_freq(theta, dim)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def ref_rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def ref_apply_rotary_pos_emb_single(x, cos, sin):
    """modules/common.py apply_rotary_pos_emb_single (cos / sin already broadcastable)."""
    rd = cos.shape[-1]
    if x.shape[-1] != rd:
        xr, xp = x[..., :rd], x[..., rd:]
        return np.concatenate([xr * cos + ref_rotate_half(xr) * sin, xp], axis=-1)
    return x * cos + ref_rotate_half(x) * sin


def ref_rms_norm(x, w, eps=1e-6):
    """modules/common.py RMSNorm.forward."""
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def ref_pool(k, bs, kinds):
    """F.max_pool3d / min_pool3d / F.avg_pool3d over (b, s, h, d) with kernel [bs, 1, 1], ceil
    mode (a partial window over its real rows); channels concatenated in `kinds` order."""
    b, s, h, d = k.shape
    nb = -(-s // bs)
    out = []
    for kind in kinds:
        cols = []
        for j in range(nb):
            w = k[:, j * bs:min(s, (j + 1) * bs)]
            cols.append({"max": w.max(1), "min": w.min(1), "avg": w.mean(1)}[kind])
        out.append(np.stack(cols, axis=1))
    return np.concatenate(out, axis=-1)


class RefGate:
    """AttnGate (attn_gate_inf.py) with the weights of a SeerRGate, layout (b, s, h, d)."""

    def __init__(self, g: SeerRGate):
        self.g, self.bs, self.hid = g, g.block_size, g.hidden
        self.wk = g.wk.astype(np.float64)
        self.wq = None if g.wq is None else g.wq.astype(np.float64)
        self.qn = None if g.q_norm is None else g.q_norm.astype(np.float64)
        self.kn = None if g.k_norm is None else g.k_norm.astype(np.float64)
        self.theta, self.rope_dim = g.rope_theta, g.rope_dim or g.hidden
        self.Hkv = g.kv_heads

    def linear_k(self, x):  # MultiHeadLinear.forward, 4-d: einsum('bshi,hio->bsho')
        return np.einsum("bshi,hio->bsho", x, self.wk)

    def rope(self, x, positions):  # apply_rotary_pos_emb_single(x, cos, sin, unsqueeze_dim=2)
        if not self.g.use_rope:
            return x
        cos, sin = ref_cos_sin(positions, self.theta, self.rope_dim)
        return ref_apply_rotary_pos_emb_single(x, cos[None, :, None, :], sin[None, :, None, :])

    # ---- KCompressionCache + AttnGate.forward prefill branch (k.shape[1] > 1)
    def prefill(self, k):
        L = k.shape[1]
        kern = self.bs if L >= self.bs else L
        kc = self.linear_k(ref_pool(k, kern, self.g.k_pool))
        if self.qn is not None:
            kc = ref_rms_norm(kc, self.kn)
        kc = self.rope(kc, np.arange(0, L, self.bs)[:kc.shape[1]])  # block_position_ids = position_ids[:, 0::bs]
        nvalid, rem = L // self.bs, L % self.bs
        self.remainder = np.zeros((k.shape[0], self.bs, k.shape[2], k.shape[3]))
        if rem > 0:
            self.remainder[:, :rem] = k[:, nvalid * self.bs:]
            kc[:, -1] = 0.0
        self.kc, self.remainder_len = kc, rem

    # ---- KCompressionCache.update(k=...) + AttnGate.forward decode branch
    def decode(self, k_new, q, max_cache_len, block_budget=None, threshold=None):
        g = self.g
        b, _, Hq, D = q.shape
        G = Hq // self.Hkv
        if g.q_pooling in ("Qavgproj", "Qavg"):  # F.avg_pool2d(q, [G, 1]): mean of consecutive heads
            q = q.reshape(b, 1, self.Hkv, G, D).mean(3)
        if g.q_pooling == "Qproj":  # HeadPoolingLinear, 4-d: einsum('bskgi,kgio->bsko')
            q = np.einsum("bskgi,kgio->bsko", q.reshape(b, 1, self.Hkv, G, D), self.wq)
        elif g.q_pooling == "Qavgproj":
            q = np.einsum("bshi,hio->bsho", q, self.wq)
        if self.qn is not None:
            q = ref_rms_norm(q, self.qn)
        q = self.rope(q, [max_cache_len - 1])  # position_embeddings_gate_q at the current position
        # KCompressionCache.update(k=k): write into the remainder, a zero slot opens a new block
        self.remainder[:, self.remainder_len] = k_new[:, 0]
        self.remainder_len = (self.remainder_len + 1) % self.bs
        if self.remainder_len == 1:
            self.kc = np.concatenate([self.kc, np.zeros_like(self.kc[:, :1])], axis=1)
        if max_cache_len % self.bs == 0:  # the block just filled: pool the remainder
            kc = self.linear_k(ref_pool(self.remainder, self.bs, g.k_pool))
            if self.kn is not None:
                kc = ref_rms_norm(kc, self.kn)
            # official: rotated at position max_cache_len - 1 (position_embeddings of this step);
            # spattn rotates every block at its start (documented deviation)
            kc = self.rope(kc, [max_cache_len - self.bs])
            self.kc[:, -1:] = kc
        attn = np.einsum("bhd,bshd->bhs", q[:, 0], self.kc) / math.sqrt(self.hid)
        attn = np.exp(attn - attn.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        if threshold is not None:  # get_sparse_attn_mask_from_threshold
            mask = attn > threshold
        elif attn.shape[-1] <= block_budget:  # get_sparse_attn_mask_from_budget
            mask = np.ones(attn.shape, bool)
        else:
            top = np.argsort(-attn, axis=-1, kind="stable")[..., :block_budget]
            mask = np.zeros(attn.shape, bool)
            np.put_along_axis(mask, top, True, axis=-1)
        mask[:, :, -1] = True
        return mask, attn


def official_tokens(mask, L, bs, Hq):
    """Block mask (B, Hkv, nb) -> token mask (B, Hq, L): block_sparse decode reads whole blocks
    of the kv head of each query head (h // G)."""
    tok = np.repeat(mask, bs, axis=2)[:, :, :L]
    return np.repeat(tok, Hq // mask.shape[1], axis=1)


def selected_mask(idx: spattn.TokenIndices, N: int) -> np.ndarray:
    ind = idx.indices[:, :, 0]
    out = np.zeros(ind.shape[:2] + (N,), bool)
    for b in range(ind.shape[0]):
        for h in range(ind.shape[1]):
            sel = ind[b, h][ind[b, h] >= 0]
            assert np.all(np.diff(sel) > 0)
            out[b, h, sel] = True
    return out


def make_gate(D, Hq, Hkv, *, q_pooling="Qproj", seed=0, std=0.3, **kw):
    """A gate with spread-out scores (an untrained gate's softmax is near uniform)."""
    g = SeerRGate.init(D, Hq, Hkv, q_pooling=q_pooling, seed=seed, init_std=std, **kw)
    if g.q_norm is not None:
        rng = np.random.default_rng(seed + 100)
        g = g.with_params([p if p.ndim > 1 else 1.0 + 0.5 * rng.standard_normal(p.shape) for p in g.params()])
    return g


def inputs(B, Hq, Hkv, L, D, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, L, D)).astype(np.float32)
    return q, k, v


CASES = [  # B, Hq, Hkv, L, D, q_pooling
    (1, 8, 2, 1000, 64, "Qproj"),
    (1, 8, 2, 777, 128, "Qproj-partial-rope"),
    (2, 4, 4, 517, 80, "Qproj"),
    (1, 4, 1, 1025, 128, "Qavgproj"),
    (1, 8, 2, 640, 64, "Qavg"),
    (1, 4, 1, 63, 64, "Qproj"),
    (1, 4, 1, 2, 64, "Qproj"),
]


# ---------------------------------------------------------------------------- selection = official
@pytest.mark.parametrize("case", CASES, ids=[f"B{c[0]}-Hq{c[1]}-Hkv{c[2]}-L{c[3]}-D{c[4]}-{c[5]}" for c in CASES])
@pytest.mark.parametrize("mode", ["budget", "threshold"])
@pytest.mark.parametrize("prompt_cut", [None, 1])
def test_selection_equals_the_official_gate_and_the_output_is_exact(case, mode, prompt_cut):
    B, Hq, Hkv, L, D, qp = case
    q, k, v = inputs(B, Hq, Hkv, L, D, seed=L)
    rope = {}
    if qp.endswith("-partial-rope"):  # a Qwen3-like config: head_dim 128 rotary channels of a 256-wide gate
        qp, rope = qp.split("-")[0], dict(hidden=256, rope_config={"head_dim": 128, "rope_theta": 1e6})
    g = make_gate(D, Hq, Hkv, q_pooling=qp, seed=D, use_qk_norm=qp != "Qavg", **rope)
    assert not rope or (g.rope_dim == 128 and g.rope_theta == 1e6)
    kw = dict(token_budget=256) if mode == "budget" else dict(threshold=0.05)
    m = spattn.methods.get("seerattention_r", gate=g, **kw)
    # official: prefill of L - 1 tokens, then the decode step appending token L - 1
    ref = RefGate(g)
    ref.prefill(np.asarray(k, np.float64).transpose(0, 2, 1, 3)[:, :L - 1])
    mask, probs = ref.decode(np.asarray(k, np.float64).transpose(0, 2, 1, 3)[:, L - 1:],
                             np.asarray(q, np.float64).transpose(0, 2, 1, 3), L,
                             block_budget=256 // g.block_size if mode == "budget" else None,
                             threshold=0.05 if mode == "threshold" else None)
    cache = spattn.KVCache(initial_capacity=8)
    cut = L - 1 if prompt_cut else L
    cache.append(0, k[:, :, :cut], v[:, :, :cut])
    if cut < L:
        cache.append(0, k[:, :, cut:], v[:, :, cut:])
    idx = m.select(q, cache)
    np.testing.assert_allclose(m.last_info["probs"], probs, rtol=1e-5, atol=1e-7)
    want = official_tokens(mask, L, g.block_size, Hq)
    np.testing.assert_array_equal(selected_mask(idx, L), want)
    out, lse = m(q, cache, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, allowed=want[:, :, None, :])
    assert_matches(out, lse, ref_out, ref_lse)
    # the array path builds the same state from k
    np.testing.assert_array_equal(m.estimate(q, k).indices, idx.indices)


def test_a_one_token_cache_attends_its_token():
    q, k, v = inputs(1, 4, 2, 1, 64)
    m = spattn.methods.get("seerattention_r", gate=make_gate(64, 4, 2), token_budget=64)
    cache = spattn.KVCache()
    cache.append(0, k, v)
    np.testing.assert_array_equal(m.select(q, cache).indices, np.zeros((1, 4, 1, 1), np.int32))
    out, lse = m(q, cache, return_lse=True)
    assert_matches(out, lse, *ref_attention(q, k, v))


def test_budget_counts_blocks_and_forces_the_partial_last_block():
    q, k, v = inputs(1, 4, 1, 1000, 64, seed=3)
    g = make_gate(64, 4, 1, seed=1)
    m = spattn.methods.get("seerattention_r", gate=g, token_budget=256)
    sel = selected_mask(m.estimate(q, k), 1000)[0, 0]
    blocks = np.array([sel[j * 64:(j + 1) * 64].any() for j in range(16)])
    assert blocks[-1] and sel[960:].all()
    assert blocks.sum() in (4, 5)  # the top 4 (the partial last block's logit is 0 and may be among them) + last
    # every block while the cache holds no more blocks than the budget
    dense = spattn.methods.get("seerattention_r", gate=g, token_budget=1024).estimate(q, k)
    assert (dense.indices >= 0).sum() == 4 * 1000
    # a budget below one block keeps only the last block
    last = spattn.methods.get("seerattention_r", gate=g, token_budget=10).estimate(q, k)
    np.testing.assert_array_equal(last.indices[0, 0, 0], np.arange(960, 1000))


def test_query_heads_of_a_group_share_their_kv_heads_blocks():
    q, k, _ = inputs(1, 8, 2, 700, 64, seed=4)
    m = spattn.methods.get("seerattention_r", gate=make_gate(64, 8, 2, seed=2), token_budget=128)
    ind = m.estimate(q, k).indices
    for h in range(8):
        np.testing.assert_array_equal(ind[0, h], ind[0, (h // 4) * 4])
    assert not np.array_equal(ind[0, 0], ind[0, 4])


def test_prefill_and_dense_layers_run_dense():
    q, k, v = inputs(1, 4, 2, 300, 64)
    g = make_gate(64, 4, 2)
    m = spattn.methods.get("seerattention_r", gate=g, token_budget=64, dense_layers=1)
    cache = spattn.KVCache()
    cache.append(0, k, v)
    cache.append(1, k, v)
    assert (m.select(q, cache, layer=0).indices >= 0).sum() == 4 * 300
    assert (m.select(q, cache, layer=1).indices >= 0).sum() < 4 * 300
    qq = np.repeat(q, 300, axis=2)
    assert (m.estimate(qq, k, causal=True).indices >= 0).all()


# ---------------------------------------------------------------------------- cache state
@pytest.mark.parametrize("prompt", [0, 1, 63, 64, 130])
def test_state_after_appends_equals_the_state_built_from_scratch(prompt):
    B, Hq, Hkv, L, D = 1, 8, 2, 300, 80
    q, k, v = inputs(B, Hq, Hkv, L, D, seed=5)
    g = make_gate(D, Hq, Hkv, seed=3)
    m = spattn.methods.get("seerattention_r", gate=g, token_budget=128)
    cache = spattn.KVCache(initial_capacity=4)
    if prompt:
        cache.append(0, k[:, :, :prompt], v[:, :, :prompt])
    for t in range(prompt, L):
        cache.append(0, k[:, :, t:t + 1], v[:, :, t:t + 1])
        if t % 37 == 0 or t == L - 1:  # select along the way: the projected keys grow incrementally
            m.select(q, cache)
    inc = m.blocks(cache, 0, g)
    scratch = SeerRBlocks(g.block_size, g.k_pool)
    scratch.update(k, 0, L)
    assert inc.num_blocks == scratch.num_blocks == 5 and inc.kv_len == L
    np.testing.assert_array_equal(inc.pooled[:, :, :5], scratch.pooled[:, :, :5])
    np.testing.assert_array_equal(inc.pooled[:, :, :5], pool_blocks(k, 64, ("max", "min", "avg")))
    np.testing.assert_allclose(inc.gate_keys(g), scratch.gate_keys(g), rtol=1e-12, atol=1e-12)
    fresh = spattn.KVCache()
    fresh.append(0, k, v)
    np.testing.assert_array_equal(m.select(q, cache).indices, m.select(q, fresh).indices)


def test_pooled_keys_are_the_official_max_min_avg():
    _, k, _ = inputs(2, 2, 2, 150, 64, seed=6)
    got = pool_blocks(k, 64, ("max", "min", "avg"))
    want = ref_pool(np.asarray(k, np.float64).transpose(0, 2, 1, 3), 64, ("max", "min", "avg")).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_new_gate_invalidates_the_cached_block_keys():
    q, k, v = inputs(1, 4, 1, 500, 64, seed=7)
    cache = spattn.KVCache()
    cache.append(0, k, v)
    a = spattn.methods.get("seerattention_r", gate=make_gate(64, 4, 1, seed=1), token_budget=128)
    b = spattn.methods.get("seerattention_r", gate=make_gate(64, 4, 1, seed=2), token_budget=128)
    ia, ib = a.select(q, cache), b.select(q, cache)
    np.testing.assert_array_equal(ia.indices, a.estimate(q, k).indices)
    np.testing.assert_array_equal(ib.indices, b.estimate(q, k).indices)
    # both gates keep their projected keys on the shared state and extend them as blocks fill
    rng = np.random.default_rng(1)
    for _ in range(80):
        cache.append(0, rng.standard_normal((1, 1, 1, 64)), rng.standard_normal((1, 1, 1, 64)))
        a.select(q, cache), b.select(q, cache)
    kk = np.array(cache.keys(0))
    np.testing.assert_array_equal(a.select(q, cache).indices, a.estimate(q, kk).indices)
    np.testing.assert_array_equal(b.select(q, cache).indices, b.estimate(q, kk).indices)


def test_gate_inputs_are_separate_from_attention_inputs():
    q, k, v = inputs(1, 4, 2, 400, 64, seed=8)
    qg, kg, _ = inputs(1, 4, 2, 400, 64, seed=9)
    m = spattn.methods.get("seerattention_r", gate=make_gate(64, 4, 2), token_budget=128)
    via_gate = m.estimate(q, k, q_gate=qg, k_gate=kg)
    np.testing.assert_array_equal(via_gate.indices, m.estimate(qg, kg).indices)
    cache, gcache = spattn.KVCache(), spattn.KVCache()
    cache.append(0, k, v)
    gcache.append(0, kg, v)
    np.testing.assert_array_equal(m.select(q, cache, q_gate=qg, gate_cache=gcache).indices, via_gate.indices)
    out = m(q, cache, q_gate=qg, gate_cache=gcache)
    ref_out, _ = ref_attention(q, k, v, allowed=selected_mask(via_gate, 400)[:, :, None, :])
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(m(q, k, v, q_gate=qg, k_gate=kg), ref_out, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- training
def ref_training_loss(g: SeerRGate, q, k, ratio=0.5, scale_loss=10.0):
    """The official training path for one sequence (modeling_qwen3_seerattn_training.py with
    attn_gate_training.py), float64: gate logits of every row (q pooled over the group, RMSNorm,
    RoPE at the row position; k block-pooled, projected, RMSNorm, RoPE at the block start), the
    block mask of _gen_block_mask (tril diagonal -1, repeated per row) filled with -1e20; ground
    truth = attn_pooling_qkv_varlen (causal probabilities max-pooled per key block), max_pool3d
    over the group, masked to 0, / (sum + 1e-9); KLDivLoss (mean) of log_softmax over rows
    int(N * ratio) .. N - 1, x gate_loss_scale."""
    ref = RefGate(g)
    qb = np.asarray(q, np.float64).transpose(0, 2, 1, 3)  # (b, N, Hq, D)
    kb = np.asarray(k, np.float64).transpose(0, 2, 1, 3)
    B, N, Hq, D = qb.shape
    Hkv, G, bs = kb.shape[2], Hq // kb.shape[2], g.block_size
    qq = qb
    if g.q_pooling in ("Qavgproj", "Qavg"):
        qq = qq.reshape(B, N, Hkv, G, D).mean(3)
    if g.q_pooling == "Qproj":
        qq = np.einsum("bskgi,kgio->bsko", qq.reshape(B, N, Hkv, G, D), ref.wq)
    elif g.q_pooling == "Qavgproj":
        qq = np.einsum("bshi,hio->bsho", qq, ref.wq)
    if ref.qn is not None:
        qq = ref_rms_norm(qq, ref.qn)
    qq = ref.rope(qq, np.arange(N))
    kc = ref.linear_k(ref_pool(kb, bs, g.k_pool))
    if ref.kn is not None:
        kc = ref_rms_norm(kc, ref.kn)
    nb = kc.shape[1]
    kc = ref.rope(kc, np.arange(nb) * bs)
    attn = np.einsum("bshd,bnhd->bhsn", qq, kc) / math.sqrt(g.hidden)
    bm = np.repeat(np.tril(np.ones((nb, nb), bool), -1), bs, axis=0)[:N]
    attn = np.where(bm, attn, -1e20)
    # ground truth
    s = np.einsum("bihd,bjhd->bhij", qb, np.repeat(kb, G, axis=2)) / math.sqrt(D)
    s = np.where(np.tril(np.ones((N, N), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    pp = np.concatenate([p, np.zeros(p.shape[:3] + (nb * bs - N,))], -1).reshape(B, Hq, N, nb, bs).max(-1)
    gt = pp.reshape(B, Hkv, G, N, nb).max(2)
    gt = np.where(bm, gt, 0.0)
    gt = gt / (gt.sum(-1, keepdims=True) + 1e-9)
    start = int(N * ratio)
    total = 0.0
    for i in range(B):
        a = attn[i, :, start:]
        logq = a - a.max(-1, keepdims=True)
        logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
        t = gt[i, :, start:]
        with np.errstate(divide="ignore", invalid="ignore"):
            el = np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - logq), 0.0)
        total += el.mean()
    return scale_loss * total / B


@pytest.mark.parametrize("qp, norm, D, G, N", [("Qproj", True, 64, 4, 300), ("Qavgproj", False, 80, 1, 257),
                                               ("Qavg", True, 64, 2, 129)])
def test_loss_equals_the_official_training_loss(qp, norm, D, G, N):
    rng = np.random.default_rng(N)
    q = rng.standard_normal((2, 2 * G, N, D)).astype(np.float32)
    k = rng.standard_normal((2, 2, N, D)).astype(np.float32)
    g = make_gate(D, 2 * G, 2, q_pooling=qp, use_qk_norm=norm, seed=4)
    loss, _, _ = gate_loss_and_grads(g, _prepare((q, k), g, 0.5), None, 10.0)
    np.testing.assert_allclose(loss, ref_training_loss(g, q, k), rtol=1e-5)


def test_a_decode_pair_is_the_last_row_of_the_sequence_loss():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 4, 200, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 200, 64)).astype(np.float32)
    g = make_gate(64, 4, 2, seed=5)
    full = _prepare((q, k), g, 0.0)
    pair = _prepare((q[:, :, -1:], k), g, 0.5)
    np.testing.assert_allclose(pair.target[:, :, 0], full.target[:, :, -1], rtol=1e-6, atol=1e-9)
    lf = gate_loss_and_grads(g, full)[2][:, :, -1]
    lp = gate_loss_and_grads(g, pair)[2][:, :, 0]
    np.testing.assert_allclose(lp, lf, rtol=1e-9)


@pytest.mark.parametrize("qp, norm, rope", [("Qproj", True, True), ("Qavgproj", False, True), ("Qavg", True, False)])
def test_gradients_match_finite_differences(qp, norm, rope):
    rng = np.random.default_rng(2)
    D, Hkv, G, N, bs = 8, 2, 2, 37, 4
    q = rng.standard_normal((1, Hkv * G, N, D)).astype(np.float32)
    k = rng.standard_normal((1, Hkv, N, D)).astype(np.float32)
    g = make_gate(D, Hkv * G, Hkv, q_pooling=qp, use_qk_norm=norm, use_rope=rope, hidden=8, block_size=bs,
                  std=0.5, seed=6)
    sample = _prepare((q, k), g, 0.3)
    params = g.params()
    _, grads, _ = gate_loss_and_grads(g, sample, params)
    assert len(grads) == len(params)
    eps = 1e-6
    for p, dp in zip(params, grads):
        flat, dflat = p.reshape(-1), dp.reshape(-1)
        for i in rng.choice(flat.size, size=min(12, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            lp = gate_loss_and_grads(g, sample, params)[0]
            flat[i] = old - eps
            lm = gate_loss_and_grads(g, sample, params)[0]
            flat[i] = old
            np.testing.assert_allclose(dflat[i], (lp - lm) / (2 * eps), rtol=1e-4, atol=1e-9)


def test_fit_lowers_the_loss_on_captured_pairs():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=512, D=64, seed=1)
    m = spattn.methods.get("seerattention_r")
    res = m.fit([(w.q, w.k)], steps=40, lr=5e-3, warmup_steps=2, progress=False)
    assert m.fitted and isinstance(m.params["gate"], SeerRGate)
    assert np.mean(res.losses[-5:]) < 0.8 * np.mean(res.losses[:5])
    pairs = [(w.q[:, :, t:t + 1], w.k[:, :, :t + 1]) for t in (300, 400, 511)]
    res2 = train_gate(pairs, steps=3, progress=False)
    assert len(res2.losses) == 3 and np.isfinite(res2.losses).all()


def test_npz_round_trip(tmp_path):
    gates = [make_gate(64, 8, 2, seed=1), make_gate(80, 4, 4, q_pooling="Qavgproj", use_qk_norm=False, seed=2),
             make_gate(64, 4, 1, q_pooling="Qavg", use_rope=False, seed=3)]
    path = str(tmp_path / "gates.npz")
    save_gates(path, gates)
    back = load_gates(path)
    for a, b in zip(gates, back):
        assert a.config() == b.config()
        for name in ("wk", "wq", "q_norm", "k_norm"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
    q, k, _ = inputs(1, 8, 2, 700, 64)
    sel = lambda g: spattn.methods.get("seerattention_r", gate=g, token_budget=128).estimate(q, k).indices
    np.testing.assert_array_equal(sel(gates[0]), sel(back[0]))


def test_gate_rope_follows_the_official_block_rotary_embedding():
    from spattn.methods.seerattention_r import gate_rope_from_config

    qwen3 = {"head_dim": 128, "rope_theta": 1e6, "hidden_size": 2560, "num_attention_heads": 32}
    qwen2 = {"rope_theta": 1e6, "hidden_size": 5120, "num_attention_heads": 40}
    assert gate_rope_from_config(qwen3, 128) == {"rope_theta": 1e6, "rope_scaling": None, "rope_dim": None}
    assert gate_rope_from_config(qwen3, 256)["rope_dim"] == 128  # the config's head_dim rotates
    assert gate_rope_from_config(qwen2, 64)["rope_dim"] is None   # no head_dim: the gate hidden size


def test_official_weights_layout_loads():
    rng = np.random.default_rng(0)
    Hkv, G, D, h = 2, 4, 64, 128
    state = {}
    for i in range(2):
        pre = f"model.layers.{i}.self_attn.attn_gate."
        state[pre + "attngate_linear_q.weight"] = rng.standard_normal((Hkv, G, D, h)).astype(np.float32)
        state[pre + "attngate_linear_k.weight"] = rng.standard_normal((Hkv, 3 * D, h)).astype(np.float32)
        state[pre + "attngate_qnorm.weight"] = rng.standard_normal(h).astype(np.float32)
        state[pre + "attngate_knorm.weight"] = rng.standard_normal(h).astype(np.float32)
        state[f"model.layers.{i}.self_attn.q_proj.weight"] = np.zeros((4, 4), np.float32)
    cfg = {"seerattn_q_head_pooling_type": "Qproj", "seerattn_k_seq_pooling_type": "Kmaxminavg",
           "seerattn_gate_block_size": 64, "seerattn_use_rope": True, "rope_theta": 1e6, "head_dim": 128,
           "hidden_size": 2560, "num_attention_heads": 32}
    gates = load_official_gates(state, config=cfg)
    assert len(gates) == 2 and gates[1].rope_theta == 1e6 and gates[1].rope_dim is None
    np.testing.assert_array_equal(gates[1].wq, state["model.layers.1.self_attn.attn_gate.attngate_linear_q.weight"])
    np.testing.assert_array_equal(gates[0].k_norm, state["model.layers.0.self_attn.attn_gate.attngate_knorm.weight"])
    m = spattn.methods.get("seerattention_r", gate={0: gates[0], 1: gates[1]})
    q, k, v = inputs(1, 8, 2, 300, 64)
    cache = spattn.KVCache()
    cache.append(1, k, v)
    assert m.select(q, cache, layer=1).indices.shape[:3] == (1, 8, 1)


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_name_the_argument():
    q, k, v = inputs(1, 4, 2, 100, 64)
    with pytest.raises(ValueError, match="token_budget"):
        spattn.methods.get("seerattention_r", token_budget=0)
    with pytest.raises(ValueError, match="threshold"):
        spattn.methods.get("seerattention_r", threshold=float("nan"))
    with pytest.raises(TypeError, match="gate"):
        spattn.methods.get("seerattention_r", gate="weights")
    m = spattn.methods.get("seerattention_r", gate=make_gate(64, 4, 2))
    with pytest.raises(ValueError, match="gate"):
        m.estimate(q[:, :2], k[:, :1])  # a gate built for Hq 4, Hkv 2
    cache = spattn.KVCache()
    cache.append(0, k, v)
    with pytest.raises(ValueError, match="q must have shape"):
        m.select(q[..., :32], cache)
    with pytest.raises(TypeError, match="gate_cache"):
        m.select(q, cache, gate_cache="no")
    with pytest.raises(ValueError, match="q_gate"):
        m.select(q, cache, q_gate=q[:, :2])
    with pytest.raises(ValueError, match="training items"):
        m.fit([(q[0], k)], steps=1, progress=False)
    with pytest.raises(ValueError, match="loss_slice_ratio"):
        m.fit([(q, k)], steps=1, progress=False, loss_slice_ratio=1.5)
    with pytest.raises(ValueError, match="q_pooling"):
        SeerRGate.init(64, 4, 2, q_pooling="Qmax")
    with pytest.raises(ValueError, match="wq"):
        SeerRGate(np.zeros((2, 192, 128)), np.zeros((3, 2, 64, 128)))
    with pytest.raises(ValueError, match="probs"):
        spattn._core.seer_r_select(np.zeros((1, 2, 3), np.float32), 4, 64, 1000, m.cparams)
    assert isinstance(m, SeerAttentionR)
