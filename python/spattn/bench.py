"""Kernel benchmark: ``python -m spattn bench``.

Sweeps sequence length and head dim for causal (optionally non-causal) GQA prefill and reports
time, GFLOP/s of useful work (4 * D * visible pairs per head), the ratio to
``torch.nn.functional.scaled_dot_product_attention`` at the same thread count when torch is
installed, block-sparse speedups against spattn dense at given block densities, decode
bandwidth, and peak memory growth (in a fresh subprocess per size).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

from .evaluate import (best_time, evaluate, format_markdown, format_table, parse_method_params, records_as_dicts,
                       torch_sdpa_call)
from .methods import available


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, nargs="*", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--d", type=int, nargs="*", default=[64, 128])
    p.add_argument("--hq", type=int, default=8)
    p.add_argument("--hkv", type=int, default=2)
    p.add_argument("--non-causal", action="store_true", help="also run non-causal")
    p.add_argument("--densities", type=float, nargs="*", default=[0.1, 0.3],
                   help="block densities for the block-sparse kernel")
    p.add_argument("--block", type=int, default=64, help="block size of the block-sparse masks")
    p.add_argument("--no-torch", action="store_true", help="skip the torch SDPA comparison")
    p.add_argument("--decode", type=int, nargs="*", default=[], metavar="NK",
                   help="decode (Nq = 1) against these key lengths")
    p.add_argument("--memory", type=int, nargs="*", default=[], metavar="N",
                   help="peak memory of dense and block-sparse calls at these N (subprocesses)")
    p.add_argument("--memory-kinds", nargs="*", default=["dense", "block_sparse"],
                   choices=["block_sparse"] + available(),
                   help="calls measured by --memory: the block-sparse kernel on a random 10%% mask, or a "
                        "registered method's whole call (dense: the exact kernel)")
    p.add_argument("--methods", nargs="*", default=[], metavar="NAME",
                   help="end-to-end methods on the synthetic structured workload (B=1, Hq, Hkv, D=128)")
    p.add_argument("--decode-methods", nargs="*", default=[], metavar="NAME",
                   help="decode methods over a KVCache (quest, doublesparse), one step at each --decode length")
    p.add_argument("--method-n", type=int, nargs="*", default=[16384, 32768], metavar="N",
                   help="sequence lengths for --methods")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="method parameters for --methods")
    p.add_argument("--markdown", action="store_true",
                   help="also print the --methods records as the README method table")
    p.add_argument("--statistics", type=int, nargs="*", default=[], metavar="N",
                   help="exact statistics passes at these N (synthetic workload, D=128): the estimate of "
                        "--statistics-method, recall of its mask and of TokenIndices, against dense attention")
    p.add_argument("--statistics-method", default="flexprefill", metavar="NAME",
                   help="method whose estimate and mask --statistics times (default: flexprefill, whose "
                        "estimate is an exact last-rows pass)")
    p.add_argument("--no-roofs", action="store_true",
                   help="skip the sgemm and memory-copy roofs measured at the start of the run")
    p.add_argument("--natten", action="store_true",
                   help="neighbourhood attention (na2d on a 64x64 image, kernels 7 and 13; na3d on a 16x32x32 "
                        "video, kernel 7): spattn's kernel against dense attention and torch flex_attention "
                        "compiled on the CPU with the same mask")
    p.add_argument("--gna", action="store_true",
                   help="GNA's tile model against measured time: for 1D (N 32768, kernel 2048) and 2D (128x128, "
                        "kernel 32x32) patterns over a sweep of strides, the speedup over dense attention that "
                        "spattn.na_work predicts for spattn's kernel and the one measured, same run")
    p.add_argument("--nsa-branches", type=int, nargs="*", default=[], metavar="N",
                   help="time NSA's parts separately at these prefill lengths (compression, compressed branch + "
                        "selection, selected blocks, window, gated sum) against dense and torch SDPA; the "
                        "parameters of --set nsa.PARAM=VALUE apply")
    p.add_argument("--sale-estimate", action="store_true",
                   help="only SALE's estimate: the int4 tile products on integer SIMD against float32 products "
                        "of the same candidate tiles (ms per pass, ratio), and the whole estimate call, at --n "
                        "and --d (B=1, --hq, --hkv, causal)")
    p.add_argument("--cap-isa", choices=["avx2"], default=None,
                   help="rerun the whole bench in a child process with every library capped at this "
                        "instruction set: spattn (SPATTN_SIMD), torch (ATEN_CPU_CAPABILITY), MKL "
                        "(MKL_ENABLE_INSTRUCTIONS), oneDNN (ONEDNN_MAX_CPU_ISA) and OpenBLAS "
                        "(OPENBLAS_CORETYPE): an AVX-512 machine standing in for an AVX2-only CPU")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write machine-readable results here")


def _best(fn, repeats: int) -> float:
    return best_time(fn, repeats)[0]


def visible_pairs(nq: int, nk: int, causal: bool) -> int:
    if not causal:
        return nq * nk
    off = nk - nq
    i = np.arange(nq, dtype=np.int64)
    return int(np.clip(i + off + 1, 0, nk).sum())


def random_block_mask(B: int, H: int, nq: int, nk: int, block: int, density: float, causal: bool, seed: int = 0):
    """Random BlockMask keeping about `density` of the visible blocks, diagonal always kept."""
    from .masks import BlockMask

    rng = np.random.default_rng(seed)
    nqb, nkb = math.ceil(nq / block), math.ceil(nk / block)
    blocks = rng.random((B, H, nqb, nkb)) < density
    if causal:
        r = np.arange(nqb)[:, None]
        c = np.arange(nkb)[None, :]
        diag = (nkb - nqb) + r
        blocks &= c <= diag
        blocks |= c == np.minimum(diag, nkb - 1)
    return BlockMask(blocks, block, block, nq, nk)


# Peak resident memory from /proc (VmHWM): getrusage's ru_maxrss survives execve, so a child
# would inherit the benchmark process's own peak.
_MEMORY_SCRIPT = r"""
import sys, numpy as np, spattn
from spattn.bench import random_block_mask
kind, N, D = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 8, N, D), dtype=np.float32)
k = rng.standard_normal((1, 2, N, D), dtype=np.float32)
v = rng.standard_normal((1, 2, N, D), dtype=np.float32)
mask = random_block_mask(1, 8, N, N, 64, 0.1, True) if kind == "block_sparse" else None
method = None if kind == "block_sparse" else spattn.methods.get(kind)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
base = status("VmHWM")
if method is not None:
    method(q, k, v, causal=True)
