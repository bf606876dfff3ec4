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
        "--decode", "1024", "--json", str(out))
    data = json.loads(out.read_text())
    assert data["dense"][0]["gflops"] > 0 and data["block_sparse"][0]["density"] > 0
    assert data["env"]["threads"] == spattn.num_threads()
