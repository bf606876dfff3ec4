"""GUI-KV (prefill KV eviction) against a float64 numpy reference written from the official
``GUIKVCluster.update_kv`` (SalesforceAIResearch/GUI-KV, gui_kv/gui_kv_utils.py): SnapKV window
score with avg/max pooling, hidden-state saliency on the last screenshot, QR-residual temporal
redundancy, top (cap - w) plus the last w; then the compacted KVCache and decoding over it."""

import sys
from pathlib import Path

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention, ref_probs

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from gui_kv_cases import CASES, make_inputs  # noqa: E402


def reference_keep(q, k, *, percent=10.0, window=8, alpha=2.0, temperature=3.5, kernel=5, pooling="avgpool",
                   hidden=None, spans=None, max_rank=32):
    """(kept position sets per (b, h), the final scores, the number selected) in float64."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    kk = np.repeat(np.asarray(k, np.float64), G, axis=1)  # repeat_kv
    cap = int(L * percent / 100)
    w = min(window, cap - 2)
    p, _ = ref_probs(q[:, :, L - w:], k, causal=True)  # causal corner inside the last w x w
    s = p[:, :, :, :L - w].sum(axis=2)
    pad = kernel // 2
    out = np.zeros_like(s)
    for j in range(L - w):
        lo, hi = j - pad, j + pad + 1
        vals = s[:, :, max(lo, 0):min(hi, L - w)]
        out[:, :, j] = vals.sum(-1) / kernel if pooling == "avgpool" else vals.max(-1)
    s = out
    if hidden is not None:
        a, b = spans[-1]
        n = np.linalg.norm(hidden[:, a:b].astype(np.float64), axis=-1)
        z = (n - n.mean(1, keepdims=True)) / (n.std(1, ddof=1, keepdims=True) + 1e-8)
        g = np.exp(z / temperature)
        g /= g.sum(1, keepdims=True)
        s[:, :, a:b] += alpha * g[:, None]
        if len(spans) > 1:
            for bi in range(B):
                for h in range(Hq):
                    Q, _ = np.linalg.qr(kk[bi, h, a:b].T)
                    Q = Q[:, :min(max_rank, b - a, D)]
                    res, pos = [], []
                    for x, y in spans[:-1]:
                        V = kk[bi, h, x:y]
                        res.append(np.linalg.norm(V - (Q @ (Q.T @ V.T)).T, axis=-1))
                        pos.append(np.arange(x, y))
                    res, pos = np.concatenate(res), np.concatenate(pos)
                    n0 = int((1.0 - cap / L) * len(res))
                    if n0 > 0:
                        s[bi, h, pos[np.argsort(res, kind="stable")[:n0]]] = 0
    keep = {}
    for bi in range(B):
        for h in range(Hq):
            top = np.argsort(-s[bi, h], kind="stable")[:cap - w]
            keep[bi, h] = set(top.tolist()) | set(range(L - w, L))
    return keep, s, cap - w


def assert_same_keep(got, ref):
    """Equal kept sets; a float32-vs-float64 swap is tolerated only at the top-k boundary, between
    positions whose reference scores tie within 1e-6."""
    keep, s, n = ref
    for (bi, h), want in keep.items():
        have = set(got[bi, h].tolist())
        if have == want:
            continue
        cut = np.sort(s[bi, h])[::-1][n - 1]
        for j in have ^ want:
            assert abs(s[bi, h, j] - cut) < 1e-6, f"(b={bi}, h={h}) position {j} differs away from the cut"


def screenshot_inputs(L=301, D=64, seed=0):
    q, k, v = make_qkv(1, 4, 2, L, L, D, seed=seed)
    rng = np.random.default_rng(seed + 100)
    hidden = rng.standard_normal((1, L, 48)) * rng.uniform(0.5, 2.0, (1, L, 1))
    k = k.copy()
    k[:, :, 20:80] = k[:, :, 150:210] + 0.05 * rng.standard_normal((1, 2, 60, D))  # frame 0 repeats frame 2
    return q, k, v, hidden, [(20, 80), (90, 140), (150, 210)]


@pytest.mark.parametrize("L, D, pooling", [(301, 80, "avgpool"), (257, 128, "maxpool"), (300, 64, "avgpool")])
def test_snapkv_score_keeps_the_official_lists_gqa(L, D, pooling):
    q, k, _ = make_qkv(1, 4, 2, L, L, D, seed=L)
    m = spattn.methods.get("gui_kv", pooling=pooling)
    got = m.evict(q, k)
    assert got.shape == (1, 4, int(L * 0.1)) and np.all(np.diff(got, axis=-1) > 0)
    assert_same_keep(got, reference_keep(q, k, pooling=pooling))
    assert m.last_info["window"] == 8


def test_saliency_and_temporal_redundancy_keep_the_official_lists():
    q, k, _, hidden, spans = screenshot_inputs()
    m = spattn.methods.get("gui_kv", budget_percent=20.0)
    got = m.evict(q, k, hidden_states=hidden, spans=spans)
    ref = reference_keep(q, k, percent=20.0, hidden=hidden, spans=spans)
    assert_same_keep(got, ref)
    assert not np.array_equal(got, m.evict(q, k))  # the GUI terms change the lists
    # without saliency: frame 0 repeats frame 2, and its tokens copied from the first r = 32 keys of
    # frame 2 (the basis spans those only) are redundant, so none survives
    m0 = spattn.methods.get("gui_kv", budget_percent=20.0, alpha=0.0)
    got0 = m0.evict(q, k, hidden_states=hidden, spans=spans)
    assert_same_keep(got0, reference_keep(q, k, percent=20.0, alpha=0.0, hidden=hidden, spans=spans))
    assert not np.isin(got0, np.arange(20, 52)).any() and np.isin(got0, np.arange(52, 80)).any()
    assert np.array_equal(m.evict(q, k, spans=spans), m.evict(q, k))  # spans without hidden states: SnapKV


@pytest.mark.parametrize("name", sorted(CASES))
def test_kept_lists_equal_the_official_code(name):
    """gui_kv_official.npz: GUIKVCluster.update_kv's kept_indices on these inputs (CPU torch,
    make_gui_kv_fixture.py); the official lists exclude the window, which spattn's include."""
    official = np.load(DATA / "gui_kv_official.npz")[f"{name}/kept"]
    q, k, _, h, spans, pct = make_inputs(name)
    m = spattn.methods.get("gui_kv", budget_percent=float(pct))
    got = m.evict(q, k, hidden_states=None if spans is None else h, spans=spans)
    L, w = q.shape[2], m.last_info["window"]
    keep, s, n = reference_keep(q, k, percent=pct, hidden=None if spans is None else h, spans=spans)
    for (b, hh) in keep:  # the float64 reference agrees with the official lists ...
        want = set(official[b, hh].tolist()) | set(range(L - w, L))
        assert_same_keep(np.array([[sorted(want)]]), ({(0, 0): keep[b, hh]}, s[b:b + 1, hh:hh + 1], n))
        keep[b, hh] = want
    assert_same_keep(got, (keep, s, n))  # ... and so does spattn