else:
    spattn.block_sparse_attention(q, k, v, mask, causal=True)
print((status("VmHWM") - base) / 1024.0)
"""


def _bench_methods(args, torch) -> List[Dict[str, Any]]:
    """Estimate cost, end-to-end time, density, recall and error of methods against dense and SDPA,
    on the synthetic structured workload at each ``--method-n`` (records of spattn.evaluate)."""
    from .synthetic import structured_qkv

    from .methods import capabilities

    params = parse_method_params(args.set)
    bidir = [m for m in args.methods if not capabilities(m).causal]  # bidirectional-only patterns (radial)
    causal_methods = [m for m in args.methods if m not in bidir]
    print(f"\n== methods on the synthetic structured workload (B=1, Hq={args.hq}, Hkv={args.hkv}, D=128, causal"
          + (f"; {', '.join(bidir)}: non-causal)" if bidir else ")"))
    records = []
    for N in args.method_n:
        w = structured_qkv(B=1, Hq=args.hq, Hkv=args.hkv, N=N, D=128, seed=0)
        for names, causal in ((causal_methods, True), (bidir, False)):
            if names:
                records += evaluate(names, w, causal=causal, params={m: params[m] for m in names if m in params},
                                    repeats=args.repeats, progress=False, torch_sdpa=torch is not None)
    print(format_table(records))
    if args.markdown:
        print("\n" + format_markdown(records))
    return records_as_dicts(records)


def _bench_decode_methods(args, torch) -> List[Dict[str, Any]]:
    """One decode step of each decode method over a spattn.KVCache holding the synthetic structured
    workload's keys (the first layer the method's plan runs sparse; for a select / reuse plan, the
    first reuse layer, after its select layer ran at the same step): selection + attention time
    (for a reuse plan, "select" is the select layer's whole call) against dense decode over the
    same cache and torch SDPA, the append (cache state update) of one token, the keys read per
    head, the recall of the selection and the bytes of the attended K/V rows (per kv head when
    the heads of a group share their list, else per query head) over the step time."""
    import spattn
    from .synthetic import structured_qkv

    params = parse_method_params(args.set)
    rows: List[Dict[str, Any]] = []
    print(f"\n== decode methods over a KVCache (synthetic structured workload, B=1, Hq={args.hq}, Hkv={args.hkv}, "
          "D=128, one step after the prompt)")
    for Nk in args.decode:
        w = structured_qkv(B=1, Hq=args.hq, Hkv=args.hkv, N=Nk, D=128, seed=0)
        q = np.ascontiguousarray(w.q[:, :, -1:])
        dense_s = None
        for name in args.decode_methods:
            m = spattn.methods.get(name, **params.get(name, {}))
            roles = [m.layer_plan().role(i) for i in range(64)]
            if "sparse" in roles:  # the first layer the method runs sparse
                layer, sel_layer = roles.index("sparse"), None
            else:  # a reuse layer, after the select layer whose selection it attends (TidalDecode)
                layer = roles.index("reuse")
                sel_layer = max(i for i in range(layer) if roles[i] == "select")
            layers = [layer] if sel_layer is None else [sel_layer, layer]
            cache = spattn.KVCache()
            for li in layers:
                cache.append(li, w.k[:, :, :-8], w.v[:, :, :-8])
                m.select(q, cache, layer=li)  # registers the method's cache state
            times = []
            for j in range(Nk - 8, Nk):  # 8 single-token appends: K/V + state update (growth amortised)
                for li in layers[:-1]:
                    cache.append(li, w.k[:, :, j:j + 1], w.v[:, :, j:j + 1])
                t0 = time.perf_counter()
                cache.append(layer, w.k[:, :, j:j + 1], w.v[:, :, j:j + 1])
                times.append(time.perf_counter() - t0)
            t_app = float(np.median(times))
            kb, vb, n = cache.buffers(layer)
            if dense_s is None:
                dense_s = _best(lambda: spattn.attention(q, kb, vb, kv_len=n, causal=True), 5)
                torch_s = _best(torch_sdpa_call(torch, q, w.k, w.v, False), 5) if torch is not None else None
            if sel_layer is None:
                sel_s = _best(lambda: m.select(q, cache, layer=layer), 5)
            else:  # the select layer's whole call: dense attention + the selection it stores
                sel_s = _best(lambda: m(q, cache, layer=sel_layer), 5)
            tot_s = _best(lambda: m(q, cache, layer=layer), 5)
            idx = m.select(q, cache, layer=layer)
            kept = float(np.mean((idx.indices >= 0).sum(-1)))
            G = args.hq // args.hkv  # rows read: per kv head when a group shares its list, else per query head
            ii = idx.indices.reshape(1, args.hkv, G, -1)
            shared = bool((ii == ii[:, :, :1]).all())
            rows_read = float((ii[:, :, :1] >= 0).sum() if shared else (ii >= 0).sum())
            kv_bytes = rows_read * 128 * 2 * 4
            rec = float(np.nanmean(spattn.metrics.recall(q, w.k, idx, causal=True)))
            row = {"method": name, "Nk": Nk, "append_s": t_app, "keys_per_head": kept, "density": kept / Nk, "recall": rec,
                   "select_s": sel_s, "total_s": tot_s, "dense_s": dense_s, "speedup_vs_dense": dense_s / tot_s,
                   "kv_bytes": kv_bytes, "gbps": kv_bytes / tot_s / 1e9,
                   "torch_s": torch_s, "speedup_vs_torch": None if torch_s is None else torch_s / tot_s}
            rows.append(row)
            row["select_layer"] = sel_layer
            print(f"Nk={Nk:>7} {name:<13} keys/head {kept:8.0f} ({kept / Nk:.3f}) recall {rec:.3f} | "
                  f"{'select' if sel_layer is None else 'select layer (dense + top-k)'} "
                  f"{sel_s * 1e3:.2f} ms, step {tot_s * 1e3:.2f} ms ({kv_bytes / tot_s / 1e9:.1f} GB/s of attended K/V), append {t_app * 1e3:.2f} ms | dense {dense_s * 1e3:.2f} ms "
                  f"({dense_s / tot_s:.2f}x)" + (f" | torch {torch_s * 1e3:.2f} ms ({torch_s / tot_s:.2f}x)"
                                                  if torch_s is not None else ""))
    return rows


def _bench_nsa_branches(args, torch) -> List[Dict[str, Any]]:
    """NSA's parts one by one on the synthetic structured workload (B=1, D=128, causal prefill):
    the compression (numpy projections), the compressed branch with the selection
    (``_core.nsa_compressed_attention``), the selected blocks (row-block kernel), the window and
    the gated sum, each timed alone, against the whole call, dense attention and torch SDPA."""
    import spattn
    from .methods.nsa import NSA
    from .synthetic import structured_qkv

    params = parse_method_params(args.set).get("nsa", {})
    rows: List[Dict[str, Any]] = []
    print(f"\n== NSA per branch (synthetic structured workload, B=1, Hq={args.hq}, Hkv={args.hkv}, D=128, causal)")
    for N in args.nsa_branches:
        w = structured_qkv(B=1, Hq=args.hq, Hkv=args.hkv, N=N, D=128, seed=0)
        q, k, v = w.q, w.k, w.v
        m = spattn.methods.get("nsa", **params)
        assert isinstance(m, NSA)
        reps = args.repeats
        t_comp = _best(lambda: m.compress(k, v), reps)
        kc, vc, C = m.compress(k, v)
        t_cmp = _best(lambda: spattn._core.nsa_compressed_attention(q, kc, vc, C, N, None, m.cparams), reps)
        blocks = spattn._core.nsa_compressed_attention(q, kc, vc, C, N, None, m.cparams)[0]
        sel = spattn.RowBlockIndices(blocks, m.params["block_size"], N, assume_sorted=True)
        t_slc = _best(lambda: spattn.row_block_sparse_attention(q, k, v, sel, causal=True), reps)
        left = m.params["window_size"] if m.params["window_inclusive"] else m.params["window_size"] - 1
        t_swa = _best(lambda: spattn.window_attention(q, k, v, left=left, causal=True), reps)
        br = m.branches(q, k, v, causal=True)
        g = m.gate_values(1, args.hq, N)
        t_sum = _best(lambda: g[..., 0:1] * br["cmp"] + g[..., 1:2] * br["slc"] + g[..., 2:3] * br["swa"], reps)
        t_all = _best(lambda: m(q, k, v, causal=True), reps)
        t_dense = _best(lambda: spattn.attention(q, k, v, causal=True), reps)
        t_torch = _best(torch_sdpa_call(torch, q, k, v, True), reps) if torch is not None else None
        density = float(np.mean(sel.density(causal=True)))
        row = {"N": N, "compress_s": t_comp, "compressed_and_selection_s": t_cmp, "selected_s": t_slc,
               "window_s": t_swa, "gated_sum_s": t_sum, "total_s": t_all, "dense_s": t_dense, "torch_s": t_torch,
               "compressed_tokens": C, "selection_density": density}
        rows.append(row)
        parts = [("compress", t_comp), ("cmp+select", t_cmp), ("selected", t_slc), ("window", t_swa), ("sum", t_sum)]
        print(f"N={N:>6}: " + ", ".join(f"{n} {t * 1e3:.1f} ms ({t / t_dense:.2f} of dense)" for n, t in parts))
        print(f"{'':>9}total {t_all * 1e3:.1f} ms = {t_dense / t_all:.2f}x vs dense {t_dense * 1e3:.1f} ms"
              + (f", {t_torch / t_all:.2f}x vs torch SDPA {t_torch * 1e3:.1f} ms" if t_torch is not None else "")
              + f"; selection density {density:.3f}")
    return rows


def _na_flex_mask_mod(shape, kernel):
    """flex_attention mask_mod of non-causal neighbourhood attention (dilation 1, stride 1) over a
    row-major grid `shape`: per axis the window [clamp(i - K//2, 0, L - K), + K) of NATTEN."""
    def mask_mod(b, h, q_idx, kv_idx):
        keep = None
        qi, ki = q_idx, kv_idx
        for axis in range(len(shape) - 1, -1, -1):
            L, K = shape[axis], kernel[axis]
            qa, ka = qi % L, ki % L
            qi, ki = qi // L, ki // L
            start = (qa - K // 2).clamp(0, L - K)
            ok = (ka >= start) & (ka < start + K)
            keep = ok if keep is None else keep & ok
        return keep
    return mask_mod


def _bench_natten(args, torch) -> List[Dict[str, Any]]:
    """na2d / na3d (heads first) against dense attention over the same tokens and torch
    flex_attention (torch.compile, CPU) with the neighbourhood mask, B=1, H=8, D=64."""
    import spattn

    rows: List[Dict[str, Any]] = []
    print("\n== neighbourhood attention (B=1, H=8, D=64, non-causal; torch: flex_attention compiled, same mask)")
    flex = None
    if torch is not None:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            flex = torch.compile(flex_attention, dynamic=False)
        except Exception as exc:  # pragma: no cover - torch without flex attention
            print(f"torch flex_attention unavailable: {exc}")
    rng = np.random.default_rng(0)
    for shape, kernel in (((64, 64), (7, 7)), ((64, 64), (13, 13)), ((16, 32, 32), (7, 7, 7))):
        N = int(np.prod(shape))
        q, k, v = (rng.standard_normal((1, 8) + shape + (64,), dtype=np.float32) for _ in range(3))
        fn = spattn.na2d if len(shape) == 2 else spattn.na3d
        na_s = _best(lambda: fn(q, k, v, kernel, layout="heads_first"), max(args.repeats, 3))
        qf, kf, vf = (x.reshape(1, 8, N, 64) for x in (q, k, v))
        dense_s = _best(lambda: spattn.attention(qf, kf, vf), max(args.repeats, 2))
        row = {"shape": list(shape), "kernel": list(kernel), "tokens": N, "natten_s": na_s, "dense_s": dense_s,
               "speedup_vs_dense": dense_s / na_s, "flex_s": None, "speedup_vs_flex": None}
        if flex is not None:
            try:
                bm = create_block_mask(_na_flex_mask_mod(shape, kernel), 1, 1, N, N, device="cpu")
                tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)) for x in (qf, kf, vf))
                with torch.no_grad():
                    ref = flex(tq, tk, tv, block_mask=bm)  # compiles
                    err = float(np.abs(ref.numpy() - fn(q, k, v, kernel, layout="heads_first").reshape(1, 8, N, 64)).max())
                    flex_s = _best(lambda: flex(tq, tk, tv, block_mask=bm), max(args.repeats, 3))
                row.update(flex_s=flex_s, speedup_vs_flex=flex_s / na_s, max_abs_diff_vs_flex=err)
            except Exception as exc:  # pragma: no cover - compile failures are reported, not fatal
                print(f"flex_attention failed for {shape}: {type(exc).__name__}: {str(exc)[:200]}")
        rows.append(row)
        print(f"{'x'.join(map(str, shape)):>9} kernel {'x'.join(map(str, kernel)):>6}: na {na_s * 1e3:8.2f} ms | dense "
              f"{dense_s * 1e3:8.2f} ms ({dense_s / na_s:.2f}x)" + (
                  f" | flex {row['flex_s'] * 1e3:8.2f} ms ({row['speedup_vs_flex']:.2f}x, max diff "
                  f"{row['max_abs_diff_vs_flex']:.1e})" if row["flex_s"] else ""))
    return rows


GNA_CASES = (((32768,), (2048,), (1, 16, 64, 128, 256, 2048)), ((128, 128), (32, 32), (1, 4, 8, 16, 32)),
             ((64, 64), (7, 7), (1, 7)), ((64, 64), (13, 13), (1, 13)), ((16, 32, 32), (7, 7, 7), (1, 7)))


def _bench_gna(args) -> List[Dict[str, Any]]:
    """GNA's analytical model (spattn.na_work: the (query, key) slots spattn's neighbourhood kernel
    computes for its own tiling) against the measured speedup of that kernel over dense
    non-causal attention, B=1, H=8 (Hkv 8), D=64, over strides (s = 1: NA, s = kernel: blocked)."""
    import spattn

    rows: List[Dict[str, Any]] = []
    print("\n== GNA tile model vs measured (B=1, H=8, D=64, non-causal; predicted = N^2 / computed pairs of "
          "spattn's kernel, measured = dense time / na time)")
    rng = np.random.default_rng(0)
    for shape, kernel, strides in GNA_CASES:
        N = int(np.prod(shape))
        q, k, v = (rng.standard_normal((1, 8, N, 64), dtype=np.float32) for _ in range(3))
        dense_s = _best(lambda: spattn.attention(q, k, v), max(args.repeats, 2))
        for s in strides:
            st = tuple(min(s, kk) for kk in kernel)
            w = spattn.na_work(shape, kernel, stride=st)
            fn = (spattn.na1d, spattn.na2d, spattn.na3d)[len(shape) - 1]
            qs, ks, vs = (x.reshape((1, 8) + tuple(shape) + (64,)) for x in (q, k, v))
            na_s = _best(lambda: fn(qs, ks, vs, kernel, stride=st, layout="heads_first"), max(args.repeats, 3))
            tile = spattn.gna_tile_stats(shape, kernel, stride=st, q_tile=w["box_shape"],
                                         kv_tile=(1,) * (len(shape) - 1) + (16,))
            row = {"shape": list(shape), "kernel": list(kernel), "stride": list(st), "tokens": N,
                   "box_shape": list(w["box_shape"]), "useful_fraction": w["useful_fraction"],
                   "predicted_speedup": w["speedup_bound"], "density": w["visible_pairs"] / w["dense_pairs"],
                   "flop_bound": w["dense_pairs"] / w["visible_pairs"],
                   "perfectly_block_sparse_16": tile["perfectly_block_sparse"],
                   "na_s": na_s, "dense_s": dense_s, "measured_speedup": dense_s / na_s,
                   "efficiency": dense_s / na_s / w["speedup_bound"]}
            rows.append(row)
            print(f"{'x'.join(map(str, shape)):>9} kernel {'x'.join(map(str, kernel)):>9} stride "
                  f"{'x'.join(map(str, st)):>9}: box {'x'.join(map(str, w['box_shape'])):>7} useful "
                  f"{w['useful_fraction']:.3f} | predicted {w['speedup_bound']:6.2f}x (FLOP bound "
                  f"{row['flop_bound']:6.2f}x) | measured {dense_s / na_s:6.2f}x ({na_s * 1e3:8.2f} ms vs dense "
                  f"{dense_s * 1e3:8.2f} ms) | efficiency {row['efficiency']:.2f}")
    return rows


def _bench_statistics(args) -> List[Dict[str, Any]]:
    """Time the exact statistics passes of the tile engine against dense attention."""
    import spattn

    rows: List[Dict[str, Any]] = []
    print(f"\n== exact statistics passes (synthetic workload, B=1, Hq={args.hq}, Hkv={args.hkv}, D=128, causal)")
    for N in args.statistics:
        w = spattn.synthetic.structured_qkv(B=1, Hq=args.hq, Hkv=args.hkv, N=N, D=128, seed=0)
        dense_s = _best(lambda: spattn.attention(w.q, w.k, w.v, causal=True), 1)
        method = spattn.methods.get(args.statistics_method)
        est_s = _best(lambda: method.estimate(w.q, w.k, causal=True), args.repeats + 1)
        mask = method.estimate(w.q, w.k, causal=True)
        rec_s = _best(lambda: spattn.metrics.recall(w.q, w.k, mask, causal=True), args.repeats)
        idx = spattn.TokenIndices(np.broadcast_to(np.arange(0, N, 16, dtype=np.int32), (1, args.hq, N, N // 16)),
                                  1, N, assume_sorted=True)
        tok_s = _best(lambda: spattn.metrics.recall(w.q, w.k, idx, causal=True), args.repeats)
        row = {"N": N, "method": args.statistics_method, "dense_s": dense_s, "estimate_s": est_s,
               "recall_mask_s": rec_s, "recall_tokens_s": tok_s}
        rows.append(row)
        print(f"N={N:>6}: dense {dense_s:.3f} s | {args.statistics_method} estimate {est_s:.4f} s "
              f"({est_s / dense_s:.1%}) | recall of its mask {rec_s:.3f} s ({rec_s / dense_s:.2f}x dense) | "
              f"recall(TokenIndices, every 16th key) {tok_s:.3f} s")
    return rows


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_roofs(torch, threads: int) -> Dict[str, float]:
    """The machine's roofs in this run: sgemm 4096^3 GFLOP/s (torch when installed, else numpy's
    BLAS) and memory-copy GB/s (read + write of 512 MiB)."""
    n = 4096
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        t = _best(lambda: torch.mm(ta, tb), 3)
    else:
        t = _best(lambda: a @ b, 3)
    src = np.ones(128 * 2**20, dtype=np.float32)
    dst = np.empty_like(src)
    tc = _best(lambda: np.copyto(dst, src), 5)
    return {"sgemm_gflops": 2.0 * n**3 / t / 1e9, "copy_GBps": 2 * src.nbytes / tc / 1e9,
            "sgemm_by": "torch" if torch is not None else "numpy"}


def _bench_sale_estimate(args) -> List[Dict[str, Any]]:
    """SALE's estimate cost: the int4 products of every candidate (segment) tile on integer SIMD
    against float32 products of the same tiles (q against the smoothed keys) through the float
    tile product, each reduced to row maxima; quantisation and the exact pass excluded. Plus the
    whole ``estimate`` call (quantisation, exact local+sink pass, scan)."""
    import spattn
    from spattn import _core

    info = spattn.build_info()
    print(f"\n== SALE estimate (B=1, Hq={args.hq}, Hkv={args.hkv}, causal; int4 on {info['simd_int4']}, "
          f"float32 on {info['simd']})")
    rows: List[Dict[str, Any]] = []
    rng = np.random.default_rng(0)
    m = spattn.methods.get("sale")
    reps = max(args.repeats, 1)
    for D in args.d:
        for N in args.n:
            q = rng.standard_normal((1, args.hq, N, D), dtype=np.float32)
            k = rng.standard_normal((1, args.hkv, N, D), dtype=np.float32)
            int4_ms = _core.sale_estimate_ms(q, k, m.cparams, True, reps)
            fp32_ms = _core.sale_estimate_ms(q, k, m.cparams, False, reps)
            est_s = _best(lambda: m.estimate(q, k, causal=True), reps)
            row = {"N": N, "D": D, "int4_ms": int4_ms, "fp32_ms": fp32_ms, "fp32_over_int4": fp32_ms / int4_ms,
                   "estimate_s": est_s, "simd_int4": info["simd_int4"]}
            rows.append(row)
            print(f"N={N:>6} D={D:>4}: int4 tiles {int4_ms:9.2f} ms, fp32 tiles {fp32_ms:9.2f} ms, "
                  f"fp32/int4 {fp32_ms / int4_ms:5.2f}x; whole estimate {est_s * 1e3:9.2f} ms")
    return rows


# Environment that caps spattn, torch and the BLAS libraries at one instruction set (--cap-isa).
ISA_CAPS = {"avx2": {"SPATTN_SIMD": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                     "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}}


def capped_env(isa: str, base: Dict[str, str]) -> Dict[str, str]:
    """``base`` with the variables of ISA_CAPS[isa] set (they must be set before the libraries load)."""
    env = dict(base)
    env.update(ISA_CAPS[isa])
    env["SPATTN_BENCH_CAPPED"] = isa
    return env


def _run_capped(args) -> int:
    import os

    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if "bench" not in argv:
        raise ValueError("--cap-isa needs the bench command line (python -m spattn bench ...)")
    return subprocess.call([sys.executable, "-m", "spattn", *argv], env=capped_env(args.cap_isa, os.environ))


def run(args) -> int:
    import os

    import spattn

    if getattr(args, "cap_isa", None) and os.environ.get("SPATTN_BENCH_CAPPED") != args.cap_isa:
        return _run_capped(args)
    if args.sale_estimate:
        results = {"sale_estimate": _bench_sale_estimate(args)}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2)
        return 0

    threads = spattn.num_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            _torch.set_num_threads(threads)
            torch = _torch
        except ImportError:
            print("torch not installed: no SDPA comparison (pip install '.[bench]')")
    info = spattn.build_info()
    env = {"threads": threads, "machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
           "simd": info["simd"], "simd_available": info["simd_available"], "native": info["native"],
           "torch": getattr(torch, "__version__", None), "spattn": spattn.__version__,
           "torch_simd": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
           "capped_isa": os.environ.get("SPATTN_BENCH_CAPPED")}
    print(f"cpu: {env['cpu']}; simd={info['simd']} (available {', '.join(info['simd_available'])}); "
          f"threads={threads} torch={env['torch']}"
          + (f" (torch simd {env['torch_simd']})" if torch is not None else "")
          + (f"; every library capped at {env['capped_isa']} (--cap-isa)" if env["capped_isa"] else ""))
    if not args.no_roofs:
        env.update(measure_roofs(torch, threads))
        print(f"roofs: sgemm 4096^3 {env['sgemm_gflops']:.1f} GFLOP/s ({env['sgemm_by']}), "
              f"memory copy {env['copy_GBps']:.1f} GB/s (read + write)")
    results: Dict[str, Any] = {"env": env, "dense": [], "block_sparse": [], "decode": [], "memory": []}
    causal_modes = [True] + ([False] if args.non_causal else [])
    rng = np.random.default_rng(0)
    hdr = f"{'N':>6}{'D':>5}{'causal':>7}{'spattn s':>10}{'GFLOP/s':>9}{'torch s':>9}{'torch/spattn':>13}"
    print("\n== dense (B=1, Hq=%d, Hkv=%d, fp32)" % (args.hq, args.hkv))
    print(hdr)
    for D in args.d:
        for N in args.n:
            q = rng.standard_normal((1, args.hq, N, D), dtype=np.float32)
            k = rng.standard_normal((1, args.hkv, N, D), dtype=np.float32)
            v = rng.standard_normal((1, args.hkv, N, D), dtype=np.float32)
            for causal in causal_modes:
                reps = args.repeats if N <= 8192 else 1
                t = _best(lambda: spattn.attention(q, k, v, causal=causal), reps)
                flops = 4.0 * D * args.hq * visible_pairs(N, N, causal)
                row = {"N": N, "D": D, "causal": causal, "spattn_s": t, "gflops": flops / t / 1e9}
                if torch is not None:
                    tt = _best(torch_sdpa_call(torch, q, k, v, causal), reps)
                    row.update(torch_s=tt, torch_over_spattn=tt / t)
                results["dense"].append(row)
                print(f"{N:>6}{D:>5}{str(causal):>7}{t:>10.4f}{row['gflops']:>9.1f}"
                      + (f"{row['torch_s']:>9.4f}{row['torch_over_spattn']:>12.2f}x" if torch else ""))
                if args.densities and causal:
                    for dens in args.densities:
                        mask = random_block_mask(1, args.hq, N, N, args.block, dens, causal)
                        ts = _best(lambda: spattn.block_sparse_attention(q, k, v, mask, causal=causal), reps)
                        tc = _best(lambda: spattn.plan(mask, q.shape, k.shape, causal=causal), 5)
                        plan = spattn.plan(mask, q.shape, k.shape, causal=causal)
                        tp = _best(lambda: spattn.block_sparse_attention(q, k, v, plan, causal=causal), reps)
                        real = float(np.mean(mask.density(causal=causal)))
                        srow = {"N": N, "D": D, "causal": causal, "target_density": dens, "density": real,
                                "spattn_s": ts, "speedup_vs_dense": t / ts, "ideal": 1.0 / real,
                                "gflops": flops * real / ts / 1e9, "plan_compile_s": tc, "with_plan_s": tp}
                        results["block_sparse"].append(srow)
                        print(f"{'':>6}{'':>5}{'':>7}  block-sparse density {real:.3f}: {ts:.4f} s, "
                              f"{t / ts:.2f}x vs dense (ideal {1 / real:.2f}x), {srow['gflops']:.1f} GFLOP/s; "
                              f"plan compile {tc * 1e3:.2f} ms, reused plan {tp:.4f} s")
    if args.decode:
        print("\n== decode (Nq=1, B=1, Hq=%d, Hkv=%d, D=128)" % (args.hq, args.hkv))
        for Nk in args.decode:
            q = rng.standard_normal((1, args.hq, 1, 128), dtype=np.float32)
            k = rng.standard_normal((1, args.hkv, Nk, 128), dtype=np.float32)
            v = rng.standard_normal((1, args.hkv, Nk, 128), dtype=np.float32)
            t = _best(lambda: spattn.attention(q, k, v, causal=True), 5)
            gbs = (k.nbytes + v.nbytes) / t / 1e9
            row = {"Nk": Nk, "spattn_s": t, "kv_GBps": gbs}
            if torch is not None:
                tt = _best(torch_sdpa_call(torch, q, k, v, False), 5)
                row.update(torch_s=tt, torch_over_spattn=tt / t)
            # half-precision K/V (fp16): read as stored vs converted to float32 up front per call
            k16, v16 = k.astype(np.float16), v.astype(np.float16)
            th = _best(lambda: spattn.attention(q, k16, v16, causal=True), 5)
            tc = _best(lambda: spattn.attention(q, k16.astype(np.float32), v16.astype(np.float32), causal=True), 5)
            row.update(fp16_s=th, fp16_convert_s=tc, fp16_kv_GBps=(k16.nbytes + v16.nbytes) / th / 1e9)
            if torch is not None:
                kb, vb = torch.from_numpy(k).bfloat16(), torch.from_numpy(v).bfloat16()
                tb = _best(lambda: spattn.attention(q, kb, vb, causal=True), 5)
                qb = torch.from_numpy(q).bfloat16()
                ttb = _best(lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, enable_gqa=True), 5)
                row.update(bf16_s=tb, torch_bf16_s=ttb)
            results["decode"].append(row)
            share = f" ({gbs / env['copy_GBps']:.0%} of the copy roof)" if "copy_GBps" in env else ""
            print(f"Nk={Nk:>7}: {t * 1e3:.2f} ms, {gbs:.1f} GB/s of K/V{share}"
                  + (f", torch {row['torch_s'] * 1e3:.2f} ms" if torch else ""))
            print(f"{'':>10}fp16 K/V read as stored {th * 1e3:.2f} ms ({row['fp16_kv_GBps']:.1f} GB/s), "
                  f"converted to float32 first {tc * 1e3:.2f} ms"
                  + (f"; bf16 K/V {row['bf16_s'] * 1e3:.2f} ms, torch bf16 {row['torch_bf16_s'] * 1e3:.2f} ms"
                     if torch is not None else ""))
    if args.memory:
        print("\n== peak memory above inputs (B=1, Hq=8, Hkv=2, D=128, causal), fresh process per size")
        for N in args.memory:
            for kind in args.memory_kinds:
                res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, kind, str(N), "128"],
                                     capture_output=True, text=True, check=True)
                mb = float(res.stdout.strip().splitlines()[-1])
                results["memory"].append({"N": N, "kernel": kind, "peak_extra_MB": mb})
                out_mb = 8 * N * 128 * 4 / 2**20
                print(f"N={N:>6} {kind:<13} +{mb:8.1f} MB incl. output of {out_mb:.1f} MB (an N x N fp32 "
                      f"score matrix per head would be {N * N * 4 / 2**20:.0f} MB)")
    if args.statistics:
        results["statistics"] = _bench_statistics(args)
    if args.decode_methods:
        results["decode_methods"] = _bench_decode_methods(args, torch)
    if args.nsa_branches:
        results["nsa_branches"] = _bench_nsa_branches(args, torch)
    if args.gna:
        results["gna"] = _bench_gna(args)
    if args.natten:
        results["natten"] = _bench_natten(args, torch)
    if args.methods:
        results["methods"] = _bench_methods(args, torch)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
