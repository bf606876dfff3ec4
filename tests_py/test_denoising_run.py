"""spattn.evaluate.denoising_run and ``python -m spattn steps``: a method over a whole denoising
run (its schedule and state), per-step error against dense, density and times; tiny sizes, no
timing assertions."""

import json
import subprocess
import sys

import numpy as np
import pytest

import spattn
from spattn.evaluate import denoising_run, format_run


def _inputs(steps, N=200, Hq=2, Hkv=2, D=32):
    w = spattn.synthetic.structured_qkv(B=1, Hq=Hq, Hkv=Hkv, N=N, D=D, seed=2)
    return spattn.synthetic.denoising_steps(w, steps, drift=0.05, seed=2)


def test_a_stateful_run_follows_the_schedule_and_matches_calling_the_method():
    inputs = _inputs(6)
    params = dict(search_steps=(2, 4), num_steps=6, block_size=32)
    rec = denoising_run("adaspa", inputs=inputs, params=params)
    assert [s["phase"] for s in rec.steps] == ["dense", "dense", "search", "reuse", "search", "reuse"]
    m = spattn.methods.get("adaspa", **params)
    for s, (q, k, v) in zip(rec.steps, inputs):
        out = m(q, k, v)
        ref = spattn.attention(q, k, v)
        assert s["rel_error"] == pytest.approx(spattn.metrics.relative_error(out, ref))
        assert s["density"] == pytest.approx(float(np.mean(m.last_info["mask"].density())))
        assert s["time_s"] > 0 and s["dense_s"] > 0
    assert rec.steps[0]["rel_error"] == 0.0 and rec.steps[0]["density"] == 1.0
    assert rec.steps[3]["density"] < 1.0
    assert rec.total_s == pytest.approx(sum(s["time_s"] for s in rec.steps))
    assert rec.time_saved == pytest.approx(1 - rec.total_s / rec.dense_total_s)
    d = rec.as_dict()
    assert d["method"] == "adaspa" and len(d["steps"]) == 6 and "mean_rel_error" in d
    assert "adaspa" in format_run([rec], per_step=True)


def test_a_stateless_method_runs_every_step_and_bad_calls_are_refused():
    rec = denoising_run("blade", spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=2, N=150, D=32), steps=2,
                        params=dict(block_size=32, sample_num=8))
    assert [s["phase"] for s in rec.steps] == ["sparse", "sparse"]
    assert all(0 < s["density"] <= 1 for s in rec.steps)
    with pytest.raises(ValueError, match="params"):
        denoising_run(spattn.methods.get("blade"), inputs=_inputs(1), params={"block_size": 32})
    with pytest.raises(TypeError, match="method"):
        denoising_run(3, inputs=_inputs(1))
    with pytest.raises(ValueError, match="non-causal"):
        denoising_run("dhsa", inputs=_inputs(1))


def test_cli_steps(tmp_path):
    out = tmp_path / "steps.json"
    res = subprocess.run([sys.executable, "-m", "spattn", "steps", "--methods", "adaspa", "rettention", "--steps", "3",
                          "--n", "128", "--d", "32", "--hq", "2", "--set", "adaspa.search_steps=[1]",
                          "--set", "adaspa.num_steps=3", "--set", "adaspa.block_size=32",
                          "--set", "rettention.full_steps=1", "--per-step", "--json", str(out)],
                         capture_output=True, text=True, check=True)
    assert "adaspa" in res.stdout and "rettention" in res.stdout and "saved" in res.stdout
    recs = json.loads(out.read_text())["records"]
    assert [r["method"] for r in recs] == ["adaspa", "rettention"]
    assert [s["phase"] for s in recs[0]["steps"]] == ["dense", "search", "reuse"]
    assert recs[0]["params"]["search_steps"] == [1] and recs[0]["kv_heads"] == 2
