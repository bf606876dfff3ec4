"""Every SIMD level this CPU supports gives the same answers: build_info reports the choice, the
SPATTN_SIMD override takes effect, and the kernel and pinned-mask tests pass again in a fresh
process at each level other than the default one (the choice is made once per process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spattn

HERE = Path(__file__).parent


def test_build_info_names_the_choice_and_the_available_levels():
    info = spattn.build_info()
    assert info["version"] == spattn.__version__
    assert info["simd"] in info["simd_available"]
    assert info["simd_available"][-1] == "generic"
    assert set(info["simd_available"]) <= {"avx512", "avx2", "generic"}
    assert info["openmp_threads"] == spattn.num_threads()
    assert isinstance(info["compiler"], str) and isinstance(info["native"], bool)


def run_python(code, level):
    env = dict(os.environ, SPATTN_SIMD=level)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("level", ["avx512", "avx2", "generic", "bogus"])
def test_override_takes_effect_or_falls_back(level):
    out = run_python("import spattn, json; print(json.dumps(spattn.build_info()))", level)
    import json

    info = json.loads(out)
    if level in info["simd_available"]:
        assert info["simd"] == level
    elif level == "bogus":
        assert "ignored" in info["simd_choice"] and info["simd"] == info["simd_available"][0]
    else:  # a level this CPU lacks: the best one below it
        assert "not supported" in info["simd_choice"]


@pytest.mark.parametrize("level", [lv for lv in spattn.build_info()["simd_available"]
                                   if lv != spattn.build_info()["simd"]])
def test_kernel_tests_pass_at_every_level(level):
    env = dict(os.environ, SPATTN_SIMD=level)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          str(HERE / "test_kernels.py"), str(HERE / "test_plan.py"), str(HERE / "test_pinned.py"),
                          str(HERE / "test_half_kv.py")],
                         env=env, capture_output=True, text=True, cwd=HERE)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
