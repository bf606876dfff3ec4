"""SpAtten: the paper's cascade token / head pruning over a multi-layer run against a float64
numpy reference of the paper algorithm (PAPER ONLY: no official code), and the released eviction
(``SpAttenKVCache.apply_token_pruning`` of mit-han-lab/spatten-llm) against a reference of it."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import spattn
from spattn.methods.spatten import released_keep
from conftest import ATOL, RTOL, make_qkv, ref_probs

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from spatten_cases import CASES, make_scores  # noqa: E402


def ref_paper_run(layers, *, dense_layers, token_keep, head_keep, causal):
    """Per layer: (alive tokens, alive heads, output) of the paper's cascade, float64."""
    q0, k0, _ = layers[0]
    B, Hq = q0.shape[:2]
    N = k0.shape[2]
    G = Hq // k0.shape[1]
    imp, alive = np.zeros((B, N)), np.ones((B, N), bool)
    himp, halive = np.zeros((B, Hq)), np.ones((B, Hq), bool)

    def prune(score, live, share):
        new = np.zeros_like(live)
        for b in range(B):
            idx = np.flatnonzero(live[b])
            n = max(1, math.ceil(share * idx.size - 1e-9))
            new[b, idx[np.argsort(-score[b, idx], kind="stable")[:n]]] = True
        return new

    res = []
    for layer, (q, k, v) in enumerate(layers):
        if layer >= dense_layers:
            alive, halive = prune(imp, alive, token_keep), prune(himp, halive, head_keep)
        p, _ = ref_probs(q, k, causal=causal, allowed=alive[:, None, None, :])
        p = p * halive[:, :, None, None]
        out = np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), G, axis=1))
        rows = alive if q.shape[2] == N else np.ones((B, q.shape[2]), bool)
        imp = imp + np.einsum("bhij,bh,bi->bj", p, halive.astype(float), rows.astype(float))
        himp = himp + np.where(halive, np.einsum("bhid,bi->bh", np.abs(out), rows.astype(float)), 0)
        res.append((alive.copy(), halive.copy(), out))
    return res


@pytest.mark.parametrize("N, D, causal, head_keep", [(157, 64, True, 0.75), (130, 80, False, 1.0),
                                                     (101, 128, True, 0.5)])
def test_paper_cascade_matches_the_reference_over_layers(N, D, causal, head_keep):
    layers = [make_qkv(2, 4, 2, N, N, D, seed=10 * N + i) for i in range(4)]
    m = spattn.methods.get("spatten", token_keep=0.7, head_keep=head_keep, dense_layers=1)
    ref = ref_paper_run(layers, dense_layers=1, token_keep=0.7, head_keep=head_keep, causal=causal)
    for layer, ((q, k, v), (alive, halive, want)) in enumerate(zip(layers, ref)):
        est = m.estimate(q, k, causal=causal) if layer >= 1 else None
        out = m(q, k, v, causal=causal)
        assert m.last_info["phase"] == ("dense" if layer == 0 else "reuse")
        np.testing.assert_array_equal(m.state["token_alive"], alive, err_msg=f"layer {layer}")
        np.testing.assert_array_equal(m.state["head_alive"], halive, err_msg=f"layer {layer}")
        np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
        if est is not None and layer == 1:  # estimate = the next pruning call's mask (heads: carried)
            np.testing.assert_array_equal(est.indices, m.last_info["mask"].indices)
    # the cascade only shrinks: 0.7 of the alive tokens per pruning layer
    n = N
    for _ in range(3):
        n = math.ceil(0.7 * n - 1e-9)
    assert m.last_info["alive_tokens"] == n


