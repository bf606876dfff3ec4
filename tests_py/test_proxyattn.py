"""ProxyAttn-like (provisional rule from paper summaries; official code not read): masks and per-head
budgets equal a float64 numpy transcription of the written rule (proxy q = mean of each GQA group's
q heads; proxy block sums of exact softmax probabilities; one ranking per group and row; per-head
budget from the head's own last-query-block mass over the proxy ranking, cumulative gamma; block 0
and the diagonal kept), and the output equals float64 attention restricted to the mask."""

import numpy as np
import pytest

import spattn
from spattn import _core
from conftest import assert_matches, make_qkv, ref_attention, ref_probs


def reference_proxyattn(q, k, block=128, gamma=0.9, causal=True):
    """(mask (B, Hq, nb, nb), budgets (B, Hq)) of the provisional rule, float64."""
    q = np.asarray(q, np.float64)
    k = np.asarray(k, np.float64)
    B, Hq, L, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    nb = -(-L // block)
    pad = nb * block - L
    proxy = q.reshape(B, Hkv, G, L, D).mean(2)
    P, _ = ref_probs(proxy, k, causal=causal, scale=1 / np.sqrt(D))
    P = np.pad(P, ((0, 0), (0, 0), (0, pad), (0, pad)))
    W = P.reshape(B, Hkv, nb, block, nb, block).sum((3, 5))
    r0 = (nb - 1) * block
    Ph, _ = ref_probs(q, k, causal=causal, scale=1 / np.sqrt(D))
    M = np.pad(Ph[:, :, r0:], ((0, 0), (0, 0), (0, 0), (0, pad))).reshape(B, Hq, L - r0, nb, block).sum(-1).mean(2)
    mask = np.zeros((B, Hq, nb, nb), bool)
    budgets = np.zeros((B, Hq), np.int64)
    for b in range(B):
        for h in range(Hq):
            w = W[b, h // G]
            order = np.argsort(-w[nb - 1], kind="stable")
            cum = np.cumsum(M[b, h][order])
            hit = np.flatnonzero(cum >= gamma)
            kh = int(hit[0]) + 1 if hit.size else nb
            budgets[b, h] = kh
            for r in range(nb):
                vis = r + 1 if causal else nb
                top = np.argsort(-w[r, :vis], kind="stable")[:min(kh, vis)]
                mask[b, h, r, top] = True
                mask[b, h, r, 0] = mask[b, h, r, r] = True
    return mask, budgets


SHAPES = [  # B, Hq, Hkv, L, D, block
    (1, 4, 2, 700, 64, 128),
    (2, 4, 1, 777, 80, 128),
    (1, 3, 3, 1000, 64, 128),
    (1, 8, 2, 1100, 32, 64),
    (1, 2, 1, 45, 64, 128),    # a single partial block
    (1, 4, 4, 513, 64, 32),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
@pytest.mark.parametrize("B, Hq, Hkv, L, D, block", SHAPES)
def test_mask_and_budgets_equal_the_written_rule(B, Hq, Hkv, L, D, block, causal):
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=L, D=D, seed=L)
    m = spattn.methods.get("proxyattn", block_size=block)
    got = m.estimate(w.q, w.k, causal=causal)
    mask, budgets = reference_proxyattn(w.q, w.k, block=block, causal=causal)
    np.testing.assert_array_equal(m.last_info["budgets"], budgets)
    np.testing.assert_array_equal(got.blocks, mask)


@pytest.mark.parametrize("gamma", [0.5, 0.99])
def test_other_gammas_on_random_inputs(gamma):
    q, k, _ = make_qkv(1, 4, 2, 900, 900, 64, seed=3)
    m = spattn.methods.get("proxyattn", gamma=gamma)
    got = m.estimate(q, k, causal=True)
    mask, budgets = reference_proxyattn(q, k, gamma=gamma)
    np.testing.assert_array_equal(m.last_info["budgets"], budgets)
    np.testing.assert_array_equal(got.blocks, mask)


def test_tiny_gamma_keeps_the_top_proxy_block_block_0_and_the_diagonal():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=1000, D=64, seed=4)
    m = spattn.methods.get("proxyattn", gamma=1e-6)
    got = m.estimate(w.q, w.k, causal=True).blocks
    assert np.all(m.last_info["budgets"] == 1)
    counts = got.sum(-1)
    assert np.all(counts <= 3) and np.all(got[..., 0])
    assert np.all(np.diagonal(got, axis1=-2, axis2=-1))


def test_heads_of_a_group_share_the_ranking_and_differ_by_budget():
    w = spattn.synthetic.structured_qkv(B=1, Hq=8, Hkv=2, N=1300, D=64, seed=6)
    m = spattn.methods.get("proxyattn", gamma=0.8)
    got = m.estimate(w.q, w.k, causal=True).blocks[0]
    kb = m.last_info["budgets"][0]
    for g in range(2):
        heads = sorted(range(4 * g, 4 * g + 4), key=lambda h: kb[h])
        for a, b in zip(heads, heads[1:]):  # smaller budget -> subset of the larger one's blocks
            assert np.all(got[a] <= got[b]), (a, b)
    assert len(set(kb.tolist())) > 1  # heads differ in sparsity


def test_mha_proxy_is_the_head_itself():
    q, k, _ = make_qkv(1, 2, 2, 600, 600, 64, seed=7)
    m = spattn.methods.get("proxyattn")
    both = m.estimate(q, k, causal=True).blocks
    for h in range(2):
        one = m.estimate(q[:, h:h + 1], k[:, h:h + 1], causal=True).blocks
        np.testing.assert_array_equal(one[:, 0], both[:, h])


@pytest.mark.parametrize("causal", [True, False])
def test_output_is_float64_attention_restricted_to_the_mask(causal):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=555, D=64, seed=8)
    m = spattn.methods.get("proxyattn", block_size=64, gamma=0.7)
    out, lse = m(w.q, w.k, w.v, causal=causal, return_lse=True)
    mask = m.estimate(w.q, w.k, causal=causal)
    allowed = mask.to_dense(causal=False)
    assert_matches(out, lse, *ref_attention(w.q, w.k, w.v, causal=causal, allowed=allowed))
    assert m.readouts()["mean_budget"] >= 1


def test_parameters_have_the_documented_provisional_defaults():
    assert _core.ProxyAttnParams().to_dict() == {"block_size": 128, "gamma": 0.9}


@pytest.mark.parametrize("params, msg", [
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=1.5), "gamma"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(block_size=0), "block_size"),
])
def test_bad_parameters_raise_naming_them(params, msg):
    with pytest.raises(ValueError, match=msg):
        spattn.methods.get("proxyattn", **params)


def test_chunked_and_decode_calls_are_refused():
    q, k, _ = make_qkv(1, 2, 1, 300, 300, 64)
    m = spattn.methods.get("proxyattn")
    with pytest.raises(ValueError, match="Nq=100, Nk=300"):
        m.estimate(q[:, :, :100], k, causal=True)
    with pytest.raises(ValueError, match="Nq=1, Nk=300"):
        m.estimate(q[:, :, :1], k, causal=True)
    with pytest.raises(ValueError, match="prefill"):
        _core.estimate_proxyattn(q[:, :, :100], k, True, None, _core.ProxyAttnParams())
