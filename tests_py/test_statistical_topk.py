"""Statistical top-k (Spark Transformer; Gemma 3n's ``_gaussian_topk``): the official operator
run through torch exactly as transformers' ``Gemma3nTextMLP._gaussian_topk`` computes it, the
normal quantile against the standard library, the selection helper against a float64 threshold,
and the ``statistical_topk`` option of the decode methods."""

from statistics import NormalDist

import numpy as np
import pytest

import spattn


@pytest.mark.parametrize("p", [1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.95, 1 - 1e-9])
def test_normal_quantile(p):
    assert spattn.normal_quantile(p) == pytest.approx(NormalDist().inv_cdf(p), rel=1e-12, abs=1e-12)
    assert spattn.normal_quantile(0.0) == -np.inf and spattn.normal_quantile(1.0) == np.inf


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_gaussian_topk_equals_the_official_operator(sparsity):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_t(3, size=(3, 5, 257)).astype(np.float32)
    t = torch.from_numpy(x)
    # transformers models/gemma3n/modeling_gemma3n.py Gemma3nTextMLP._gaussian_topk
    mult = torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(sparsity, dtype=torch.float32)).type(t.dtype)
    cutoff = torch.mean(t, dim=-1, keepdim=True) + torch.std(t, dim=-1, keepdim=True, unbiased=False) * mult
    want = torch.nn.functional.relu(t - cutoff).numpy()
    np.testing.assert_allclose(spattn.gaussian_topk(x, sparsity), want, rtol=1e-5, atol=1e-5)


def test_statistical_topk_selection():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3001)).astype(np.float32)
    x[0, :50] = -np.inf                      # masked entries are not candidates
    x[1, 7] = np.inf                         # +inf always kept
    keep, theta = spattn.statistical_topk(x, 300)
    for r in range(6):
        fin = np.isfinite(x[r])
        xs = x[r][fin].astype(np.float64)
        th = xs.mean() + NormalDist().inv_cdf(1 - 300 / xs.size) * xs.std()
        assert theta[r] == pytest.approx(th, rel=1e-6)
        np.testing.assert_array_equal(keep[r], (x[r] > th))
        assert 220 < keep[r].sum() < 380
    assert keep[1, 7]
    # k >= candidates: every finite entry; constant row: the first (largest) entry only
    k2, t2 = spattn.statistical_topk(np.array([[1.0, -np.inf, 2.0]], np.float32), 5)
    assert k2.tolist() == [[True, False, True]] and t2[0] == -np.inf
    k3, _ = spattn.statistical_topk(np.ones((1, 10), np.float32), 3)
    assert k3.tolist() == [[True] + [False] * 9]
    k4, t4 = spattn.statistical_topk(np.full((2, 4), -np.inf, np.float32), 1)
    assert not k4.any() and np.isposinf(t4).all()
    assert spattn.statistical_topk(x, 300, return_threshold=False).shape == x.shape


def test_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        spattn.statistical_topk(np.zeros((2, 3), np.float32), -1)
    with pytest.raises(TypeError, match="k must be an int"):
        spattn.statistical_topk(np.zeros((2, 3), np.float32), 1.5)
    with pytest.raises(ValueError, match="scores must have at least one dimension"):
        spattn.statistical_topk(np.float32(1.0), 1)
    with pytest.raises(ValueError, match="sparsity"):
        spattn.gaussian_topk(np.zeros(3), 1.0)
    with pytest.raises(TypeError, match="scores"):
        spattn.statistical_topk("abc", 1)


@pytest.mark.parametrize("name, params, budget", [
    ("doublesparse", dict(heavy_const=64, label_bits=16), 64),
    ("tidaldecode", dict(top_k=64), 64),
])
def test_decode_methods_select_by_the_threshold(name, params, budget):
    """The statistical option keeps the tokens whose score exceeds the row's threshold."""
    B, Hq, Hkv, N, D = 1, 4, 2, 2000, 64
    rng = np.random.default_rng(2)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    exact = spattn.methods.get(name, **params)
    stat = spattn.methods.get(name, statistical_topk=True, **params)
    ie, ist = exact.estimate(q, k).indices, stat.estimate(q, k).indices
    assert ie.shape[-1] == budget
    counts = (ist >= 0).sum(-1)
    assert (counts > budget // 3).all() and (counts < 3 * budget).all()
    # the statistical set is a superset of the exact top-k when it keeps more, a subset otherwise
    for h in range(Hq):
        e, s = set(ie[0, h, 0]), set(ist[0, h, 0][ist[0, h, 0] >= 0])
        assert e <= s or s <= e
    out = stat(q, k, v)
    assert out.shape == (B, Hq, 1, D) and np.isfinite(out).all()


def test_quest_and_tokenselect_statistical_run():
    B, Hq, Hkv, N, D = 1, 4, 2, 3000, 64
    rng = np.random.default_rng(4)
    q = rng.standard_normal((B, Hq, 1, D)).astype(np.float32)
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    quest = spattn.methods.get("quest", statistical_topk=True, token_budget=256)
    idx = quest.estimate(q, k).indices
    assert (idx[..., -16:][idx[..., -16:] >= 0] >= 0).all()
    last = (N - 1) // 16 * 16
    for h in range(Hq):  # the last page is still forced
        assert last in set(idx[0, h, 0])
    ts = spattn.methods.get("tokenselect", statistical_topk=True, n_init=4, n_local=16, top_k=100)
    row = ts.estimate(q, k).indices[0, 0, 0]
    row = row[row >= 0]
    assert set(range(4)) <= set(row) and set(range(N - 16, N)) <= set(row)
    # the votes are sums of peaked softmaxes, far from Gaussian: the threshold keeps few of them
    assert 4 + 16 < row.size < 4 + 16 + 300
