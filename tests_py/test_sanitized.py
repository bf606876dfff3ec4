"""CI's sanitizer job, Python side: the kernel, plan, reliability, pinned and SIMD-level tests run
again against an extension built with AddressSanitizer + UndefinedBehaviorSanitizer
(`cmake -DSPATTN_SANITIZE=ON -DSPATTN_BUILD_PYTHON=ON`, see the README test command), with the
sanitizer runtime preloaded into Python. Any finding aborts the subprocess and fails the test.
Skipped unless SPATTN_SANITIZED_CORE names the build folder holding that extension."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spattn

HERE = Path(__file__).parent
BUILD = os.environ.get("SPATTN_SANITIZED_CORE")


def runtime(name):
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.skipif(not BUILD, reason="set SPATTN_SANITIZED_CORE to an ASan+UBSan build folder")
def test_kernel_tests_pass_under_asan_and_ubsan(tmp_path):
    built = sorted(Path(BUILD).glob("_core*.so"))
    assert built, f"no _core extension in {BUILD}"
    pkg = tmp_path / "spattn"
    shutil.copytree(Path(spattn.__file__).parent, pkg, ignore=shutil.ignore_patterns("_core*.so", "__pycache__"))
    shutil.copy(built[0], pkg)
    asan, stdcxx = runtime("libasan.so"), runtime("libstdc++.so")
    assert asan and stdcxx, "gcc's libasan / libstdc++ not found"
    # libstdc++ preloaded too: ASan intercepts __cxa_throw and must find it at start-up.
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LD_PRELOAD=f"{asan} {stdcxx}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1")
    tests = ["test_kernels.py", "test_plan.py", "test_reliability.py", "test_pinned.py", "test_simd_levels.py",
             "test_half_kv.py"]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         cwd=HERE, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "passed" in res.stdout