def test_small_rank_cap_and_two_spans():
    q, k, _, hidden, spans = screenshot_inputs(L=251, D=64, seed=3)
    spans = [(20, 80), (100, 104)]  # a 4-token current frame: rank 4
    m = spattn.methods.get("gui_kv", budget_percent=15.0, alpha=0.5, temperature=1.0, max_rank=3)
    assert_same_keep(m.evict(q, k, hidden_states=hidden, spans=spans),
                     reference_keep(q, k, percent=15.0, alpha=0.5, temperature=1.0, hidden=hidden, spans=spans,
                                    max_rank=3))


def test_prefill_is_exact_and_decode_runs_on_the_compacted_cache():
    q, k, v, hidden, spans = screenshot_inputs(L=301, D=64, seed=5)
    m = spattn.methods.get("gui_kv", budget_percent=20.0)
    cache = spattn.KVCache(initial_capacity=8)
    out = m.prefill(q, k, v, cache, layer=1, hidden_states=hidden, spans=spans)
    np.testing.assert_allclose(out, ref_attention(q, k, v, causal=True)[0], rtol=RTOL, atol=ATOL)
    keep = m.evict(q, k, hidden_states=hidden, spans=spans)
    assert cache.length(1) == keep.shape[2] == 60 and cache.keys(1).shape[1] == 4  # stored per query head
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    for h in range(4):
        np.testing.assert_array_equal(cache.keys(1)[0, h], kk[0, h, keep[0, h]])
    rng = np.random.default_rng(7)
    kept_k = np.take_along_axis(kk, keep[..., None], axis=2)
    kept_v = np.take_along_axis(vv, keep[..., None], axis=2)
    for step in range(3):  # multi-step decode: append the new token (Hkv heads), attend the cache
        qn = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
        kn = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
        vn = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
        cache.append(1, kn, vn)
        kept_k = np.concatenate([kept_k, np.repeat(kn, 2, axis=1)], axis=2)
        kept_v = np.concatenate([kept_v, np.repeat(vn, 2, axis=1)], axis=2)
        got = m.decode(qn, cache, layer=1)
        np.testing.assert_allclose(got, ref_attention(qn, kept_k, kept_v)[0], rtol=RTOL, atol=ATOL)
    assert cache.length(1) == 63


