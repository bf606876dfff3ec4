"""Routing Transformer (spattn.methods.routing) against the reference's own outputs
(tests_py/data/routing_official.npz, written by tests_py/data/make_routing_official.py from
lucidrains/routing-transformer 3f6c461 `KmeansAttention.forward`, `kmeans_iter`, `Kmeans.update`)
and against a float64 numpy reading of the same code on odd shapes, GQA, chunked and decode."""

from pathlib import Path

import numpy as np
import pytest

import spattn
from spattn.methods import routing as rt
from conftest import make_qkv

TOL = dict(atol=1e-5, rtol=1e-5)
FIXTURE = np.load(Path(__file__).parent / "data" / "routing_official.npz")
CASES = sorted({key.split("/")[0] for key in FIXTURE.files} - {"init", "ema"})


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ref_routing(q, k, v, mu, W, causal, *, scale=None, mem_k=None, mem_v=None, shared=False):
    """Float64 reading of KmeansAttention.forward (top-W per cluster by cosine similarity, ties to the
    lower position; softmax inside clusters; scatter_mean with eps 1e-5); GQA by repeating k/v.
    Returns out and the routing (q_idx, k_idx) as lists per (b, h, c)."""
    q, k, v, mu = (np.asarray(a, np.float64) for a in (q, k, v, mu))
    B, Hq, Nq, D = q.shape
    G = Hq // k.shape[1]
    k, v = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
    Nk = k.shape[2]
    scale = 1 / np.sqrt(D) if scale is None else scale
    qn, kn = _normalize(q), _normalize(k)
    katt = kn if shared else k
    wq, wk = min(W, Nq), min(W, Nk)
    out = np.zeros(q.shape[:3] + (v.shape[3],))
    cnt = np.zeros(q.shape[:3])
    routes = {}
    for b in range(B):
        for h in range(Hq):
            for c in range(mu.shape[1]):
                qi = np.argsort(-(qn[b, h] @ mu[h, c]), kind="stable")[:wq]
                ki = qi if shared else np.argsort(-(kn[b, h] @ mu[h, c]), kind="stable")[:wk]
                routes[b, h, c] = (qi, ki)
                logits = q[b, h, qi] @ katt[b, h, ki].T * scale
                vis = np.ones(logits.shape, bool)
                if causal:
                    vis = ki[None, :] <= qi[:, None] + (Nk - Nq)
                if shared:
                    logits[qi[:, None] == ki[None, :]] = -5e4
                vv = v[b, h, ki]
                if mem_k is not None and mem_k.shape[2] > 0:
                    mk, mv = np.asarray(mem_k[h, c], np.float64), np.asarray(mem_v[h, c], np.float64)
                    logits = np.concatenate([q[b, h, qi] @ mk.T * scale, logits], axis=1)
                    vis = np.concatenate([np.ones((wq, mk.shape[0]), bool), vis], axis=1)
                    vv = np.concatenate([mv, vv])
                s = np.where(vis, logits, -np.inf)
                mx = s.max(axis=1, keepdims=True)
                e = np.where(vis, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
                tot = e.sum(axis=1, keepdims=True)
                p = np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0)
                out[b, h, qi] += p @ vv
                cnt[b, h, qi] += 1
    return out / (cnt + 1e-5)[..., None], routes


def unit_centroids(H, C, D, seed):
    mu = np.random.default_rng(seed).standard_normal((H, C, D)).astype(np.float32)
    return mu / np.linalg.norm(mu, axis=-1, keepdims=True)


@pytest.mark.parametrize("case", CASES)
def test_output_matches_the_reference_kmeans_attention(case):
    f = {key.split("/")[1]: FIXTURE[key] for key in FIXTURE.files if key.startswith(case + "/")}
    W, causal, shared = (int(x) for x in f["config"])
    mem = f["mem_key"].shape[2] > 0
    m = spattn.methods.get("routing", window_size=W, shared_qk=bool(shared), centroids=f["centroids"],
                           mem_key=f["mem_key"] if mem else None, mem_value=f["mem_value"] if mem else None)
    out = m(f["q"], f["k"], f["v"], causal=bool(causal))
    np.testing.assert_allclose(out, f["out"], **TOL)
    ref, _ = ref_routing(f["q"], f["k"], f["v"], f["centroids"], W, bool(causal), shared=bool(shared),
                         mem_k=f["mem_key"], mem_v=f["mem_value"])
    np.testing.assert_allclose(ref, f["out"], atol=1e-5)  # the numpy reading agrees with the reference too


