"""The command line: demo lists every registered method; compare and bench run small."""

import json
import subprocess
import sys

import spattn


def run(*args):
    return subprocess.run([sys.executable, "-m", "spattn", *args], capture_output=True, text=True, check=True)


def test_demo_lists_every_method(tmp_path):
    res = run("demo", "--json", str(tmp_path / "demo.json"))
    for name in spattn.methods.available():
        assert name in res.stdout
    rows = json.loads((tmp_path / "demo.json").read_text())
    by = {r["method"]: r for r in rows}
    assert by["dense"]["recall"] > 0.999 and by["dense"]["rel_error"] == 0.0
    assert by["oracle_topk"]["recall"] >= 0.9 - 1e-3


def test_compare_and_bench_small(tmp_path):
    res = run("compare", "--methods", "streaming", "--n", "512", "--d", "64", "--set", "streaming.local_tokens=128")
    assert "streaming" in res.stdout
    out = tmp_path / "bench.json"
    run("bench", "--n", "256", "--d", "64", "--densities", "0.3", "--no-torch", "--repeats", "1",
        "--decode", "1024", "--statistics", "512", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["dense"][0]["gflops"] > 0 and data["block_sparse"][0]["density"] > 0
    assert data["block_sparse"][0]["plan_compile_s"] > 0 and data["block_sparse"][0]["with_plan_s"] > 0
    stats = data["statistics"][0]
    assert stats["N"] == 512 and stats["method"] == "flexprefill" and stats["recall_mask_s"] > 0
    assert data["env"]["threads"] == spattn.num_threads()


def test_bench_cap_isa_reruns_every_library_at_avx2(tmp_path):
    import pytest

    if "avx2" not in spattn.build_info()["simd_available"]:
        pytest.skip("this CPU has no AVX2")
    torch = pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    res = run("bench", "--cap-isa", "avx2", "--n", "128", "--d", "64", "--densities", "--no-roofs",
              "--repeats", "1", "--json", str(out))
    env = json.loads(out.read_text())["env"]
    assert env["simd"] == "avx2" and env["capped_isa"] == "avx2" and "capped at avx2" in res.stdout
    assert env["torch_simd"] in ("AVX2", "DEFAULT") and env["torch"] == torch.__version__


def test_bench_methods_renders_evaluate_records(tmp_path):
    out = tmp_path / "methods.json"
    res = run("bench", "--n", "128", "--d", "64", "--densities", "--no-torch", "--repeats", "1",
              "--methods", "streaming", "seerattention", "--method-n", "512",
              "--set", "seerattention.nz_ratio=0.2", "--set", "streaming.local_tokens=128", "--markdown", "--json", str(out))
    rows = json.loads(out.read_text())["methods"]
    assert [r["method"] for r in rows] == ["streaming", "seerattention"]
    assert rows[0]["params"]["local_tokens"] == 128 and rows[1]["params"]["nz_ratio"] == 0.2
    assert all(r["kv_len"] == 512 and 0 < r["density"] <= 1 and r["speedup_vs_dense"] > 0 for r in rows)
    assert "streaming" in res.stdout and "seerattention" in res.stdout
    assert "| `streaming` |" in res.stdout and "N=512: density / recall / speedup" in res.stdout


def test_malformed_set_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "spattn", "compare", "--set", "nodot=1"], capture_output=True, text=True)
    assert res.returncode == 2 and "method.param=value" in res.stderr


def test_bench_memory_measures_kernels_and_registered_methods(tmp_path):
    out = tmp_path / "memory.json"
    run("bench", "--n", "128", "--d", "64", "--densities", "--no-torch", "--repeats", "1",
        "--memory", "512", "--memory-kinds", "block_sparse", "streaming", "--json", str(out))
    rows = json.loads(out.read_text())["memory"]
    assert [r["kernel"] for r in rows] == ["block_sparse", "streaming"]
    assert all(r["N"] == 512 and r["peak_extra_MB"] >= 0 for r in rows)
