"""SwinBERT's learned mask against a float64 reference of the official formula
(microsoft/SwinBERT VideoTransformer.forward + BERT's additive mask): A = I + (1 - I) sigmoid(W),
optional A = 1[A >= 0.5], scores += (1 - A) * -10000, softmax over every key."""

import numpy as np
import pytest

import spattn

TOL = 2e-5


def _reference(q, k, v, W, hard, causal):
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, Hq, N, D = q.shape
    g = Hq // k.shape[1]
    eye = np.eye(N)
    A = eye + (1 - eye) / (1 + np.exp(-W.astype(np.float64)))
    if hard:
        A = (A >= 0.5).astype(np.float64)
    s = np.einsum("bhid,bhjd->bhij", q, np.repeat(k, g, 1)) / np.sqrt(D) + (1 - A) * -10000.0
    if causal:
        s = np.where(np.tril(np.ones((N, N), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bhjd->bhid", p / p.sum(-1, keepdims=True), np.repeat(v, g, 1)), A


def _inputs(seed, N=53, D=64):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 4, N, D)).astype(np.float32)
    k = rng.standard_normal((1, 2, N, D)).astype(np.float32)
    v = rng.standard_normal((1, 2, N, D)).astype(np.float32)
    # a mix of open (logit ~9-12: bias -1 .. 0, soft weights matter) and closed entries
    W = np.where(rng.random((N, N)) < 0.4, 9 + 3 * rng.random((N, N)), rng.standard_normal((N, N))).astype(np.float32)
    return q, k, v, W


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("causal", [False])
def test_swinbert_matches_official_formula(hard, causal):
    q, k, v, W = _inputs(1)
    m = spattn.methods.get("swinbert", mask_logits=W, hard=hard)
    ref, A = _reference(q, k, v, W, hard, causal)
    np.testing.assert_allclose(m(q, k, v, causal=causal), ref, rtol=TOL, atol=TOL)
    dense = m.estimate(q, k, causal=False).to_dense(q.shape[2], causal=False)
    np.testing.assert_array_equal(dense[0, 0], A >= 0.5)
    assert dense[0, 0].diagonal().all()


def test_swinbert_enforces_the_fitted_length_and_unfitted_is_dense():
    q, k, v, W = _inputs(2)
    m = spattn.methods.get("swinbert", mask_logits=W)
    with pytest.raises(ValueError, match="fitted for M=53"):
        m.estimate(q[:, :, :40], k[:, :, :40])
    base = spattn.methods.get("swinbert")
    np.testing.assert_array_equal(base(q, k, v), spattn.attention(q, k, v))
    with pytest.raises(ValueError, match="mask_logits"):
        spattn.methods.get("swinbert", mask_logits=np.zeros((3, 4), np.float32))


def test_swinbert_gradient_matches_finite_differences():
    q, k, v, _ = _inputs(3, N=12, D=16)
    rng = np.random.default_rng(3)
    W = 9.0 + rng.standard_normal((12, 12))
    m = spattn.methods.get("swinbert", sparsity_weight=0.5)
    target = spattn.attention(q, k, v * 0.5).astype(np.float64)
    sample = {"q": q, "k": k, "v": v, "target": target, "causal": False, "scale": None}
    _, grad = m.loss_and_grads(W, sample)
    eps = 1e-2
    for ix in [(0, 1), (3, 7), (11, 2), (5, 5)]:
        wp, wm = W.copy(), W.copy()
        wp[ix] += eps
        wm[ix] -= eps
        num = (m.loss_and_grads(wp, sample)[0] - m.loss_and_grads(wm, sample)[0]) / (2 * eps)
        np.testing.assert_allclose(grad[ix], num, rtol=5e-2, atol=1e-6)


def test_swinbert_fit_lowers_the_loss_and_keeps_the_length():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=64, D=64, seed=4)
    m = spattn.methods.get("swinbert")
    res = m.fit([(w.q, w.k, w.v)], steps=40, lr=0.2, progress=False)
    assert m.fitted and res.mask_logits.shape == (64, 64)
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])


def test_swinbert_is_non_causal_like_the_official_video_block():
    q, k, v, W = _inputs(1)
    m = spattn.methods.get("swinbert", mask_logits=W)
    with pytest.raises(ValueError, match="non-causal"):
        m(q, k, v, causal=True)