def test_initialisation_matches_the_reference_kmeans_iter():
    x, idx = FIXTURE["init/x"], FIXTURE["init/indices"]
    tokens = rt.kmeans_tokens(x)  # (H, B * L, D), batch-major as x.transpose(0, 1).view(h, -1, d)
    np.testing.assert_array_equal(tokens, x.transpose(1, 0, 2, 3).reshape(3, -1, 16))
    means = np.ascontiguousarray(tokens[:, idx])
    for _ in range(10):
        means, _ = spattn._core.routing_kmeans_step(tokens, means, False)
    np.testing.assert_allclose(means, FIXTURE["init/means"], **TOL)
    got = rt.fit_centroids(x, num_clusters=6, iters=10, seed=3)
    expect = np.ascontiguousarray(tokens[:, rt.init_indices(tokens.shape[1], 6, seed=3)])
    for _ in range(10):
        expect, _ = spattn._core.routing_kmeans_step(tokens, expect, False)
    np.testing.assert_array_equal(got, expect)


def test_ema_update_matches_the_reference_training_step():
    new, loss = rt.ema_update(FIXTURE["init/means"], FIXTURE["init/x"], decay=0.999, commitment=1e-4)
    np.testing.assert_allclose(new, FIXTURE["ema/means"], **TOL)
    assert loss == pytest.approx(float(FIXTURE["ema/loss"]), rel=1e-4)


SHAPES = [  # B, Hq, Hkv, Nq, Nk, D, C, W
    (1, 4, 2, 97, 97, 64, 5, 16),
    (2, 2, 2, 61, 61, 80, 3, 25),
    (1, 4, 2, 37, 101, 128, 4, 12),  # chunked prefill, Nq < Nk
    (1, 4, 2, 1, 83, 64, 6, 10),  # decode
    (1, 2, 1, 9, 9, 64, 2, 20),  # W > N
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mem", [0, 2])
def test_output_matches_float64_reference(shape, causal, mem):
    B, Hq, Hkv, Nq, Nk, D, C, W = shape
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=Nq + D)
    mu = unit_centroids(Hq, C, D, seed=C)
    rng = np.random.default_rng(1)
    mk = rng.standard_normal((Hq, C, mem, D)).astype(np.float32) if mem else None
    mv = rng.standard_normal((Hq, C, mem, D)).astype(np.float32) if mem else None
    m = spattn.methods.get("routing", window_size=W, centroids=mu, mem_key=mk, mem_value=mv)
    out = m(q, k, v, causal=causal)
    ref, routes = ref_routing(q, k, v, mu, W, causal, mem_k=mk, mem_v=mv)
    np.testing.assert_allclose(out, ref, **TOL)
    for (b, h, c), (qi, ki) in routes.items():  # the routing itself, in top-k order
        np.testing.assert_array_equal(m.last_info["q_idx"][b, h, c], qi)
        np.testing.assert_array_equal(m.last_info["k_idx"][b, h, c], ki)
    # the mask: per query the union of the keys of its clusters (causal rule applied)
    mask = m.estimate(q, k, causal=causal).to_dense(Nq)
    expect = np.zeros((B, Hq, Nq, Nk), bool)
    for (b, h, c), (qi, ki) in routes.items():
        expect[b, h, qi[:, None], ki[None, :]] = True
    if causal:
        expect &= np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + (Nk - Nq)
    np.testing.assert_array_equal(mask, expect)


@pytest.mark.parametrize("causal", [False, True])
def test_shared_qk_matches_float64_reference(causal):
    q, _, v = make_qkv(1, 4, 2, 71, 71, 64, seed=5)
    k = q[:, ::2].copy()  # shared projection: keys are (a GQA share of) the queries
    mu = unit_centroids(4, 4, 64, seed=2)
    m = spattn.methods.get("routing", window_size=15, shared_qk=True, centroids=mu)
    out = m(q, k, v, causal=causal, scale=0.2)
    ref, _ = ref_routing(q, k, v, mu, 15, causal, shared=True, scale=0.2)
    np.testing.assert_allclose(out, ref, **TOL)


