"""The evaluation harness (spattn.evaluate): records on a tiny workload are sane, the exact
baseline is exact, methods are chosen by capability, and the renderers read the records."""

import json

import numpy as np
import pytest

import spattn
from spattn.evaluate import format_markdown, format_table, parse_method_params, records_as_dicts


@pytest.fixture(scope="module")
def w():
    return spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=512, D=64, seed=0)


@pytest.fixture(scope="module")
def records(w):
    return spattn.evaluate(None, w, causal=True, params={"oracle_topk": {"gamma": 0.8}}, progress=False)


def test_records_cover_every_method_that_supports_the_call(records):
    expect = [n for n in spattn.methods.available()
              if spattn.methods.capabilities(n).supports(causal=True, q_len=512, kv_len=512)]
    assert [r.method for r in records] == expect


def test_records_are_sane(records):
    for r in records:
        assert (r.batch, r.q_heads, r.kv_heads, r.q_len, r.kv_len, r.head_dim, r.causal) == (1, 4, 2, 512, 512, 64, True)
        assert 0 < r.density <= 1 and 0 <= r.recall <= 1 + 1e-6, r
        assert np.isfinite(r.rel_error) and r.rel_error >= 0
        assert r.estimate_s > 0 and r.total_s > 0 and r.dense_s > 0
        assert r.speedup_vs_dense == pytest.approx(r.dense_s / r.total_s)
        assert r.torch_s is None and r.speedup_vs_torch is None
    by = {r.method: r for r in records}
    assert by["oracle_topk"].params["gamma"] == 0.8 and by["oracle_topk"].recall >= 0.8 - 1e-3


def test_the_exact_baseline_has_recall_one_and_no_error(records):
    exact = [r for r in records if spattn.methods.capabilities(r.method).exact]
    assert exact
    for r in exact:
        assert r.recall == pytest.approx(1.0, abs=1e-5) and r.density == 1.0
        assert r.rel_error == 0.0 and r.total_s == r.dense_s


def test_methods_that_need_a_fit_are_prepared(records):
    for r in records:
        caps = spattn.methods.capabilities(r.method)
        if caps.needs_fit:
            assert any(str(v).startswith("<") for v in r.params.values()), r.params


def test_records_render_and_serialise(records):
    table = format_table(records)
    for r in records:
        assert r.method in table
    rows = json.loads(json.dumps(records_as_dicts(records)))
    assert [row["method"] for row in rows] == [r.method for r in records]
    assert all(row["estimate_share_of_dense"] == pytest.approx(row["estimate_s"] / row["dense_s"]) for row in rows)


def test_markdown_table_has_a_row_per_method_and_a_column_per_length(records, w):
    short = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=256, D=64, seed=0)
    more = spattn.evaluate([records[0].method], short, progress=False)
    lines = format_markdown(records + more).splitlines()
    assert "N=256: density / recall / speedup" in lines[0] and "N=512: density / recall / speedup" in lines[0]
    assert len(lines) == 2 + len(records)
    for r, line in zip(records, lines[2:]):
        cls = type(spattn.methods.get(r.method))
        assert line.startswith(f"| `{r.method}` | {cls.paper} | {cls.pattern.replace('|', chr(92) + '|')} | works")
        assert line.count("|") - line.count(chr(92) + "|") == 7  # 6 cells: a "|" in a text is escaped
        assert f"{r.density:.3f} / {r.recall:.3f} / {r.speedup_vs_dense:.2f}x" in line
        assert line.count("—") == (0 if r.method == more[0].method else 1)
        assert ("evaluation only" in line) == spattn.methods.capabilities(r.method).exact_reference_only


def test_non_causal_keeps_the_methods_that_support_it_and_instances_are_accepted(w):
    m = spattn.methods.get("streaming", local_tokens=128)
    recs = spattn.evaluate([m, "dense"], w, causal=False, progress=False)
    assert [r.method for r in recs] == ["streaming", "dense"] and not recs[0].causal
    assert recs[0].params["local_tokens"] == 128
    every = spattn.evaluate(None, (w.q[:, :, :200], w.k, w.v), causal=False, progress=False)
    assert {r.method for r in every} == {n for n in spattn.methods.available()
                                         if spattn.methods.capabilities(n).supports(causal=False, q_len=200, kv_len=512)}


def test_bad_requests_raise_naming_the_problem(w):
    refusing = [n for n in spattn.methods.available() if not spattn.methods.capabilities(n).noncausal]
    for name in refusing:
        with pytest.raises(ValueError, match="causal"):
            spattn.evaluate([name], w, causal=False, progress=False)
    with pytest.raises(ValueError, match="not evaluated by name"):
        spattn.evaluate(["dense"], w, params={"streaming": {"local_tokens": 1}}, progress=False)
    with pytest.raises(TypeError, match="method names or"):
        spattn.evaluate([3], w, progress=False)
    with pytest.raises(TypeError, match=r"\(q, k, v\)"):
        spattn.evaluate(["dense"], (w.q, w.k), progress=False)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        spattn.evaluate(["dense"], w, repeats=0, progress=False)


def test_parse_method_params():
    assert parse_method_params(["a.b=1", "a.c=x", "d.e=[1, 2]", "a.f=null"]) == \
        {"a": {"b": 1, "c": "x", "f": None}, "d": {"e": [1, 2]}}
    with pytest.raises(ValueError, match="method.param=value"):
        parse_method_params(["nodot=1"])