def test_state_saves_restores_and_a_new_shape_starts_a_new_pass(tmp_path):
    layers = [make_qkv(1, 4, 2, 120, 120, 64, seed=i) for i in range(3)]
    m = spattn.methods.get("spatten", token_keep=0.5)
    for q, k, v in layers[:2]:
        m(q, k, v, causal=True)
    m.state.save(tmp_path / "s.npz")
    want = m(*layers[2], causal=True)
    m.state.restore(spattn.state.MethodState.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(m(*layers[2], causal=True), want)
    q, k, v = make_qkv(1, 4, 2, 1, 120, 64, seed=7)  # a decode call: a new pass, dense first layer
    m(q, k, v, causal=True)
    assert m.last_info["phase"] == "dense" and m.state["token_alive"].all()


def test_decode_query_prunes_by_carried_importance():
    layers = [make_qkv(1, 4, 2, 1, 200, 64, seed=20 + i) for i in range(3)]
    m = spattn.methods.get("spatten", token_keep=0.25)
    ref = ref_paper_run(layers, dense_layers=1, token_keep=0.25, head_keep=1.0, causal=True)
    for (q, k, v), (alive, _, want) in zip(layers, ref):
        np.testing.assert_allclose(m(q, k, v, causal=True), want, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(m.state["token_alive"], alive)


@pytest.mark.parametrize("name", sorted(CASES))
def test_released_lists_equal_the_official_code(name):
    """spatten_official.npz: the positions SpAttenKVCache.apply_token_pruning leaves in a pruned
    cache (CPU torch, make_spatten_fixture.py), scores = logits summed over batch and queries."""
    n, H, start, imp, rec, coming = CASES[name]
    official = np.load(DATA / "spatten_official.npz")[f"{name}/kept"]
    scores = make_scores(name).astype(np.float64).sum(axis=(0, 2))  # (H, n)
    got = released_keep(scores, start_size=start, important_size=imp, recent_size=rec, num_coming=coming)
    np.testing.assert_array_equal(got, official)
    for h in range(H):
        assert set(got[h].tolist()) == ref_released(scores, start, imp, rec, coming)[h]


def ref_released(scores, start, imp, rec, coming):
    """The official selection on a (H, kv) score, as sets per head."""
    H, n = scores.shape
    if n + coming <= start + imp + rec:
        return [set(range(n))] * H
    out = []
    for h in range(H):
        cand = np.arange(start, min(n, n - rec + coming))
        top = cand[np.argsort(-scores[h, cand], kind="stable")[:imp]]
        out.append(set(range(start)) | set(top.tolist()) | set(range(n - rec + coming, n)))
    return out


@pytest.mark.parametrize("start, coming", [(0, 0), (4, 20)])
def test_released_selection_and_cache_eviction(start, coming):
    rng = np.random.default_rng(start)
    scores = rng.standard_normal((1, 4, 413))
    keep = released_keep(scores, start_size=start, important_size=150, recent_size=150, num_coming=coming)
    want = ref_released(scores[0], start, 150, 150, coming)
    assert keep.shape == (1, 4, start + 300 - coming)  # the recent slice shrinks by num_coming
    for h in range(4):
        assert set(keep[0, h].tolist()) == want[h]
    # through a cache: the layer shrinks to the kept rows (per query head with GQA), then grows
    q, k, v = make_qkv(1, 4, 2, 1, 413, 64, seed=3)
    cache = spattn.KVCache()
    cache.append(0, k, v)
    m = spattn.methods.get("spatten", variant="released", start_size=start, num_coming=coming)
    m.evict_cache(cache, 0, scores)
    np.testing.assert_array_equal(cache.keys(0), np.take_along_axis(np.repeat(k, 2, axis=1), keep[..., None], 2))
    cache.append(0, k[:, :, :1], v[:, :, :1])
    assert cache.length(0) == keep.shape[2] + 1


def test_released_call_scores_with_its_own_queries():
    q, k, v = make_qkv(1, 4, 2, 3, 350, 64, seed=5)
    q = q[:, :, -1:]  # decode
    m = spattn.methods.get("spatten", variant="released", important_size=40, recent_size=30)
    s = np.einsum("bhd,bhjd->bhj", q[:, :, 0].astype(np.float64), np.repeat(k, 2, axis=1).astype(np.float64))
    want = ref_released(s[0], 0, 40, 30, 0)
    out = m(q, k, v, causal=True)
    idx = m.last_info["mask"].indices
    allowed = np.zeros((1, 4, 1, 350), bool)
    for h in range(4):
        assert set(idx[0, h, 0].tolist()) == want[h]
        allowed[0, h, 0, sorted(want[h])] = True
    p, _ = ref_probs(q, k, causal=True, allowed=allowed)
    np.testing.assert_allclose(out, np.einsum("bhij,bhjd->bhid", p, np.repeat(v, 2, axis=1)), rtol=RTOL, atol=ATOL)


def test_bad_parameters_name_themselves():
    for kw, exc, name in [({"variant": "x"}, ValueError, "variant"), ({"token_keep": 0.0}, ValueError, "token_keep"),
                          ({"head_keep": 2}, ValueError, "head_keep"), ({"token_keep": "a"}, TypeError, "token_keep"),
                          ({"num_coming": -1}, ValueError, "num_coming")]:
        with pytest.raises(exc, match=name):
            spattn.methods.get("spatten", **kw)
    with pytest.raises(ValueError, match="scores"):
        spattn.methods.get("spatten").evict_cache(spattn.KVCache(), 0, np.zeros((1, 1, 3)))
