"""SVG2: the estimate and the output equal the OFFICIAL pure-torch functions of
svg-project/Sparse-VideoGen 5ce7b01 (svg/kmeans_utils.py: ``batch_kmeans_Euclid`` / ``_euclid_iter``,
``identify_dynamic_map`` / ``weighted_softmax``, ``permute_tensor_by_labels``,
``dynamic_block_sparse_fwd_torch``, ``apply_inverse_permutation``, ``density_calculation``) run on CPU
from given initial centroids (tests_py/data/svg2_official.npz, written by
tests_py/data/make_svg2_official.py); the clustered kernel equals float64 attention restricted to the
pattern on odd shapes (GQA, causal, chunked, decode); a float64 numpy transcription of the official
k-means and dynamic map checks the GQA layout (keys clustered per kv head); the centroid cache
warm-starts the next call."""

from pathlib import Path

import numpy as np
import pytest

import spattn
from conftest import assert_matches, make_qkv, ref_attention, ref_probs

FIXTURE = np.load(Path(__file__).parent / "data" / "svg2_official.npz")


def official(tag):
    return {name.split("/", 1)[1]: FIXTURE[name] for name in FIXTURE.files if name.startswith(tag + "/")}


def method_for(f, **extra):
    Cq, Ck, top_p, ratio, iters = f["params"]
    return spattn.methods.get("svg2", num_q_centroids=int(Cq), num_k_centroids=int(Ck), top_p_kmeans=float(top_p),
                              min_kc_ratio=float(ratio), kmeans_iter_init=int(iters), **extra)


