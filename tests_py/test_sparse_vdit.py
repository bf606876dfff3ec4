"""Sparse-vDiT (spattn.methods.sparse_vdit): every head pattern against a float64 numpy reference
of its visibility rule (paper-level: no official code exists), odd sizes, GQA, causal with
Nq < Nk and decode; the plan's dict round trip; the offline search; bad inputs."""

import json

import numpy as np
import pytest

import spattn
from spattn.methods import sparse_vdit as sv
from conftest import make_qkv, ref_attention

TOL = dict(atol=2e-5, rtol=1e-5)


def ref_visible(spec, Nq, Nk):
    """(Nq, Nk) visibility of one head, written from the rule (query i at position i + Nk - Nq)."""
    p = np.arange(Nq)[:, None] + (Nk - Nq)
    j = np.arange(Nk)[None, :]
    tag = spec["tag"]
    if tag == "dense":
        return np.ones((Nq, Nk), bool)
    if tag == "skip":
        return np.zeros((Nq, Nk), bool)
    vis = np.abs(j - p) <= spec["w"]
    if tag == "multidiag":
        for m in range(-spec["frames"], spec["frames"] + 1):
            vis |= np.abs(j - p - m * spec["tokens_per_frame"]) <= spec["w"]
    if tag == "vstripe":
        vis |= np.isin(j, spec["cols"])
    return vis


PLAN = [{"tag": "diag", "w": 3}, {"tag": "multidiag", "w": 2, "tokens_per_frame": 11, "frames": 2},
        {"tag": "vstripe", "w": 1, "cols": [0, 5, 40, 1000]}, {"tag": "skip"}, {"tag": "dense"},
        {"tag": "multidiag", "w": 7, "tokens_per_frame": 9, "frames": 1}]  # bands that overlap


@pytest.mark.parametrize("Nq, Nk, D", [(77, 77, 64), (30, 101, 80), (1, 55, 128), (13, 13, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_every_pattern_matches_float64_reference(Nq, Nk, D, causal):
    q, k, v = make_qkv(2, 6, 3, Nq, Nk, D, seed=Nq + D)
    m = spattn.methods.get("sparse_vdit", plan=PLAN)
    out, lse = m(q, k, v, causal=causal, return_lse=True)
    allowed = np.stack([ref_visible(s, Nq, Nk) for s in PLAN])[None]
    ref, ref_lse = ref_attention(q, k, v, causal=causal, allowed=allowed)
    np.testing.assert_allclose(out, ref, **TOL)
    fin = np.isfinite(ref_lse)
    np.testing.assert_allclose(lse[fin], ref_lse[fin], **TOL)
    assert np.all(out[:, 3] == 0) and np.all(np.isneginf(lse[:, 3]))  # SKIP
    mask = m.estimate(q, k, causal=causal).to_dense(Nq, causal=causal)  # the keys of every head, causal rule applied
    expect = allowed[0] & (np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + (Nk - Nq) if causal else True)
    np.testing.assert_array_equal(mask, np.broadcast_to(expect, mask.shape))


def test_default_plan_is_a_diagonal_band_per_head():
    q, k, v = make_qkv(1, 4, 2, 90, 90, 64, seed=1)
    out = spattn.methods.get("sparse_vdit", window=5)(q, k, v, causal=True)
    allowed = np.broadcast_to(ref_visible({"tag": "diag", "w": 5}, 90, 90), (1, 4, 90, 90))
    np.testing.assert_allclose(out, ref_attention(q, k, v, causal=True, allowed=allowed)[0], **TOL)


def test_plan_round_trips_through_a_dict_and_json():
    m = spattn.methods.get("sparse_vdit", plan=PLAN, window=9)
    d = m.to_dict()
    again = sv.SparseVDiT.from_dict(json.dumps(d))
    assert again.params["plan"] == m.params["plan"] and again.params["window"] == 9
    assert sv.SparseVDiT.from_dict(d).params == m.params


def test_search_picks_the_cheapest_pattern_under_the_bound_and_sorts_heads_by_tag():
    q, k, v = make_qkv(1, 4, 2, 60, 60, 64, seed=3)
    q[:, 1] *= 8.0  # a sharp head: its diagonal keys dominate, so a narrow band is close to dense
    k[:, 0, np.arange(60), :] += 8.0 * q[0, 1]  # each query's own key matches it strongly
    cands = [{"tag": "skip"}, {"tag": "diag", "w": 2}, {"tag": "dense"}]
    res = sv.search(q, k, v, cands, error_bound=0.05)
    assert res.errors.shape == (4, 3) and np.all(res.errors[:, 2] < 1e-10) and np.all(res.errors[:, 0] == 1)
    for h in range(4):
        ok = np.flatnonzero(res.errors[h] <= 0.05)
        assert res.choice[h] == ok[np.argmin(res.costs[h, ok])]
    assert res.plan[1]["tag"] == "diag" and res.plan[0]["tag"] == "dense"
    tags = [res.plan[h]["tag"] for h in res.order]
    assert tags == sorted(tags, key=sv.TAGS.index)
    every = sv.search(q, k, v, cands, error_bound=1e9)  # everything passes: SKIP costs nothing
    assert all(p["tag"] == "skip" for p in every.plan)
    table = sv.search(q, k, v, cands, error_bound=1e9, cost=[5.0, 1.0, 3.0])  # a latency table
    assert all(p == {"tag": "diag", "w": 2} for p in table.plan)


@pytest.mark.parametrize("plan, exc, msg", [
    ([{"tag": "band", "w": 1}], ValueError, "tag"),
    ([{"tag": "diag"}], ValueError, "missing"),
    ([{"tag": "diag", "w": -1}], ValueError, "w must lie"),
    ([{"tag": "diag", "w": 1.5}], TypeError, "w must be an int"),
    ([{"tag": "multidiag", "w": 1, "tokens_per_frame": 0, "frames": 1}], ValueError, "tokens_per_frame"),
    ([{"tag": "vstripe", "w": 1, "cols": [-3]}], ValueError, "cols"),
    ("diag", TypeError, "plan must be"),
])
def test_bad_plans_raise_naming_the_field(plan, exc, msg):
    with pytest.raises(exc, match=msg):
        spattn.methods.get("sparse_vdit", plan=plan)


def test_plan_length_must_match_heads():
    q, k, v = make_qkv(1, 4, 2, 20, 20, 16, seed=0)
    with pytest.raises(ValueError, match="Hq=4"):
        spattn.methods.get("sparse_vdit", plan=PLAN[:2])(q, k, v)
    with pytest.raises(ValueError, match="error_bound"):
        sv.search(q, k, v, [{"tag": "skip"}], error_bound=-1)
    with pytest.raises(ValueError, match="cost"):
        sv.search(q, k, v, [{"tag": "skip"}], error_bound=1, cost=[1.0, 2.0])
