"""SEA (training-free estimator): random-feature estimate against numpy, selection and expansion
against a direct numpy construction, convergence to exact compressed attention, end to end."""

import math

import numpy as np
import pytest

import spattn
from spattn.methods import sea as sea_mod
from spattn.methods.sea import orthogonal_features
from conftest import make_qkv, ref_probs


def bounds(L, W):
    return np.rint(np.arange(W + 1) * L / W).astype(int)  # numpy rint: half to even, like torch.round


def np_estimate(q, k, feats, causal, W):
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    B, Hq, Nq, D = q.shape
    G = Hq // k.shape[1]
    w = feats.astype(np.float64)
    c = math.sqrt(1 / math.sqrt(D))
    est = np.zeros((B, Hq, Nq, W))
    for b in range(B):
        for h in range(Hq):
            ks, qs = k[b, h // G] * c, q[b, h] * c
            phk = np.exp(ks @ w.T - (ks ** 2).sum(1, keepdims=True) / 2)
            phq = np.exp(qs @ w.T - (qs ** 2).sum(1, keepdims=True) / 2)
            Z = np.vstack([np.zeros(w.shape[0]), np.cumsum(phk, 0)])
            for i in range(Nq):
                L = min(max(i + k.shape[2] - Nq + 1, 0), k.shape[2]) if causal else k.shape[2]
                if L == 0:
                    continue
                bd = bounds(L, W)
                est[b, h, i] = (phq[i] @ (Z[bd[1:]] - Z[bd[:-1]]).T) / (phq[i] @ Z[L])
    return est


def np_select(est, Nk, causal, k):
    B, H, Nq, W = est.shape
    sel = np.zeros((B, H, Nq, Nk), bool)
    for b in range(B):
        for i in range(Nq):
            L = min(max(i + Nk - Nq + 1, 0), Nk) if causal else Nk
            if L == 0:
                continue
            if L <= k:
                sel[b, :, i, :L] = True
                continue
            n = int(np.clip(np.rint(H * k * W / L), 1, H * W))
            flat = est[b, :, i].ravel()
            top = np.argsort(-flat, kind="stable")[:n]
            bd = bounds(L, W)
            for f in top:
                h, col = divmod(int(f), W)
                lo, hi = bd[col], bd[col + 1]
                sel[b, h, i, max(lo, hi - k):hi] = True
    return sel


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dims", [(1, 4, 2, 300, 300, 64), (2, 2, 1, 77, 150, 80), (1, 2, 2, 1, 500, 128)])
def test_estimate_matches_numpy(dims, causal):
    q, k, _ = make_qkv(*dims, seed=1)
    q *= 0.5
    k *= 0.5
    m = spattn.methods.get("sea", compressed_width=16, nb_features=64, seed=3)
    est = m.compressed_estimate(q, k, causal=causal)
    ref = np_estimate(q, k, m.features(q.shape[3]), causal, 16)
    np.testing.assert_allclose(est, ref, atol=2e-5)
    valid = ref.sum(-1) > 0
    np.testing.assert_allclose(est.sum(-1)[valid], 1.0, atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
def test_selection_and_expansion_match_numpy(causal):
    q, k, v = make_qkv(1, 4, 2, 200, 260, 64, seed=2)
    m = spattn.methods.get("sea", k=8, compressed_width=32, nb_features=128)
    ti = m.estimate(q, k, causal=causal)
    expect = np_select(m.last_info["estimate"].astype(np.float64), 260, causal, 8)
    np.testing.assert_array_equal(ti.to_dense(200), expect)
    out = m(q, k, v, causal=causal)
    np.testing.assert_array_equal(out, spattn.token_sparse_attention(q, k, v, ti, causal=causal))


def test_estimate_converges_to_exact_compressed_attention():
    q, k, _ = make_qkv(1, 2, 1, 256, 256, 32, seed=4)
    q *= 0.5  # logits of std 0.25: the positive-feature estimator's variance grows like exp(|q|^2 + |k|^2)
    k *= 0.5
    W = 16
    p, _ = ref_probs(q, k, causal=True)
    exact = np.zeros((1, 2, 256, W))
    for i in range(256):
        bd = bounds(i + 1, W)
        csum = np.concatenate([np.zeros((1, 2, 1)), np.cumsum(p[:, :, i, : i + 1], -1)], axis=-1)
        exact[:, :, i] = csum[..., bd[1:]] - csum[..., bd[:-1]]
    errs = []
    for m_feat in (8, 64, 512, 4096):
        est = spattn.methods.get("sea", compressed_width=W, nb_features=m_feat, seed=5).compressed_estimate(q, k, causal=True)
        errs.append(np.abs(est - exact).sum(-1).mean())
    assert all(a > b for a, b in zip(errs, errs[1:])), errs  # L1 error per row shrinks with m
    assert errs[-1] < 0.03 and errs[-1] < 0.2 * errs[0], errs


def test_budget_keys_per_query_and_dense_short_prefixes():
    w = spattn.synthetic.structured_qkv(Hq=4, Hkv=2, N=2048, D=64, seed=1)
    m = spattn.methods.get("sea", k=32, compressed_width=64)
    ti = m.estimate(w.q, w.k, causal=True)
    used = (ti.indices >= 0).sum(-1)  # (B, H, N)
    np.testing.assert_array_equal(used[0, :, :32], np.arange(1, 33)[None, :].repeat(4, 0))  # dense prefix
    per_query = used[0, :, 1024:].sum(0)
    assert np.all(per_query <= 4 * 32 * 1.3) and np.all(per_query >= 4 * 32 * 0.7)
    # Training-free random features are noisy on sharp heads, but far better than chance.
    rec = spattn.metrics.recall(w.q, w.k, ti, causal=True)
    dens = ti.density(q_len=2048, causal=True)
    assert np.all(rec > 2 * dens) and rec.mean() > 4 * dens.mean(), (rec, dens)


def test_orthogonal_features_are_orthogonal_blocks():
    w = orthogonal_features(100, 32, seed=1)
    assert w.shape == (100, 32)
    blk = w[:32] / np.linalg.norm(w[:32], axis=1, keepdims=True)
    np.testing.assert_allclose(blk @ blk.T, np.eye(32), atol=1e-5)


def test_bad_parameters():
    with pytest.raises(ValueError, match="k must be >= 1"):
        spattn.methods.get("sea", k=0)
    with pytest.raises(TypeError, match="compressed_width must be an int"):
        spattn.methods.get("sea", compressed_width=1.5)


# ----------------------------------------------------------------------------- learned decoder


def test_exact_compressed_targets_match_float64():
    q, k, _ = make_qkv(1, 4, 2, 150, 300, 64, seed=3)
    for causal in (True, False):
        mass, psq, plogp = spattn._core.compressed_attention_targets(q, k, causal, 1 / 8, 16)
        p, _ = ref_probs(q, k, causal=causal)
        counts = sea_mod.column_counts(150, 300, 16, causal)
        for i in (0, 77, 149):
            L = counts[i].sum()
            bd = bounds(L, 16)
            cs = np.concatenate([np.zeros((1, 4, 1)), np.cumsum(p[:, :, i, :L], -1)], -1)
            np.testing.assert_allclose(mass[:, :, i], cs[..., bd[1:]] - cs[..., bd[:-1]], atol=1e-6)
        np.testing.assert_allclose(psq, (p ** 2).sum(-1), atol=1e-6)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.testing.assert_allclose(plogp, np.where(p > 0, p * np.log(p), 0).sum(-1), atol=1e-5)


def test_distillation_loss_equals_direct_full_resolution_loss():
    q, k, _ = make_qkv(1, 2, 1, 90, 90, 32, seed=6)
    W = 8
    s = sea_mod.prepare_sample(q, k, compressed_width=W, causal=True, nb_features=64)
    z = np.random.default_rng(1).normal(size=s.est.shape)
    loss, _ = sea_mod.distillation_loss(z, s)
    p, _ = ref_probs(q, k, causal=True)
    kl = mse = 0.0
    for h in range(2):
        for i in range(90):
            L = i + 1
            cols = np.searchsorted(bounds(L, W), np.arange(L), side="right") - 1
            logits = z[0, h, i, cols]
            Q = np.exp(logits - logits.max())
            Q /= Q.sum()
            P = p[0, h, i, :L]
            kl += np.sum(np.where(P > 0, P * np.log(np.where(P > 0, P, 1) / Q), 0))
            mse += np.sum((Q - P) ** 2)
    expect = 0.1 * kl / (2 * 90) + mse / (2 * 90 * 90)
    assert loss == pytest.approx(expect, rel=1e-5)


def test_decoder_gradients_match_finite_differences():
    q, k, _ = make_qkv(1, 2, 1, 64, 64, 32, seed=7)
    s = sea_mod.prepare_sample(q, k, compressed_width=8, causal=True, nb_features=32)
    dec = sea_mod.SeaDecoder.init(2, 8, channels=3, seed=2, init_std=0.3)
    rng = np.random.default_rng(3)
    dec.w3[:] = rng.normal(0, 0.3, dec.w3.shape)
    dec.bias[:] = rng.normal(0, 0.3, dec.bias.shape)

    def total():
        return sea_mod.distillation_loss(dec.logits(s.est)[0], s)[0]

    z, cache = dec.logits(s.est)
    grads = dec.backward(sea_mod.distillation_loss(z, s)[1], cache)
    for p, g in zip(dec.params(), grads):
        for _ in range(4):
            idx = tuple(rng.integers(0, n) for n in p.shape)
            old = p[idx]
            p[idx] = old + 1e-6
            lp = total()
            p[idx] = old - 1e-6
            lm = total()
            p[idx] = old
            assert abs((lp - lm) / 2e-6 - g[idx]) <= 1e-7 + 1e-4 * abs(g[idx])


def test_untrained_decoder_is_the_training_free_estimate():
    w = spattn.synthetic.structured_qkv(Hq=2, Hkv=1, N=300, D=32, seed=2)
    plain = spattn.methods.get("sea", k=8, compressed_width=16)
    dec = sea_mod.SeaDecoder.init(2, 16)
    refined = spattn.methods.get("sea", k=8, compressed_width=16, decoder=dec)
    est = plain.compressed_estimate(w.q, w.k, causal=True)
    out = dec.refine(est, sea_mod.column_counts(300, 300, 16, True))
    np.testing.assert_allclose(out, est / est.sum(-1, keepdims=True), atol=1e-4)
    assert refined.estimate(w.q, w.k, causal=True).indices.shape[2] == 300


def test_training_lowers_loss_and_raises_recall_at_equal_k(tmp_path):
    train = [tuple(spattn.synthetic.structured_qkv(Hq=4, Hkv=2, N=1024, D=64, seed=s))[:2] for s in range(1, 4)]
    test = spattn.synthetic.structured_qkv(Hq=4, Hkv=2, N=1024, D=64, seed=0)
    res = sea_mod.train_decoder(train, compressed_width=32, steps=150, progress=False)
    assert np.mean(res.losses[-10:]) < 0.8 * np.mean(res.losses[:5])
    rec, dens = {}, {}
    for name, dec in (("free", None), ("trained", res.decoder)):
        ti = spattn.methods.get("sea", k=16, compressed_width=32, decoder=dec).estimate(test.q, test.k, causal=True)
        rec[name] = spattn.metrics.recall(test.q, test.k, ti, causal=True).mean()
        dens[name] = ti.density(q_len=1024, causal=True).mean()
    assert abs(dens["free"] - dens["trained"]) < 0.1 * dens["free"]  # equal k -> equal density
    assert rec["trained"] > rec["free"] + 0.1, rec
    path = str(tmp_path / "decoder.npz")
    sea_mod.save_decoder(path, res.decoder)
    again = sea_mod.load_decoder(path)
    a = spattn.methods.get("sea", k=16, compressed_width=32, decoder=res.decoder).estimate(test.q, test.k, causal=True)
    b = spattn.methods.get("sea", k=16, compressed_width=32, decoder=again).estimate(test.q, test.k, causal=True)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_decoder_parameter_errors():
    with pytest.raises(TypeError, match="SeaDecoder"):
        spattn.methods.get("sea", decoder="x")
    with pytest.raises(ValueError, match="compressed_width"):
        spattn.methods.get("sea", compressed_width=64, decoder=sea_mod.SeaDecoder.init(2, 32))


def test_chunked_inference_logits_equal_training_logits():
    rng = np.random.default_rng(4)
    est = rng.dirichlet(np.ones(16), size=(1, 3, 1300))
    dec = sea_mod.SeaDecoder.init(3, 16, seed=1, init_std=0.3)
    dec.w3[:] = rng.normal(0, 0.3, dec.w3.shape)
    np.testing.assert_allclose(dec._logits_infer(est, chunk=256), dec.logits(est)[0], rtol=1e-4, atol=1e-4)


def test_cpp_refine_matches_numpy_refine():
    rng = np.random.default_rng(5)
    T, W = 700, 24
    est = rng.dirichlet(np.ones(W), size=(2, 3, T)).astype(np.float32)
    counts = sea_mod.column_counts(T, T, W, True)
    est[..., counts == 0] = 0
    dec = sea_mod.SeaDecoder.init(3, W, channels=5, seed=1, init_std=0.3)
    dec.w3[:] = rng.normal(0, 0.3, dec.w3.shape)
    dec.bias[:] = rng.normal(0, 0.3, dec.bias.shape)
    np.testing.assert_allclose(dec.refine(est, counts), dec.refine_numpy(est, counts), atol=2e-5)