def check_against_official(m, f, mask, out):
    info = m.last_info
    for name in ("q_labels", "k_labels", "q_sizes", "k_sizes", "q_iters", "k_iters"):
        np.testing.assert_array_equal(info[name], np.broadcast_to(f[name], info[name].shape), err_msg=name)
    np.testing.assert_allclose(info["q_centroids"], f["q_centroids"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(info["k_centroids"], f["k_centroids"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(mask.map, f["map"])
    np.testing.assert_allclose(mask.density(), f["density"], rtol=1e-6)
    np.testing.assert_allclose(out, f["out"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("tag", ["a", "b", "c"])
def test_estimate_and_output_equal_the_official_functions(tag):
    f = official(tag)
    m = method_for(f).init_centroids(f["q_init"], f["k_init"])
    mask = m.estimate(f["q"], f["k"])
    assert isinstance(mask, spattn.ClusteredMask) and not m.last_info["warm_start"]
    out = m(f["q"], f["k"], f["v"])  # the same inputs: the same start again
    assert m.last_info["warm_start"] is False
    check_against_official(m, f, mask, out)


def test_warm_start_from_the_cached_centroids_equals_the_official_step():
    """The official kmeans_step: the next call starts from the centroids the previous call returned
    and runs kmeans_iter_step (2) iterations."""
    a, w = official("a"), official("a_warm")
    m = method_for(a, kmeans_iter_step=2).init_centroids(a["q_init"], a["k_init"])
    m.estimate(a["q"], a["k"])
    np.testing.assert_array_equal(m.centroids[0], m.last_info["q_centroids"])
    mask = m.estimate(w["q"], w["k"])
    assert m.last_info["warm_start"]
    out = spattn.sparse_attention(w["q"], w["k"], w["v"], mask)
    check_against_official(m, w, mask, out)


# ---------------------------------------------------------------------------------------- references
def ref_pattern(mask):
    """Element mask (B, Hq, Nq, Nk) of a ClusteredMask, written from the definition."""
    ql, kl, cmap = mask.q_labels, mask.k_labels, mask.map
    B, Hq, Nq = ql.shape
    G = Hq // kl.shape[1]
    allowed = np.zeros((B, Hq, Nq, kl.shape[2]), bool)
    for b in range(B):
        for h in range(Hq):
            allowed[b, h] = cmap[b, h][ql[b, h]][:, kl[b, h // G]]
    return allowed


def ref_kmeans(x, cent, max_iters, tol=1e-4):
    """The official batch_kmeans_Euclid in float64: x (heads, n, d), cent (heads, c, d)."""
    x = np.asarray(x, np.float64)
    cent = np.asarray(cent, np.float64).copy()
    c = cent.shape[1]
    for _ in range(max_iters):
        dist = (x ** 2).sum(-1)[:, :, None] + (cent ** 2).sum(-1)[:, None, :] - 2 * x @ np.swapaxes(cent, 1, 2)
        labels = np.maximum(dist, 0).argmin(-1)
        new = cent.copy()
        sizes = np.zeros((x.shape[0], c), np.int64)
        for h in range(x.shape[0]):
            sizes[h] = np.bincount(labels[h], minlength=c)
            for j in np.flatnonzero(sizes[h]):
                new[h, j] = x[h, labels[h] == j].mean(0)
        shift = np.linalg.norm(new - cent, axis=-1).max()
        if shift < tol:
            break
        cent = new
    return labels, cent, sizes


def ref_dynamic_map(qc, kc, k_sizes, top_p, ratio, scale):
    """The official identify_dynamic_map in float64 (stable sort: ties to the lower index)."""
    s = qc @ np.swapaxes(kc, -1, -2) * scale
    e = k_sizes[..., None, :] * np.exp(s - s.max(-1, keepdims=True))
    p = e / np.maximum(e.sum(-1, keepdims=True), 1e-12)
    order = np.argsort(-p, axis=-1, kind="stable")
    cum = np.cumsum(np.take_along_axis(p, order, -1), -1)
    remove = np.zeros_like(cum, bool)
    remove[..., 1:] = cum[..., :-1] > top_p
    remove[..., :int(ratio * kc.shape[-2])] = False
    out = np.zeros(p.shape, bool)
    np.put_along_axis(out, order, ~remove, -1)
    return out


def clustered_inputs(B, Hq, Hkv, Nq, Nk, D, seed, centers=5):
    """Inputs around a few centres per head, so that the clusters are well separated (no near ties)."""
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(B, Hq, Hkv, Nq, Nk, D, seed=seed)
    cq = rng.standard_normal((B, Hq, centers, D)) * 3
    ck = rng.standard_normal((B, Hkv, centers, D)) * 3
    q = (q + np.take_along_axis(cq, rng.integers(0, centers, (B, Hq, Nq, 1)), 2)).astype(np.float32)
    k = (k + np.take_along_axis(ck, rng.integers(0, centers, (B, Hkv, Nk, 1)), 2)).astype(np.float32)
    return q, k, v


SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 4, 2, 301, 301, 64),
    (2, 2, 2, 97, 211, 80),
    (1, 4, 1, 1, 517, 128),
    (1, 2, 1, 250, 130, 64),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}Hq{}Hkv{}Nq{}Nk{}D{}".format(*s))
@pytest.mark.parametrize("causal", [False, True])
def test_output_is_attention_over_the_selected_clusters(shape, causal):
    B, Hq, Hkv, Nq, Nk, D = shape
    q, k, v = clustered_inputs(B, Hq, Hkv, Nq, Nk, D, seed=Nq + Nk)
    m = spattn.methods.get("svg2", num_q_centroids=17, num_k_centroids=41, top_p_kmeans=0.6)
    mask = m.estimate(q, k, causal=causal)
    out, lse = m(q, k, v, causal=causal, return_lse=True)
    allowed = ref_pattern(mask)
    assert_matches(out, lse, *ref_attention(q, k, v, causal=causal, allowed=allowed))
    out2, lse2 = spattn.cluster_block_attention(q, k, v, mask, causal=causal, return_lse=True)
    np.testing.assert_array_equal(out, out2)
    # density: visible selected pairs over visible pairs; non-causal the official density_calculation
    vis = np.ones((Nq, Nk), bool) if not causal else np.arange(Nk)[None] <= np.arange(Nq)[:, None] + Nk - Nq
    np.testing.assert_allclose(mask.density(causal=causal), (allowed & vis).sum((2, 3)) / max(vis.sum(), 1),
                               rtol=1e-12)
    if not causal:
        qs, ks = mask.q_sizes, np.repeat(mask.k_sizes, Hq // Hkv, axis=1)
        official = (mask.map * qs[..., :, None] * ks[..., None, :]).sum((2, 3)) / (Nq * Nk)
        np.testing.assert_allclose(mask.density(), official, rtol=1e-12)
    np.testing.assert_array_equal(mask.to_dense(causal=causal), allowed & vis)
    np.testing.assert_array_equal(mask.to_token_indices(causal=causal).to_dense(Nq, causal=causal), allowed & vis)
    # recall: the exact softmax mass inside the pattern
    p, lse_ref = ref_probs(q, k, causal=causal)
    rows = np.isfinite(lse_ref)
    want = np.where(rows, (p * allowed).sum(-1), 0).sum(-1) / np.maximum(rows.sum(-1), 1)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, mask, causal=causal), want, atol=1e-5)


@pytest.mark.parametrize("Hq, Hkv", [(4, 2), (2, 2), (4, 1)])
def test_kmeans_and_map_follow_the_official_code_with_keys_clustered_per_kv_head(Hq, Hkv):
    B, N, D, Cq, Ck = 1, 203, 64, 7, 23
    q, k, _ = clustered_inputs(B, Hq, Hkv, N, N, D, seed=Hq * 10 + Hkv)
    rng = np.random.default_rng(5)
    qi = np.stack([q[0, h, rng.permutation(N)[:Cq]] for h in range(Hq)])[None]
    ki = np.stack([k[0, h, rng.permutation(N)[:Ck]] for h in range(Hkv)])[None]
    m = spattn.methods.get("svg2", num_q_centroids=Cq, num_k_centroids=Ck, min_kc_ratio=0.2)
    mask = m.init_centroids(qi, ki).estimate(q, k)
    ql, qc, qs = ref_kmeans(q[0], qi[0], 50)
    kl, kc, ks = ref_kmeans(k[0], ki[0], 50)
    np.testing.assert_array_equal(mask.q_labels[0], ql)
    np.testing.assert_array_equal(mask.k_labels[0], kl)
    np.testing.assert_array_equal(m.last_info["k_sizes"][0], ks)
    np.testing.assert_allclose(m.last_info["k_centroids"][0], kc, atol=1e-4)
    G = Hq // Hkv
    want = ref_dynamic_map(m.last_info["q_centroids"][0].astype(np.float64),
                           np.repeat(m.last_info["k_centroids"][0], G, 0).astype(np.float64),
                           np.repeat(m.last_info["k_sizes"][0], G, 0), 0.9, 0.2, 1 / np.sqrt(D))
    np.testing.assert_array_equal(mask.map[0], want)


def test_cluster_counts_are_clamped_to_the_lengths():
    q, k, v = make_qkv(1, 2, 1, 5, 9, 64, seed=3)
    m = spattn.methods.get("svg2")  # 300 / 1000 clusters by default
    mask = m.estimate(q, k)
    assert (mask.num_q_clusters, mask.num_k_clusters) == (5, 9)
    out = m(q, k, v)
    assert np.isfinite(out).all()
    # decode: one query cluster
    mask = spattn.methods.get("svg2").estimate(q[:, :, :1], k, causal=True)
    assert mask.num_q_clusters == 1 and mask.q_len == 1


@pytest.mark.parametrize("nq, nk", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_empty_lengths_give_empty_patterns(nq, nk, causal):
    q, k, v = make_qkv(1, 2, 1, nq, nk, 16, seed=1)
    m = spattn.methods.get("svg2")
    mask = m.estimate(q, k, causal=causal)
    assert (mask.num_q_clusters, mask.num_k_clusters) == (min(nq, 300), min(nk, 1000))
    out, lse = m(q, k, v, causal=causal, return_lse=True)
    assert out.shape == q.shape and np.all(out == 0) and np.all(np.isneginf(lse))
    np.testing.assert_array_equal(mask.density(causal=causal), np.zeros((1, 2)))


def test_the_top_cluster_and_the_min_ratio_are_always_kept():
    q, k, _ = clustered_inputs(1, 2, 2, 200, 200, 64, seed=9)
    tiny = spattn.methods.get("svg2", num_q_centroids=8, num_k_centroids=30, top_p_kmeans=1e-6, min_kc_ratio=0.0)
    assert (tiny.estimate(q, k).map.sum(-1) == 1).all()  # top-1 only
    some = spattn.methods.get("svg2", num_q_centroids=8, num_k_centroids=30, top_p_kmeans=1e-6, min_kc_ratio=0.2)
    assert (some.estimate(q, k).map.sum(-1) == 6).all()  # int(0.2 * 30)
    full = spattn.methods.get("svg2", num_q_centroids=8, num_k_centroids=30, top_p_kmeans=1.0, min_kc_ratio=1.0)
    assert full.estimate(q, k).map.all()


# ---------------------------------------------------------------------------------------- state
def test_centroid_cache_warm_starts_resets_and_is_keyed_by_shape():
    q, k, v = clustered_inputs(1, 2, 2, 150, 150, 64, seed=4)
    m = spattn.methods.get("svg2", num_q_centroids=10, num_k_centroids=20)
    first = m.estimate(q, k)
    assert not m.last_info["warm_start"] and m.centroids is not None
    again = m.estimate(q, k)  # identical inputs: the same start, the same estimate
    assert not m.last_info["warm_start"] and m.last_info["q_iters"].max() > 2
    np.testing.assert_array_equal(again.map, first.map)
    np.testing.assert_array_equal(m(q, k, v), spattn.sparse_attention(q, k, v, first))
    q2 = q + np.float32(0.01)
    m.estimate(q2, k)
    assert m.last_info["warm_start"] and m.last_info["q_iters"].max() <= 2
    warm_map = m.last_info["map"]
    m.estimate(q2, k)  # the same warm start again
    assert m.last_info["warm_start"]
    np.testing.assert_array_equal(m.last_info["map"], warm_map)
    # a warm start is the explicit init of the cached centroids run for kmeans_iter_step iterations
    cached = m.centroids
    q3 = q - np.float32(0.02)
    warm = m.estimate(q3, k)
    replay = spattn.methods.get("svg2", num_q_centroids=10, num_k_centroids=20, kmeans_iter_init=2)
    np.testing.assert_array_equal(replay.init_centroids(*cached).estimate(q3, k).map, warm.map)
    # other head count or cluster count: cold start
    m.estimate(q[:, :1], k[:, :1])
    assert not m.last_info["warm_start"]
    m.reset()
    assert m.centroids is None
    m.estimate(q, k)
    assert not m.last_info["warm_start"] and m.last_info["q_iters"].max() > 2
    # the same seed gives the same cold start
    fresh = spattn.methods.get("svg2", num_q_centroids=10, num_k_centroids=20).estimate(q, k)
    np.testing.assert_array_equal(fresh.map, m.reset().estimate(q, k).map)
    np.testing.assert_array_equal(fresh.q_labels, m.estimate(q, k).q_labels)


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("field, value", [("top_p_kmeans", 0.0), ("top_p_kmeans", 1.5), ("min_kc_ratio", -0.1),
                                          ("min_kc_ratio", 1.5), ("num_q_centroids", 0), ("num_k_centroids", -1),
                                          ("kmeans_iter_init", 0), ("kmeans_iter_step", 0)])
def test_out_of_range_parameters_are_refused_naming_them(field, value):
    with pytest.raises(ValueError, match=f"svg2: {field} must"):
        spattn.methods.get("svg2", **{field: value})


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = make_qkv(1, 2, 1, 40, 50, 64, seed=1)
    m = spattn.methods.get("svg2", num_q_centroids=4, num_k_centroids=6)
    with pytest.raises(ValueError, match="q_centroids must have shape"):
        m.init_centroids(np.zeros((1, 2, 5, 64)), np.zeros((1, 1, 6, 64))).estimate(q, k)
    with pytest.raises(ValueError, match="k_centroids must have shape"):
        m.init_centroids(np.zeros((1, 2, 4, 64)), np.zeros((1, 1, 6, 32))).estimate(q, k)
    with pytest.raises(ValueError, match="q_centroids must have shape"):
        m.init_centroids(np.zeros((2, 4, 64)), np.zeros((1, 1, 6, 64)))
    with pytest.raises(ValueError, match="NaN"):
        m.init_centroids(np.full((1, 2, 4, 64), np.nan), np.zeros((1, 1, 6, 64)))
    mask = m.reset().estimate(q, k)
    with pytest.raises(ValueError, match="q_labels"):
        spattn.ClusteredMask(np.full((1, 2, 40), 4), mask.k_labels, mask.map)
    with pytest.raises(ValueError, match="k_labels"):
        spattn.ClusteredMask(mask.q_labels, np.full((1, 1, 50), -1), mask.map)
    with pytest.raises(TypeError, match="q_labels must be an integer array"):
        spattn.ClusteredMask(mask.q_labels.astype(float), mask.k_labels, mask.map)
    with pytest.raises(ValueError, match="map must have shape"):
        spattn.ClusteredMask(mask.q_labels, mask.k_labels, mask.map[0])
    with pytest.raises(ValueError, match="Hkv=3 must divide"):
        spattn.ClusteredMask(mask.q_labels, np.zeros((1, 3, 50), np.int32), mask.map)
    with pytest.raises(ValueError, match="made for q_len=40"):
        spattn.cluster_block_attention(q[:, :, :30], k, v, mask)
    with pytest.raises(ValueError, match=r"has \(B, Hq\)"):
        spattn.cluster_block_attention(q[:, :1], k, v, mask)
    with pytest.raises(TypeError, match="mask must be a spattn.ClusteredMask"):
        spattn.cluster_block_attention(q, k, v, spattn.BlockMask.full(1, 2, 40, 50))
    kk = np.concatenate([k, k], axis=1)
    with pytest.raises(ValueError, match="clustered pattern was made for"):
        spattn.cluster_block_attention(np.concatenate([q, q], 1)[:, :2], kk, np.concatenate([v, v], 1), mask)