def test_ties_go_to_the_lower_position_and_unrouted_tokens_get_zero():
    q = np.ones((1, 1, 20, 8), np.float32)  # every token ties with every other
    k = np.ones((1, 1, 20, 8), np.float32)
    v = np.random.default_rng(0).standard_normal((1, 1, 20, 8)).astype(np.float32)
    m = spattn.methods.get("routing", window_size=6, centroids=unit_centroids(1, 2, 8, seed=0))
    out = m(q, k, v)
    np.testing.assert_array_equal(m.last_info["q_idx"][0, 0], np.tile(np.arange(6), (2, 1)))
    np.testing.assert_array_equal(m.last_info["k_idx"][0, 0], np.tile(np.arange(6), (2, 1)))
    assert np.all(out[0, 0, 6:] == 0)  # taken by no cluster
    # both clusters took queries 0..5 with the same keys: the mean of two equal outputs / (2 + eps)
    np.testing.assert_allclose(out[0, 0, :6], np.tile(v[0, 0, :6].mean(0), (6, 1)) * 2 / (2 + 1e-5), **TOL)


def test_default_fits_centroids_per_call_deterministically():
    q, k, v = make_qkv(1, 4, 2, 300, 300, 64, seed=3)
    m = spattn.methods.get("routing", window_size=64)
    a = m(q, k, v, causal=True)
    mu = m.last_info["centroids"]
    assert mu.shape == (4, 300 // 64, 64)
    np.testing.assert_array_equal(mu, rt.fit_centroids(q, k, num_clusters=4, iters=10, seed=0))
    np.testing.assert_array_equal(a, m(q, k, v, causal=True))
    fixed = spattn.methods.get("routing", window_size=64, centroids=mu)
    np.testing.assert_array_equal(fixed(q, k, v, causal=True), a)


def test_fit_keeps_centroids_and_reports_commitment_losses():
    data = [make_qkv(1, 4, 2, 200, 200, 64, seed=s)[:2] for s in (1, 2)]
    m = spattn.methods.get("routing", window_size=50)
    res = m.fit(data, steps=4)
    assert m.fitted and m.params["centroids"].shape == (4, 4, 64) and len(res.losses) == 4
    x = np.concatenate([rt.kmeans_tokens(q, k) for q, k in data], axis=1)
    mu = rt._fit_tokens(x, 4, 10, 0)
    for s in range(4):
        mu, _ = rt.ema_update(mu, *data[s % 2])
    np.testing.assert_array_equal(m.params["centroids"], mu)


def test_support_is_the_mask():
    q, k, v = make_qkv(1, 2, 1, 150, 150, 64, seed=9)
    m = spattn.methods.get("routing", window_size=20, centroids=unit_centroids(2, 3, 64, seed=4))
    out = m(q, k, v, causal=True)
    used = m.estimate(q, k, causal=True).to_dense(150).any(axis=(1, 2))[0]  # kv head 0
    assert not used.all()
    v2 = v.copy()
    v2[0, 0, ~used] = 1e3
    np.testing.assert_array_equal(m(q, k, v2, causal=True), out)


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = make_qkv(1, 4, 2, 40, 40, 16, seed=0)
    with pytest.raises(ValueError, match="centroids"):
        spattn.methods.get("routing", centroids=np.ones((4, 3, 8), np.float32))(q, k, v)
    with pytest.raises(ValueError, match="centroids"):
        spattn.methods.get("routing", centroids=np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        spattn.methods.get("routing", centroids=np.full((4, 3, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="mem_key and mem_value"):
        spattn.methods.get("routing", mem_key=np.ones((4, 3, 1, 16), np.float32))
    with pytest.raises(ValueError, match="num_clusters"):
        spattn.methods.get("routing", num_clusters=2, centroids=np.ones((4, 3, 16), np.float32))
    mem = np.ones((4, 2, 1, 16), np.float32)
    with pytest.raises(ValueError, match="mem_key"):
        spattn.methods.get("routing", num_clusters=3, mem_key=mem, mem_value=mem)(q, k, v)
    with pytest.raises(ValueError, match="window_size"):
        spattn.methods.get("routing", window_size=0)
    with pytest.raises(ValueError, match="shared_qk needs Nq == Nk"):
        spattn.methods.get("routing", shared_qk=True)(q[:, :, :10], k, v)
    with pytest.raises(ValueError, match="return_lse"):
        spattn.methods.get("routing")(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="k head dim"):
        spattn.methods.get("routing")(q, k[..., :8], v)
    idx = np.zeros((1, 4, 2, 3), np.int32)  # repeated positions in a cluster
    with pytest.raises(ValueError, match="distinct"):
        spattn._core.routing_attention(q, k, v, idx, idx, None, None, False, False, None)
