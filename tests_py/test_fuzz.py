"""The fuzz tier (issue 10): hypothesis-generated calls through the public API and every
registered method, run in a child process so that an abort or a hang fails the test instead of
the test run. Valid kernel calls are checked against float64 attention; invalid ones must raise
ValueError or TypeError (MemoryError allowed); nothing else may happen. Methods are taken from the
registry, so a new method is fuzzed the day it lands.

Groups: kernels, bad_arguments, methods; merge_states, metrics (recall, density, relative_error),
masks (BlockMask / TokenIndices constructors, to_dense, density, |, &, from_kv_blocks), plan
(spattn.plan, BlockPlan.kv_blocks), int_args (every integer argument given values beyond int32 /
int64, which must be rejected naming the argument) and scales (scales up to float32's maximum:
exact while the logits fit float32, a ValueError naming scale when a visible one does not).

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

    # ------------------------------------------------------------------ shared by the groups below
    FLT_MAX = float(np.finfo(np.float32).max)

    def expect_error(fn, *names):
        """fn must raise ValueError/TypeError/MemoryError whose message names one of `names`."""
        try:
            fn()
        except (ValueError, TypeError, MemoryError) as exc:
            msg = str(exc)
            assert msg and (not names or any(n in msg for n in names)), f"message names none of {names}: {msg!r}"
            stats["clean_errors"] += 1
            return
        raise AssertionError(f"accepted an invalid call (expected an error naming {names})")

    def visible(Nq, Nk, causal):
        vis = np.ones((Nq, Nk), bool)
        if causal:
            vis = np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + (Nk - Nq)
        return vis

    def qkv(rng, B, Hkv, G, Nq, Nk, D, mag=1.0):
        q = (rng.standard_normal((B, Hkv * G, Nq, D)) * mag).astype(np.float32)
        k = (rng.standard_normal((B, Hkv, Nk, D)) * mag).astype(np.float32)
        v = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
        return q, k, v

    def random_block_mask(rng, B, H, Nq, Nk, bq, bk, p=0.5):
        return spattn.BlockMask(rng.random((B, H, -(-Nq // bq), -(-Nk // bk))) < p, bq, bk, Nq, Nk)

    def random_token_indices(rng, B, Hq, Nq, Nk, gs, K=6):
        Gq = -(-Nq // gs)
        idx = rng.integers(-1, max(Nk, 1), (B, Hq, Gq, K)) if Nk else np.full((B, Hq, Gq, K), -1)
        return spattn.TokenIndices(idx, gs, Nk)

    # ------------------------------------------------------------------ merge_states
    @CFG
    @given(st.lists(st.integers(0, 3), max_size=3), st.integers(0, 9), st.sampled_from(["float32", "float64", "float16"]),
           st.sampled_from([None] * 6 + ["out_shape", "lse_shape", "int_dtype", "string", "out_0d", "complex"]),
           st.integers(0, 10**6))
    def merge_states(lead, dv, dtype, bad, seed):
        rng = np.random.default_rng(seed)
        shape = tuple(lead)
        n = int(np.prod(shape, dtype=np.int64))

        def lse_values():
            x = rng.normal(0, 10, n)
            special = rng.random(n) < 0.25
            x[special] = rng.choice([-np.inf, np.inf, np.nan, 1e30, -1e30, 0.0], int(special.sum()))
            return x.reshape(shape)

        oa, ob = rng.standard_normal(shape + (dv,)), rng.standard_normal(shape + (dv,))
        if oa.size and rng.random() < 0.3:
            oa.flat[rng.integers(0, oa.size)] = np.nan
        args = [x.astype(dtype) for x in (oa, lse_values(), ob, lse_values())]
        stats["cases"] += 1
        if bad is not None:
            if bad == "out_shape":
                args[2] = np.zeros(shape + (dv + 1,), np.float32)
            elif bad == "lse_shape":
                args[1] = np.zeros(shape + (2,), np.float32)
            elif bad == "int_dtype":
                args[rng.integers(0, 4)] = np.zeros(shape + (dv,), np.int64)
            elif bad == "string":
                args[rng.integers(0, 4)] = "x"
            elif bad == "complex":
                args[0] = args[0].astype(np.complex64)
            else:
                args[0], args[2] = np.float32(1), np.float32(1)
            expect_error(lambda: spattn.merge_states(*args), "out_", "lse_")
            return
        out, lse = spattn.merge_states(*args)
        oa_, la_, ob_, lb_ = (np.asarray(x, np.float32).astype(np.float64) for x in args)
        assert out.dtype == np.float32 and lse.dtype == np.float32 and out.shape == oa.shape and lse.shape == shape
        with np.errstate(all="ignore"):
            mx = np.maximum(la_, lb_)
            nan_row = np.isnan(la_) | np.isnan(lb_) | (mx == np.inf)
            empty = ~nan_row & (mx == -np.inf)
            m = np.where(nan_row | empty, 0.0, mx)
            wa, wb = np.exp(la_ - m), np.exp(lb_ - m)
            tot = np.where(nan_row | empty, 1.0, wa + wb)
            ca, cb = (wa / tot)[..., None], (wb / tot)[..., None]
            ref = np.where(ca > 0, ca * oa_, 0.0) + np.where(cb > 0, cb * ob_, 0.0)
            ref_lse = m + np.log(tot)
        ref, ref_lse = np.array(ref), np.array(ref_lse)  # writable, also for 0-d states
        ref[nan_row], ref_lse[nan_row] = np.nan, np.nan
        ref[empty], ref_lse[empty] = 0.0, -np.inf
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(lse, ref_lse, rtol=1e-6, atol=1e-5)
        stats["checked"] += 1

    # ------------------------------------------------------------------ metrics
    @CFG
    @given(shapes, st.sampled_from(["block", "token"]), st.integers(1, 40), st.sampled_from([None, 0.3, 2.0]),
           st.booleans(), st.sampled_from([None] * 6 + ["mask_len", "mask_type", "causal", "err_shape", "density_type"]))
    def metrics(shape, kind, block, scale, shared, bad):
        B, Hkv, G, Nq, Nk, D, causal, seed = shape
        rng = np.random.default_rng(seed)
        Hq = Hkv * G
        q, k, v = qkv(rng, B, Hkv, G, Nq, Nk, D)
        stats["cases"] += 1
        if kind == "block":
            mask = random_block_mask(rng, B, 1 if shared else Hq, Nq, Nk, block, max(1, block // 3 + 1))
            allowed = mask.to_dense()
        else:
            mask = random_token_indices(rng, B, Hq, Nq, Nk, block)
            allowed = mask.to_dense(Nq)
        if bad is not None:
            if bad == "mask_len":  # a BlockMask knows Nq and Nk, TokenIndices only Nk
                q2 = np.zeros((B, Hq, Nq + (kind == "block"), D), np.float32)
                k2 = np.zeros((B, Hkv, Nk + (kind == "token"), D), np.float32)
                expect_error(lambda: spattn.metrics.recall(q2, k2, mask, causal=causal), "q_len", "kv_len")
            elif bad == "mask_type":
                expect_error(lambda: spattn.metrics.recall(q, k, allowed, causal=causal), "mask")
            elif bad == "causal":
                expect_error(lambda: spattn.metrics.recall(q, k, mask, causal="True"), "causal")
            elif bad == "err_shape":
                expect_error(lambda: spattn.metrics.relative_error(q, q[..., :0] if D else q[:1]), "out", "ref")
            else:
                expect_error(lambda: spattn.metrics.density(allowed), "mask")
            return
        rec = spattn.metrics.recall(q, k, mask, causal=causal, scale=scale)
        # float64 reference: exact softmax over visible keys, mass inside the mask, averaged over rows that see a key
        qq, kk = q.astype(np.float64), np.repeat(k.astype(np.float64), G, axis=1)
        s = np.einsum("bhid,bhjd->bhij", qq, kk) * (1 / np.sqrt(D) if scale is None else scale)
        vis = visible(Nq, Nk, causal)
        s = np.where(vis, s, -np.inf)
        mx = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
        e = np.where(vis, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0.0)
        tot = e.sum(-1, keepdims=True)
        p = e / np.where(tot > 0, tot, 1)
        kept = (p * np.broadcast_to(allowed, p.shape)).sum(-1)
        rows = vis.any(-1)  # (Nq,)
        with np.errstate(invalid="ignore"):
            ref = np.where(rows.sum() > 0, (kept * rows).sum(-1) / max(rows.sum(), 1), np.nan)
        np.testing.assert_allclose(rec, ref, rtol=2e-4, atol=2e-5)
        dens = spattn.metrics.density(mask, causal=causal, q_len=Nq if kind == "token" else None)
        nvis = vis.sum()
        ref_d = (np.broadcast_to(allowed, (B, allowed.shape[1], Nq, Nk)) & vis).sum((2, 3)) / nvis if nvis else \
            np.zeros((B, allowed.shape[1]))
        np.testing.assert_allclose(dens, ref_d, rtol=1e-12, atol=1e-12)
        a, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 5)) * rng.integers(0, 2)
        err = spattn.metrics.relative_error(a, b)
        nb = np.linalg.norm(b)
        assert err == (np.linalg.norm(a - b) / nb if nb else (0.0 if not np.any(a - b) else np.inf))
        stats["checked"] += 1

    # ------------------------------------------------------------------ mask helpers
    size = st.one_of(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40),
                     st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**40, 2**70, -2**70, np.int64(3), np.uint8(5),
                                      np.int64(2**40), True, 2.0, "4", None]))

    def valid_size(x, lo=1):
        return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and lo <= int(x) <= 2**31 - 1

    def dense_reference(blocks, bq, bk, Nq, Nk, causal):
        i, j = np.arange(Nq), np.arange(Nk)
        m = blocks[:, :, i // bq][:, :, :, j // bk] if Nq and Nk else np.zeros(blocks.shape[:2] + (Nq, Nk), bool)
        return m & visible(Nq, Nk, causal)

    @CFG
    @given(st.integers(0, 2), st.integers(0, 3), st.integers(0, 70), st.integers(0, 70), size, size,
           st.sampled_from(["bool"] * 4 + ["int8", "uint8", "int64"] * 2 + ["float32", "wrong_shape", "holds_2", "3d"]),
           st.booleans(), st.integers(0, 10**6))
    def masks(B, H, Nq, Nk, bq, bk, dtype, causal, seed):
        rng = np.random.default_rng(seed)
        stats["cases"] += 1
        ok_sizes = valid_size(bq) and valid_size(bk)
        nqb = -(-Nq // int(bq)) if ok_sizes else 1
        nkb = -(-Nk // int(bk)) if ok_sizes else 1
        raw = rng.random((B, H, nqb + (dtype == "wrong_shape"), nkb)) < 0.5
        blocks = raw if dtype in ("bool", "wrong_shape") else raw.astype(dtype if dtype not in ("holds_2", "3d") else np.int64)
        if dtype == "holds_2" and blocks.size:
            blocks.flat[0] = 2
        elif dtype == "holds_2":
            dtype = "bool"
        if dtype == "3d":
            blocks = blocks.reshape((blocks.shape[0] * blocks.shape[1],) + blocks.shape[2:])
        valid = ok_sizes and dtype in ("bool", "int8", "uint8", "int64")
        if not valid:
            expect_error(lambda: spattn.BlockMask(blocks, bq, bk, Nq, Nk), "block_q", "block_k", "blocks")
            return
        bq, bk = int(bq), int(bk)
        m = spattn.BlockMask(blocks, bq, bk, Nq, Nk)
        assert m.blocks.dtype == np.bool_ and m.shape == raw.shape
        ref = dense_reference(raw, bq, bk, Nq, Nk, causal)
        np.testing.assert_array_equal(m.to_dense(causal=causal), ref)
        nvis = visible(Nq, Nk, causal).sum()
        np.testing.assert_allclose(m.density(causal=causal), ref.sum((2, 3)) / nvis if nvis else np.zeros((B, H)),
                                   rtol=1e-12)
        # algebra: | and & against numpy, H = 1 broadcasting against H
        other = random_block_mask(rng, B, 1, Nq, Nk, bq, bk)
        np.testing.assert_array_equal((m | other).blocks, raw | other.blocks)
        np.testing.assert_array_equal((m & other).blocks, raw & other.blocks)
        expect_error(lambda: m | spattn.BlockMask.full(max(B, 1), 1, Nq + 1, Nk, bq, bk), "BlockMask")
        # FlexAttention lists: the selected blocks, padded with junk after kv_num_blocks, split into two lists
        split = rng.random(raw.shape) < 0.5
        lists = []
        for part in (raw & split, raw & ~split):
            num = part.sum(-1).astype(np.int32)
            L = nkb + 1
            idx = rng.integers(-5, nkb + 5, part.shape[:3] + (L,))
            for pos in np.ndindex(*part.shape[:3]):
                sel = np.flatnonzero(part[pos])
                idx[pos][: len(sel)] = rng.permutation(sel)
            lists.append((num, idx))
        back = spattn.BlockMask.from_kv_blocks(lists[0][0], lists[0][1], bq, bk, Nq, Nk,
                                               full_kv_num_blocks=lists[1][0], full_kv_indices=lists[1][1])
        assert back == m
        if raw.any() and nkb:
            num, idx = lists[0][0].copy(), lists[0][1].copy()
            num[...] = 1
            idx[..., 0] = nkb  # out of range inside the used part
            expect_error(lambda: spattn.BlockMask.from_kv_blocks(num, idx, bq, bk, Nq, Nk), "kv_indices")
            expect_error(lambda: spattn.BlockMask.from_kv_blocks(num + idx.shape[-1], idx, bq, bk, Nq, Nk),
                         "kv_num_blocks")
        # TokenIndices: rows are sets (sorted, unique, -1 last); dense view and density against loops
        gs = bq
        Gq = -(-Nq // gs)
        idx = rng.integers(-1, max(Nk, 1), (B, H, Gq, 5)) if Nk else np.full((B, H, Gq, 5), -1)
        if dtype != "bool":
            idx = idx.astype(np.int64 if dtype == "uint8" else dtype)
        ti = spattn.TokenIndices(idx, gs, Nk)
        for pos in np.ndindex(*idx.shape[:3]):
            row = ti.indices[pos]
            want = sorted(set(int(x) for x in idx[pos] if x >= 0))
            assert list(row[: len(want)]) == want and np.all(row[len(want):] == -1), (row, want)
        dense = np.zeros((B, H, Nq, Nk), bool)
        for b, h, g, c in np.ndindex(*idx.shape):
            if idx[b, h, g, c] >= 0:
                dense[b, h, g * gs:(g + 1) * gs, idx[b, h, g, c]] = True
        dense &= visible(Nq, Nk, causal)
        np.testing.assert_array_equal(ti.to_dense(Nq, causal=causal), dense)
        np.testing.assert_allclose(ti.density(q_len=Nq, causal=causal),
                                   dense.sum((2, 3)) / nvis if nvis else np.zeros((B, H)), rtol=1e-12)
        if idx.size:
            bad_idx = idx.astype(np.int64)
            bad_idx.flat[rng.integers(0, bad_idx.size)] = rng.choice([Nk, -2, 2**40])
            expect_error(lambda: spattn.TokenIndices(bad_idx, gs, Nk), "indices")
        expect_error(lambda: spattn.TokenIndices(idx.astype(np.float32), gs, Nk), "indices")
        stats["checked"] += 1

    # ------------------------------------------------------------------ plans
    @CFG
    @given(shapes, st.integers(1, 40), st.integers(1, 40), st.booleans(),
           st.sampled_from([None] * 5 + ["q_len", "k_len", "batch", "causal", "entries", "huge", "not_a_mask", "float"]))
    def plan(shape, bq, bk, shared, bad):
        B, Hkv, G, Nq, Nk, D, causal, seed = shape
        rng = np.random.default_rng(seed)
        Hq = Hkv * G
        q, k, v = qkv(rng, B, Hkv, G, Nq, Nk, D)
        mask = random_block_mask(rng, B, 1 if shared else Hq, Nq, Nk, bq, bk)
        stats["cases"] += 1
        if bad is not None:
            qs, ks = list(q.shape), list(k.shape)
            if bad == "q_len":
                qs[2] += 1
            elif bad == "k_len":
                ks[2] += 1
            elif bad == "batch":
                qs[0] += 1
            elif bad == "entries":
                qs = qs[:3]
            elif bad == "huge":
                qs[rng.integers(0, 4)] = int(rng.choice([2**31, 2**40, 2**70]))
            elif bad == "float":
                qs[rng.integers(0, 4)] = 2.5

            def call():
                if bad == "not_a_mask":
                    spattn.plan(mask.blocks, q.shape, k.shape, causal=causal)
                p = spattn.plan(mask, qs, ks, causal=causal)
                spattn.block_sparse_attention(q, k, v, p, causal=(not causal) if bad == "causal" else causal)
            expect_error(call, "q_shape", "k_shape", "mask", "causal", "batch", "B=", "q_len", "kv_len", "Nq", "Nk")
            return
        p = spattn.plan(mask, q.shape, k.shape, causal=causal)
        out_p = spattn.block_sparse_attention(q, k, v, p, causal=causal)
        np.testing.assert_array_equal(out_p, spattn.block_sparse_attention(q, k, v, mask, causal=causal))
        np.testing.assert_allclose(out_p, reference(q, k, v, mask.to_dense(), causal, None), rtol=2e-4, atol=2e-4)
        # FlexAttention lists: selected blocks holding a visible key, full = every pair visible
        vis = visible(Nq, Nk, causal)
        nf, idf = p.kv_blocks(full=True)
        npart, idp = p.kv_blocks(full=False)
        total = 0
        for b, h, r in np.ndindex(*nf.shape):
            rows = slice(r * bq, min(Nq, (r + 1) * bq))
            want_full, want_part = [], []
            for c in range(mask.blocks.shape[3]):
                sub = vis[rows, c * bk:min(Nk, (c + 1) * bk)]
                if mask.blocks[b, min(h, mask.blocks.shape[1] - 1), r, c] and sub.any():
                    (want_full if sub.all() else want_part).append(c)
            assert list(idf[b, h, r, :nf[b, h, r]]) == want_full and list(idp[b, h, r, :npart[b, h, r]]) == want_part
            total += len(want_full) + len(want_part)
        assert p.nnz == total and p.causal == causal and (p.q_len, p.kv_len) == (Nq, Nk)
        stats["checked"] += 1

    # ------------------------------------------------------------------ integers beyond int32 / int64
    HUGE = st.sampled_from([2**31, 2**32 + 1, 2**40, 2**63 - 1, 2**63, 2**64, 2**70, -2**31 - 1, -2**63, -2**70,
                            np.int64(2**40), np.uint64(2**63), np.int64(-2**40)])
    ones = np.ones((1, 1, 1, 1), bool)
    ti_idx = np.zeros((1, 1, 1, 2), np.int64)
    INT_TARGETS = {
        "BlockMask.block_q": (("block_q",), lambda x: spattn.BlockMask(ones, x, 4, 3, 3)),
        "BlockMask.block_k": (("block_k",), lambda x: spattn.BlockMask(ones, 4, x, 3, 3)),
        "BlockMask.q_len": (("q_len",), lambda x: spattn.BlockMask(ones, 2**31 - 1, 4, x, 3)),
        "BlockMask.kv_len": (("kv_len",), lambda x: spattn.BlockMask(ones, 4, 2**31 - 1, 3, x)),
        "BlockMask.full.B": (("B",), lambda x: spattn.BlockMask.full(x, 1, 3, 3)),
        "BlockMask.full.H": (("H",), lambda x: spattn.BlockMask.full(1, x, 3, 3)),
        "BlockMask.full.q_len": (("q_len",), lambda x: spattn.BlockMask.full(1, 1, x, 3)),
        "BlockMask.full.block_k": (("block_k",), lambda x: spattn.BlockMask.full(1, 1, 3, 3, 4, x)),
        "from_kv_blocks.block_q": (("block_q",), lambda x: spattn.BlockMask.from_kv_blocks(
            np.ones((1, 1, 1), int), np.zeros((1, 1, 1, 1), int), x, 4, 3, 3)),
        "from_kv_blocks.kv_len": (("kv_len",), lambda x: spattn.BlockMask.from_kv_blocks(
            np.ones((1, 1, 1), int), np.zeros((1, 1, 1, 1), int), 4, 4, 3, x)),
        "TokenIndices.group_size": (("group_size",), lambda x: spattn.TokenIndices(ti_idx, x, 3)),
        "TokenIndices.kv_len": (("kv_len",), lambda x: spattn.TokenIndices(ti_idx, 1, x)),
        "TokenIndices.to_dense": (("q_len",), lambda x: spattn.TokenIndices(ti_idx, 1, 3).to_dense(x)),
        "TokenIndices.density": (("q_len",), lambda x: spattn.TokenIndices(ti_idx, 1, 3).density(q_len=x)),
        "metrics.density": (("q_len",), lambda x: spattn.metrics.density(spattn.TokenIndices(ti_idx, 1, 3), q_len=x)),
        "scale": (("scale",), lambda x: spattn.attention(np.ones((1, 1, 2, 4), np.float32), np.ones((1, 1, 2, 4), np.float32),
                                                         np.ones((1, 1, 2, 4), np.float32), scale=int(x) * 2**1100)),
    }
    for _i in range(4):
        INT_TARGETS[f"plan.q_shape[{_i}]"] = ((f"q_shape[{_i}]",), lambda x, i=_i: spattn.plan(
            spattn.BlockMask.full(1, 1, 3, 3, 2, 2), [1, 1, 3, 8][:i] + [x] + [1, 1, 3, 8][i + 1:], (1, 1, 3, 8)))
        INT_TARGETS[f"plan.k_shape[{_i}]"] = ((f"k_shape[{_i}]",), lambda x, i=_i: spattn.plan(
            spattn.BlockMask.full(1, 1, 3, 3, 2, 2), (1, 1, 3, 8), [1, 1, 3, 8][:i] + [x] + [1, 1, 3, 8][i + 1:]))
    for _name in spattn.methods.available():
        _cls = type(spattn.methods.get(_name))
        if _cls.params_struct is None:
            continue
        for _f in _cls.params_struct.field_names():
            _d = getattr(_cls.params_struct(), _f)
            if isinstance(_d, int) and not isinstance(_d, bool):
                INT_TARGETS[f"{_name}.{_f}"] = ((f"{_name}: {_f}",), lambda x, n=_name, f=_f: spattn.methods.get(n, **{f: x}))

    @CFG
    @given(st.sampled_from(sorted(INT_TARGETS)), HUGE)
    def int_args(target, value):
        names, fn = INT_TARGETS[target]
        stats["cases"] += 1
        expect_error(lambda: fn(value), *names)

    # ------------------------------------------------------------------ large scales (logit overflow)
    @CFG
    @given(st.sampled_from(["dense", "block", "token", "recall"]),
           st.one_of(st.floats(-37.9, 38.53).map(lambda e: min(10.0 ** e, FLT_MAX)),
                     st.sampled_from([1e30, 1e36, 1e37, 1e38, FLT_MAX, 1.2e-38])),
           st.integers(-4, 3), st.integers(0, 24), st.integers(0, 40), st.sampled_from([1, 8, 64]), st.booleans(),
           st.integers(0, 10**6))
    def scales(kind, scale, mag, Nq, Nk, D, causal, seed):
        rng = np.random.default_rng(seed)
        q, k, v = qkv(rng, 1, 1, 2, Nq, Nk, D, mag=10.0 ** mag)
        stats["cases"] += 1
        sc = float(np.float32(scale))  # the core computes in float32
        allowed = np.ones((1, 1, Nq, Nk), bool)
        if kind == "block":
            mask = random_block_mask(rng, 1, 2, Nq, Nk, 5, 7, 0.7)
            allowed = mask.to_dense()
            call = lambda: spattn.block_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        elif kind == "token":
            mask = random_token_indices(rng, 1, 2, Nq, Nk, 3)
            allowed = mask.to_dense(Nq)
            call = lambda: spattn.token_sparse_attention(q, k, v, mask, causal=causal, scale=scale, return_lse=True)
        elif kind == "recall":
            mask = spattn.BlockMask.full(1, 1, Nq, Nk, 4, 4)
            call = lambda: spattn.metrics.recall(q, k, mask, causal=causal, scale=scale)
        else:
            call = lambda: spattn.attention(q, k, v, causal=causal, scale=scale, return_lse=True)
        qq, kk = q.astype(np.float64), np.repeat(k.astype(np.float64), 2, axis=1)
        logits = np.einsum("bhid,bhjd->bhij", qq, kk) * sc
        absprod = np.einsum("bhid,bhjd->bhij", np.abs(qq), np.abs(kk)) * sc  # bounds every partial sum
        seen = np.broadcast_to(allowed, logits.shape) & visible(Nq, Nk, causal)
        safe = (absprod.max(initial=0) < 1e38) and sc * np.abs(qq).max(initial=0) < 1e38
        must_fail = np.any(np.where(seen, logits, 0) > 3.5e38)
        try:
            res = call()
        except ValueError as exc:
            assert "scale" in str(exc), str(exc)
            assert not safe, f"rejected a scale whose logits fit float32: {exc}"
            stats["clean_errors"] += 1
            return
        assert not must_fail, "a visible logit beyond float32 gave a result instead of an error"
        if kind == "recall":
            # a full mask keeps all the mass, up to float32 rounding of the logits (ulp of the largest)
            tol = 1e-4 + 5e-7 * np.max(np.abs(np.where(seen, logits, 0)), initial=0)
            assert np.all(np.isnan(res) | (np.abs(res - 1.0) <= tol)), (res, tol)
            stats["checked"] += 1
            return
        out, lse = res
        s = np.where(seen, logits, -np.inf)
        mx = np.max(s, axis=-1, initial=-np.inf)
        rows = np.isfinite(mx)
        assert np.all(np.isfinite(out)) and not np.any(np.isnan(lse)), "NaN/inf from finite inputs"
        assert np.all(out[~rows] == 0) and np.all(lse[~rows] == -np.inf)
        err = 1.2e-7 * D * np.max(np.where(seen, absprod, 0), axis=-1, initial=0) + 1e-30  # logit error of float32
        e = np.where(seen, np.exp(s - np.where(rows, mx, 0)[..., None]), 0.0)
        tot = e.sum(-1)
        ref_lse = np.where(rows, mx + np.log(np.where(rows, tot, 1)), -np.inf)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_less(np.abs(lse - ref_lse)[rows], (err + 1e-5 * np.abs(ref_lse) + 1e-4)[rows])
        vv = np.repeat(v.astype(np.float64), 2, axis=1)
        ref = np.einsum("bhij,bhjd->bhid", e / np.where(tot > 0, tot, 1)[..., None], vv)
        well = rows & (err < 1e-3)
        np.testing.assert_allclose(out[well], ref[well], rtol=2e-4, atol=2e-4)
        # ill-conditioned rows (float32 logits off by more than 1e-3): a convex combination of the visible v rows,
        # and the winning v row itself when the float64 winner leads by far more than the float32 error
        for b, h, i in zip(*np.nonzero(rows & ~well)):
            vis_v = vv[b, h][seen[b, h, i]]
            assert np.all(out[b, h, i] >= vis_v.min(0) - 1e-5) and np.all(out[b, h, i] <= vis_v.max(0) + 1e-5)
            top = np.sort(s[b, h, i])[::-1]
            if len(top) == 1 or top[0] - top[1] > 100 + 4 * err[b, h, i]:
                np.testing.assert_allclose(out[b, h, i], vv[b, h, int(np.argmax(s[b, h, i]))], rtol=1e-5, atol=1e-5)
        stats["checked"] += 1

    GROUPS = {"kernels": kernels, "bad_arguments": bad_arguments, "methods": methods, "merge_states": merge_states,
              "metrics": metrics, "masks": masks, "plan": plan, "int_args": int_args, "scales": scales}
    GROUPS[GROUP]()
    print("FUZZ " + json.dumps(stats))
''')


GROUPS = ["kernels", "bad_arguments", "methods", "merge_states", "metrics", "masks", "plan", "int_args", "scales"]


@pytest.mark.parametrize("group", GROUPS)
def test_fuzz_group_runs_clean_in_a_child_process(group, tmp_path):
    script = tmp_path / "fuzz_child.py"
    script.write_text(CHILD)
    res = subprocess.run([sys.executable, str(script), str(EXAMPLES), group], capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).parent)
    assert res.returncode == 0, f"child exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("FUZZ ")][-1]
    stats = json.loads(line[5:])
    if group == "int_args":  # a finite space (targets x values): hypothesis may exhaust it before EXAMPLES
        assert stats["cases"] > 0 and stats["clean_errors"] == stats["cases"]  # every one rejected, naming it
    else:
        assert stats["cases"] >= EXAMPLES
    if group == "kernels":
        assert stats["checked"] == stats["cases"]  # every generated kernel call is valid and checked
    if group in ("bad_arguments", "masks", "merge_states", "metrics", "plan"):
        assert stats["clean_errors"] > 0
    if group not in ("bad_arguments", "int_args"):
        assert stats["checked"] > 0
    print(group, stats)
