"""The registry: every method runs and returns a valid mask; dense, streaming and oracle_topk
against numpy constructions."""

import math

import numpy as np
import pytest

import spattn
from conftest import make_qkv, ref_probs


@pytest.mark.parametrize("name", spattn.methods.available())
@pytest.mark.parametrize("causal", [False, True])
def test_every_method_runs_and_returns_valid_mask(name, causal):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=700, D=64, seed=1)
    m = spattn.methods.get(name)
    if not causal and not m.supports_noncausal:
        with pytest.raises(ValueError, match="causal"):
            m.estimate(w.q, w.k, causal=causal)
        return
    mask = m.estimate(w.q, w.k, causal=causal)
    assert isinstance(mask, (spattn.BlockMask, spattn.TokenIndices))
    mask.check_against(1, 4, 700, 700)
    out = m(w.q, w.k, w.v, causal=causal)
    assert out.shape == w.q.shape and np.isfinite(out).all()
    if name == "dense":
        np.testing.assert_array_equal(out, spattn.attention(w.q, w.k, w.v, causal=causal))
    elif isinstance(mask, spattn.BlockMask):  # the method is its mask run by the kernel
        ref = spattn.block_sparse_attention(w.q, w.k, w.v, mask, causal=causal)
        np.testing.assert_array_equal(out, ref)
    else:
        ref = spattn.token_sparse_attention(w.q, w.k, w.v, mask, causal=causal)
        np.testing.assert_array_equal(out, ref)
    d = mask.density(causal=causal)
    assert np.all((d > 0) & (d <= 1))
    assert repr(m).startswith("spattn.methods.get(")


def test_dense_method_is_exact():
    q, k, v = make_qkv(1, 4, 2, 100, 100, 64)
    np.testing.assert_array_equal(spattn.methods.get("dense")(q, k, v, causal=True),
                                  spattn.attention(q, k, v, causal=True))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq, nk", [(300, 300), (100, 333), (1, 500)])
def test_streaming_matches_numpy_construction(causal, nq, nk):
    bs, sink, local = 32, 40, 70
    q, k, _ = make_qkv(1, 2, 1, nq, nk, 64)
    mask = spattn.methods.get("streaming", block_size=bs, sink_tokens=sink, local_tokens=local).estimate(q, k, causal=causal)
    off = nk - nq
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    near = (j <= i + off) & (j > i + off - local) if causal else np.abs(j - (i + off)) < local
    elem = (j < sink) | near
    nqb, nkb = math.ceil(nq / bs), math.ceil(nk / bs)
    pad = np.zeros((nqb * bs, nkb * bs), bool)
    pad[:nq, :nk] = elem
    expected = pad.reshape(nqb, bs, nkb, bs).any(axis=(1, 3))
    np.testing.assert_array_equal(mask.blocks[0, 0], expected)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_oracle_topk_matches_numpy(causal, gamma):
    q, k, _ = make_qkv(1, 4, 2, 150, 170, 64, seed=3)
    q *= 2.0  # sharper rows
    bs = 32
    mask = spattn.methods.get("oracle_topk", block_size=bs, gamma=gamma).estimate(q, k, causal=causal)
    p, lse = ref_probs(q, k, causal=causal)
    nqb, nkb = math.ceil(150 / bs), math.ceil(170 / bs)
    pp = np.zeros((1, 4, nqb * bs, nkb * bs))
    pp[:, :, :150, :170] = p
    mass = pp.reshape(1, 4, nqb, bs, nkb, bs).sum(axis=(3, 5))
    valid = np.zeros((1, 4, nqb * bs))
    valid[:, :, :150] = np.isfinite(lse)
    valid = valid.reshape(1, 4, nqb, bs).sum(-1)
    for h in range(4):
        for r in range(nqb):
            if valid[0, h, r] == 0:
                assert not mask.blocks[0, h, r].any()
                continue
            row = mass[0, h, r] / valid[0, h, r]
            order = np.argsort(-row, kind="stable")
            csum = np.cumsum(row[order])
            n = int(np.searchsorted(csum, gamma * (1 - 1e-6))) + 1
            expect = np.zeros(nkb, bool)
            expect[order[: min(n, int((row > 0).sum()))]] = True
            got = mask.blocks[0, h, r]
            # Equal up to float ties at the cut: the kept mass reaches gamma and is minimal.
            assert row[got].sum() >= gamma - 1e-5
            assert got.sum() == expect.sum()