def test_call_attends_only_the_kept_keys_and_tiny_prefills_keep_everything():
    q, k, v = make_qkv(1, 4, 2, 250, 250, 64, seed=9)
    m = spattn.methods.get("gui_kv")
    mask = m.estimate(q, k, causal=True)
    np.testing.assert_array_equal(m(q, k, v, causal=True), spattn.token_sparse_attention(q, k, v, mask, causal=True))
    q, k, v = make_qkv(1, 2, 2, 29, 29, 16, seed=1)  # cap = 2 < 3: nothing evicted
    np.testing.assert_array_equal(m.evict(q, k)[0, 0], np.arange(29))


def test_bad_inputs_name_the_argument():
    q, k, _, hidden, spans = screenshot_inputs(L=251)
    m = spattn.methods.get("gui_kv")
    with pytest.raises(ValueError, match="spans"):
        m.evict(q, k, hidden_states=hidden, spans=[(150, 249)])  # reaches into the last window
    with pytest.raises(ValueError, match="current"):
        m.evict(q, k, hidden_states=hidden, spans=[(10, 50), (60, 61)])
    with pytest.raises(ValueError, match="hidden_states"):
        m.evict(q, k, hidden_states=hidden[:, :10], spans=spans)
    with pytest.raises(TypeError, match="spans"):
        m.evict(q, k, hidden_states=hidden, spans=5)
    with pytest.raises(ValueError, match="kernel_size"):
        spattn.methods.get("gui_kv", kernel_size=4)
    with pytest.raises(ValueError, match="budget_percent"):
        spattn.methods.get("gui_kv", budget_percent=0)
    with pytest.raises(ValueError, match="pooling"):
        spattn.methods.get("gui_kv", pooling="sum")


def test_cache_compaction_per_kv_head_and_its_errors():
    cache = spattn.KVCache(initial_capacity=4)
    k = np.arange(2 * 3 * 10 * 2, dtype=np.float32).reshape(2, 3, 10, 2)
    cache.append(0, k, -k)
    keep = np.array([[[0, 5], [9, 1], [2, 3]], [[4, 4], [0, 9], [7, 8]]])
    cache.compact(0, keep)
    assert cache.length(0) == 2 and cache.keys(0).shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(cache.keys(0), np.take_along_axis(k, keep[..., None], axis=2))
    np.testing.assert_array_equal(cache.values(0), -cache.keys(0))
    cache.append(0, k[:, :, :1], k[:, :, :1])
    assert cache.length(0) == 3
    with pytest.raises(ValueError, match="keep"):
        cache.compact(0, np.zeros((2, 2, 1), int))
    with pytest.raises(ValueError, match="keep"):
        cache.compact(0, np.full((2, 3, 1), 3))
    with pytest.raises(TypeError, match="keep"):
        cache.compact(0, np.zeros((2, 3, 1)))
