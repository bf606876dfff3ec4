"""M4LE-style tasks (spattn.m4le): the packed construction (gold items at M4LE's positions
{0, 4, 9, 14, ...}, ids on id tokens, question rows last) and the scores, against brute force
over small dense masks."""

import numpy as np
import pytest

import spattn
from spattn import m4le


@pytest.mark.parametrize("ability", m4le.ABILITIES)
def test_construction_and_exact_scores(ability):
    t = m4le.make_task(ability, 1024, item_tokens=32, question_tokens=16, seed=1)
    assert t.q.shape == (1, 4, 1024, 64) and t.k.shape == (1, 2, 1024, 64)
    np.testing.assert_array_equal(t.question, np.arange(1008, 1024))
    if ability == "global":
        assert t.gold.size == 0
    else:
        assert all(i in m4le.DEPTHS for i in t.gold_items)
        assert (t.gold < 1008).all() and len(np.unique(t.gold)) == len(t.gold)
        if ability.endswith("single"):
            assert t.gold_items == [m4le.DEPTHS[2]]  # seed 1: the second position after the first
        else:
            assert t.gold_items == [0, 4, 9]
    r = m4le.score(spattn.methods.get("dense"), t)
    assert r["gold_recall"] == pytest.approx(1.0) and r["rel_error"] == 0 and abs(r["lse_gap"]) < 1e-5


@pytest.mark.parametrize("name, kw", [("streaming", dict(local_tokens=128, sink_tokens=32, block_size=32)),
                                      ("oracle_topk", {}), ("natten", {})])
def test_gold_recall_counts_the_masks_gold_keys(name, kw):
    t = m4le.make_task("explicit_multiple", 768, item_tokens=32, question_tokens=16, seed=0)
    m = spattn.methods.get(name, **kw)
    r = m4le.score(m, t)
    mask = m.estimate(t.q, t.k, causal=True)
    dense = mask.to_dense(causal=True) if isinstance(mask, spattn.BlockMask) else mask.to_dense(768, causal=True)
    dense = np.broadcast_to(dense, (1, 4, 768, 768))
    ref = dense[:, :, t.question][..., t.gold].sum(-1).mean() / len(t.gold)
    assert r["gold_recall"] == pytest.approx(ref, abs=1e-5)
    _, lse = spattn.attention(t.q, t.k, t.v, causal=True, return_lse=True)
    _, lse_m = spattn.sparse_attention(t.q, t.k, t.v, mask, causal=True, return_lse=True)
    assert r["lse_gap"] == pytest.approx(float(np.mean((lse - lse_m)[:, :, t.question])), abs=1e-5)


def test_evaluate_and_table():
    recs = m4le.evaluate(["dense", "streaming"], lengths=(512,), abilities=("explicit_single", "global"),
                         seeds=(0, 1), item_tokens=32, question_tokens=16,
                         params={"streaming": dict(local_tokens=64, sink_tokens=16, block_size=16)})
    assert len(recs) == 4 and {r["method"] for r in recs} == {"dense", "streaming"}
    assert all(r["gold_recall"] == pytest.approx(1.0) for r in recs if r["method"] == "dense")
    text = m4le.table(recs)
    assert "| `dense` | 1.000 |" in text and "explicit single" in text


def test_bad_input():
    with pytest.raises(ValueError, match="ability"):
        m4le.make_task("translation", 1024)
    with pytest.raises(ValueError, match="items"):
        m4le.make_task("global", 100, item_tokens=64)
