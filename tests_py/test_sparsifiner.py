"""Sparsifiner against a float64 numpy reference that follows the official eval path
(lim142857/Sparsifiner ``src/models/sparsifiner.py``: ``MaskPredictor.forward`` then
``Attention.forward``) step by step, one (batch, head) at a time; the phase-1 gradients against
finite differences; the trained length enforced."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import spattn
from spattn.methods.sparsifiner import SparsifinerPredictor, init_predictor, predictor_loss_and_grads
from conftest import make_qkv, ref_attention


def random_predictor(n, d, seed, std=0.1):
    """A predictor with weights large enough that the basis threshold keeps some entries."""
    p = init_predictor(n, d, seed=seed)
    rng = np.random.default_rng(seed + 100)
    return SparsifinerPredictor(**{f: (rng.standard_normal(a.shape) * std).astype(np.float32)
                                   for f, a in p.arrays().items()})


def official_mask(pred, q, k, keep_rate=0.25, thr=0.02, coef_topk=8):
    """(B, Hq, N, N) bool: the official MaskPredictor mask (ties to the lower key index)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    W = {f: np.asarray(a, np.float64) for f, a in pred.arrays().items()}
    kk = math.ceil(keep_rate * N)
    mask = np.zeros((B, Hq, N, N), bool)
    for b in range(B):
        for h in range(Hq):
            qc = q[b, h] @ W["wq"] + W["bq"]                       # proj_c_q
            kc = k[b, h // G] @ W["wk"] + W["bk"]                  # proj_c_k
            kd = kc.T @ W["proj_n"]                                # k^T @ proj_n -> (c, r)
            cheap = (qc @ kd) * Hq ** -0.5                         # scale: num_heads ** -0.5
            cheap = cheap[1:]                                      # drop the CLS query
            coef = np.exp(cheap - cheap.max(1, keepdims=True))
            coef /= coef.sum(1, keepdims=True)
            basis = np.abs(W["proj_back_n"].T)
            basis[basis <= thr] = 0.0
            for row in coef:                                       # BASIS_COEF top-k, rest zero
                drop = np.argsort(-row, kind="stable")[coef_topk:]
                row[drop] = 0.0
            approx = coef @ basis
            for i in range(1, N):
                mask[b, h, i, np.argsort(-approx[i - 1], kind="stable")[:kk]] = True
            mask[b, h, 0] = True                                   # the CLS row attends every key
    return mask


@pytest.mark.parametrize("B, Hq, Hkv, N, D", [(1, 4, 2, 197, 64), (2, 2, 2, 101, 80), (1, 4, 2, 77, 128)])
def test_matches_the_official_eval_path(B, Hq, Hkv, N, D):
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    pred = random_predictor(N, D, seed=D)
    m = spattn.methods.get("sparsifiner", predictor=pred)
    ref_mask = official_mask(pred, q, k)
    mask = m.estimate(q, k)
    np.testing.assert_array_equal(mask.to_dense(N), ref_mask)
    assert (ref_mask[:, :, 1:].sum(-1) == math.ceil(0.25 * N)).all()  # 50 of 197 at the official shape
    out, lse = m(q, k, v, return_lse=True)
    ref = ref_attention(q, k, v, allowed=ref_mask)
    np.testing.assert_allclose(out, ref[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lse, ref[1], rtol=1e-5, atol=1e-5)


def test_phase1_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    q, k, _ = make_qkv(1, 4, 2, 13, 13, 8, seed=3)
    w = {f: a.astype(np.float64) for f, a in random_predictor(13, 8, seed=1, std=0.3).arrays().items()}
    target = rng.random((1, 4, 12, 13))
    _, grads = predictor_loss_and_grads(w, q, k, target)
    for f in w:
        for _ in range(2):
            i = tuple(int(rng.integers(0, s)) for s in w[f].shape)
            up = {a: b.copy() for a, b in w.items()}
            dn = {a: b.copy() for a, b in w.items()}
            up[f][i] += 1e-6
            dn[f][i] -= 1e-6
            fd = (predictor_loss_and_grads(up, q, k, target)[0] - predictor_loss_and_grads(dn, q, k, target)[0]) / 2e-6
            np.testing.assert_allclose(grads[f][i], fd, rtol=1e-4, atol=1e-9)


def test_fit_lowers_the_reconstruction_loss_and_binds_the_length():
    w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=65, D=32, seed=1)
    m = spattn.methods.get("sparsifiner")
    res = m.fit([(w.q, w.k)], steps=40, lr=1e-2, progress=False)
    assert res.losses[-1] < res.losses[0]
    assert m.fitted and m.params["predictor"].n == 65
    assert m.estimate(w.q, w.k).indices.shape == (1, 2, 65, 65)
    q, k, v = make_qkv(1, 2, 1, 64, 64, 32)
    with pytest.raises(ValueError, match="trained at sequence length N=65"):
        m.estimate(q, k)
    with pytest.raises(ValueError, match="keep_rate"):
        m.set_params(keep_rate=1.5)
    with pytest.raises(ValueError, match="causal"):
        m.estimate(w.q, w.k, causal=True)


FIXTURE = Path(__file__).parent / "data" / "sparsifiner_official.npz"


@pytest.mark.parametrize("case", ["vit_s", "odd"])
def test_matches_the_official_torch_mask_predictor(case):
    """The official MaskPredictor run on CPU torch (tests_py/data/make_sparsifiner_fixture.py):
    the eval mask equals spattn's, and the training approximation equals ``approx_attention``."""
    z = np.load(FIXTURE)
    g = {f: z[f"{case}/{f}"] for f in ("wq", "bq", "wk", "bk", "proj_n", "proj_back_n")}
    q, k = z[f"{case}/q"].astype(np.float32), z[f"{case}/k"].astype(np.float32)
    N = q.shape[2]
    m = spattn.methods.get("sparsifiner", predictor=SparsifinerPredictor(**g))
    mask = np.unpackbits(z[f"{case}/mask"], axis=-1, count=N).astype(bool)
    np.testing.assert_array_equal(m.estimate(q, k).to_dense(N), mask)
    approx = z[f"{case}/approx_train"]
    np.testing.assert_allclose(m.approx_attention(q, k)[:, :, :approx.shape[2]], approx, rtol=1e-4, atol=1e-6)
