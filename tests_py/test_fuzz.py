"""The fuzz tier (issue 10): hypothesis-generated calls through the public API and every
registered method, run in a child process so that an abort or a hang fails the test instead of
the test run. Valid kernel calls are checked against float64 attention; invalid ones must raise
ValueError or TypeError (MemoryError allowed); nothing else may happen. Methods are taken from the
registry, so a new method is fuzzed the day it lands.

Size: SPATTN_FUZZ_EXAMPLES examples per group (default 40 in CI; e.g. 2000 for a long run).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = int(os.environ.get("SPATTN_FUZZ_EXAMPLES", "40"))

CHILD = textwrap.dedent(r'''
    import json, sys, numpy as np, spattn
    from hypothesis import given, settings, strategies as st, HealthCheck

    N_EX = int(sys.argv[1]); GROUP = sys.argv[2]
    stats = {"cases": 0, "checked": 0, "clean_errors": 0}
    CFG = settings(max_examples=N_EX, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))

    def reference(q, k, v, allowed, causal, scale):
        q, k, v = (x.astype(np.float64) for x in (q, k, v))
        B, Hq, Nq, D = q.shape
        G = Hq // k.shape[1]
        kk, vv = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)
        s = np.einsum("bhid,bhjd->bhij", q, kk) * (1 / np.sqrt(D) if scale is None else scale)
        vis = np.ones(s.shape, bool) if allowed is None else np.broadcast_to(allowed, s.shape).copy()
        if causal:
            vis &= np.arange(k.shape[2])[None, :] <= np.arange(Nq)[:, None] + (k.shape[2] - Nq)
        s = np.where(vis, s, -np.inf)
        mx = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        e = np.where(vis, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
        tot = e.sum(-1, keepdims=True)
        p = np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0)
        return np.einsum("bhij,bhjd->bhid", p, vv)

    def expect_clean(fn):
        try:
            fn()
        except (ValueError, TypeError, MemoryError) as exc:
            assert str(exc), "an error without a message"
            stats["clean_errors"] += 1
            return False
        return True

    shapes = st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(0, 40),
                       st.integers(0, 50), st.sampled_from([1, 8, 64, 80]), st.booleans(), st.integers(0, 10**6))

    @CFG
    @given(shapes, st.sampled_from(["dense", "block", "token"]), st.integers(1, 40),
           st.sampled_from([None, 0.05, 1.0, 3.0]))
    def kernels(shape, kind, block, scale):
        B, Hkv, G, Nq, Nk, D, causal, seed = shape
        rng = np.random.default_rng(seed)
        Hq = Hkv * G
        q = rng.standard_normal((B, Hq, Nq, D)).astype(np.float32)
        k = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
        v = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
        stats["cases"] += 1
        allowed = None
        if kind == "dense":
            out = spattn.attention(q, k, v, causal=causal, scale=scale)
        elif kind == "block":
            bq, bk = block, max(1, block // 2 + 1)
            nqb, nkb = -(-Nq // bq), -(-Nk // bk)
            H = [1, Hq][seed % 2]
            mask = spattn.BlockMask(rng.random((B, H, nqb, nkb)) < 0.6, bq, bk, Nq, Nk)
            allowed = mask.to_dense()
            out = spattn.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale)
        else:
            gs = block
            Gq = -(-Nq // gs)
            idx = rng.integers(-1, max(Nk, 1), (B, Hq, Gq, 6)) if Nk else np.full((B, Hq, Gq, 6), -1)
            ti = spattn.TokenIndices(idx, gs, Nk)
            allowed = ti.to_dense(Nq)
            out = spattn.token_sparse_attention(q, k, v, ti, causal=causal, scale=scale)
        ref = reference(q, k, v, allowed, causal, scale)
        np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4)
        stats["checked"] += 1

    bad_values = st.sampled_from(["x", None, 1.5, -3, 2**31 + 5, np.ones(2), [1, 2], np.int32(3), 1 + 1j, True])

    @CFG
    @given(st.sampled_from(["q", "k", "v", "causal", "scale", "mask"]), bad_values, st.integers(0, 10**6))
    def bad_arguments(which, value, seed):
        rng = np.random.default_rng(seed)
        args = {"q": rng.standard_normal((1, 2, 9, 8)).astype(np.float32),
                "k": rng.standard_normal((1, 1, 11, 8)).astype(np.float32),
                "v": rng.standard_normal((1, 1, 11, 8)).astype(np.float32)}
        mask = spattn.BlockMask.full(1, 1, 9, 11, 4, 4)
        kw = {"causal": True, "scale": None}
        if which in args:
            args[which] = value
        elif which == "mask":
            mask = value
        else:
            kw[which] = value
        stats["cases"] += 1
        def call():
            out = spattn.block_sparse_attention(args["q"], args["k"], args["v"], mask, **kw)
            assert np.isfinite(out).all()
        expect_clean(call)

    def param_values(default):
        if isinstance(default, bool):
            return st.sampled_from([True, False, 1, "yes"])
        if isinstance(default, int) or default is None:
            return st.sampled_from([-5, 0, 1, 3, 64, 2**31 - 1, 2**31 + 5, None, 2.5])
        return st.sampled_from([-1.0, 0.0, 1e-3, 0.5, 1.0, 1.5, float("nan"), None, "x"])

    @CFG
    @given(st.sampled_from(spattn.methods.available()), st.integers(1, 2), st.integers(1, 2), st.integers(1, 300),
           st.sampled_from([16, 32, 64]), st.booleans(), st.booleans(), st.data())
    def methods(name, Hkv, G, N, D, causal, decode, data):
        caps = spattn.methods.capabilities(name)
        cls = type(spattn.methods.get(name))
        params = {}
        if cls.params_struct is not None and data.draw(st.booleans()):
            field = data.draw(st.sampled_from(cls.params_struct.field_names()))
            params[field] = data.draw(param_values(getattr(cls.params_struct(), field)))
        rng = np.random.default_rng(N)
        Nq = 1 if decode else N
        q = rng.standard_normal((1, Hkv * G, Nq, D)).astype(np.float32)
        k = rng.standard_normal((1, Hkv, N, D)).astype(np.float32)
        v = rng.standard_normal((1, Hkv, N, D)).astype(np.float32)
        stats["cases"] += 1
        def call():
            m = spattn.methods.get(name, **params)
            mask = m.estimate(q, k, causal=causal)
            mask.check_against(1, Hkv * G, Nq, N)
            out = m(q, k, v, causal=causal)
            assert out.shape == q.shape and np.isfinite(out).all(), name
        if expect_clean(call):
            stats["checked"] += 1
        elif caps.supports(causal=causal, q_len=Nq, kv_len=N) and not params:
            raise AssertionError(f"{name} rejected a call its capabilities declare: causal={causal} Nq={Nq} Nk={N}")

    {"kernels": kernels, "bad_arguments": bad_arguments, "methods": methods}[GROUP]()
    print("FUZZ " + json.dumps(stats))
''')


@pytest.mark.parametrize("group", ["kernels", "bad_arguments", "methods"])
def test_fuzz_group_runs_clean_in_a_child_process(group, tmp_path):
    script = tmp_path / "fuzz_child.py"
    script.write_text(CHILD)
    res = subprocess.run([sys.executable, str(script), str(EXAMPLES), group], capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).parent)
    assert res.returncode == 0, f"child exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("FUZZ ")][-1]
    stats = json.loads(line[5:])
    assert stats["cases"] >= EXAMPLES
    if group == "kernels":
        assert stats["checked"] == stats["cases"]  # every generated kernel call is valid and checked
    if group == "bad_arguments":
        assert stats["clean_errors"] > 0
    print(group, stats)
