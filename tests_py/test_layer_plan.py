"""spattn.LayerPlan (the roles of a model's layers for a decode method) and the plan roles on
every decode method: dense / sparse / select (attend all, store the selection) / reuse."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, ref_attention


def test_roles_and_builders():
    p = spattn.LayerPlan.tidal()
    assert [p.role(i) for i in range(16)] == ["dense"] * 2 + ["select"] + ["reuse"] * 10 + ["select"] + ["reuse"] * 2
    assert spattn.LayerPlan.tidal(3, None).layers("select", 8) == (3,)
    assert spattn.LayerPlan.tidal(3, 2).layers("select", 8) == (3,)          # correction <= start: none
    assert spattn.LayerPlan.first_dense(2).layers("dense", 5) == (0, 1)
    assert spattn.LayerPlan.dense_layers(12, 3, "bottom").layers("dense", 12) == (0, 1, 2)
    assert spattn.LayerPlan.dense_layers(12, 3, "top").layers("dense", 12) == (9, 10, 11)
    assert spattn.LayerPlan.dense_layers(12, 3, "evenly").layers("dense", 12) == (2, 6, 10)
    assert spattn.LayerPlan.dense_layers(12, 0).layers("dense", 12) == ()
    d = p.to_dict()
    assert spattn.LayerPlan.from_dict(d) == p and "select=[2, 13]" in repr(p)


def test_bad_plans_raise():
    with pytest.raises(ValueError, match="two roles"):
        spattn.LayerPlan(dense=[1], select=[1])
    with pytest.raises(ValueError, match="default"):
        spattn.LayerPlan(default="sometimes")
    with pytest.raises(TypeError, match="dense"):
        spattn.LayerPlan(dense=3)
    with pytest.raises(ValueError, match="unknown layer plan keys"):
        spattn.LayerPlan.from_dict({"dens": [0]})
    with pytest.raises(ValueError, match="placement"):
        spattn.LayerPlan.dense_layers(4, 2, "middle")
    with pytest.raises(ValueError, match="count"):
        spattn.LayerPlan.dense_layers(4, 5)
    with pytest.raises(ValueError, match="layer"):
        spattn.LayerPlan().role(-1)


@pytest.mark.parametrize("name, params", [
    ("quest", dict(page_size=8, token_budget=32)),
    ("doublesparse", dict(heavy_const=24)),
    ("tokenselect", dict(n_init=4, n_local=8, top_k=16)),
])
def test_any_decode_method_runs_a_select_reuse_plan(name, params):
    """Quest / Double Sparsity / TokenSelect under TidalDecode's plan: the select layer attends
    every key and stores the method's selection; the reuse layers attend it by head index."""
    B, Hq, Hkv, N, D = 1, 4, 2, 257, 64
    rng = np.random.default_rng(7)
    plan = spattn.LayerPlan(dense=[0], select=[1], default="reuse")
    m = spattn.methods.get(name, layer_plan=plan, **params)
    cache = spattn.KVCache()
    ks = [rng.standard_normal((B, Hkv, N, D)).astype(np.float32) for _ in range(3)]
    vs = [rng.standard_normal((B, Hkv, N, D)).astype(np.float32) for _ in range(3)]
    qs = [rng.standard_normal((B, Hq, 1, D)).astype(np.float32) for _ in range(3)]
    for i in range(3):
        cache.append(i, ks[i], vs[i])
    for i in range(2):  # dense and select layers attend every key
        np.testing.assert_allclose(m(qs[i], cache, layer=i), ref_attention(qs[i], ks[i], vs[i])[0], atol=ATOL, rtol=RTOL)
    # the selection the method makes at layer 1 (same method as a plain sparse layer)
    sparse = spattn.methods.get(name, layer_plan=spattn.LayerPlan(), **params)
    want = sparse.select(qs[1], cache, layer=1)
    got = m.select(qs[2], cache, layer=2)
    np.testing.assert_array_equal(got.indices, want.indices)
    allowed = np.zeros((B, Hq, 1, N), bool)
    for h in range(Hq):
        row = want.indices[0, h, 0]
        allowed[0, h, 0, row[row >= 0]] = True
    np.testing.assert_allclose(m(qs[2], cache, layer=2), ref_attention(qs[2], ks[2], vs[2], allowed=allowed)[0],
                               atol=ATOL, rtol=RTOL)
