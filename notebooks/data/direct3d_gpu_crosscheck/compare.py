"""Compares spattn's direct3d_ssa with the official Triton outputs of run_official_triton.py.
Usage: python compare.py DIR (holding ssa_<case>_<fp16|bf16>.npz); prints one line per case and dtype."""
import os
import sys

import numpy as np

import spattn

here = os.path.dirname(os.path.abspath(__file__))
d = np.load(os.path.join(here, "inputs.npz"))
src = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
for name in sorted({k.split("_")[0] for k in d.files}):
    c, b, topk, res = (int(x) for x in d[f"{name}_cfg"])
    q, k, v, kc, vc = (d[f"{name}_{x}"] for x in ("q", "k", "v", "kc", "vc"))
    m = spattn.methods.get("direct3d_ssa", compression_block_size=c, selection_block_size=b, topk=topk, resolution=res)
    br = m.branches(q, k, v, coords=d[f"{name}_coords"], compressed_kv=(kc, vc))
    ours = br["blocks"][0]  # (Hkv, N, K)
    G = q.shape[1] // k.shape[1]
    for dt in ("fp16", "bf16"):
        path = os.path.join(src, f"ssa_{name}_{dt}.npz")
        if not os.path.exists(path):
            continue
        o = np.load(path)
        idx = o["idx"].astype(np.int64)[..., :ours.shape[-1]]
        same = np.all(idx == ours, axis=-1)  # (Hkv, N)
        rows = np.repeat(same, G, axis=0)  # (Hq, N)
        slc = o["o_slc"].transpose(1, 0, 2)  # (Hq, N, D)
        cmp = o["o_cmp"].transpose(1, 0, 2)
        print(f"case {name} (N {q.shape[2]}, Hq {q.shape[1]}, Hkv {k.shape[1]}, D {q.shape[3]}, c {c}, b {b}, topk {topk}) "
              f"vs official Triton {dt}: compressed-branch max |diff| {np.abs(br['cmp'][0] - cmp).max():.2e}, "
              f"selection rows identical {same.mean():.4f}, selected-branch (rows with the same selection) max |diff| "
              f"{np.abs(br['slc'][0][rows] - slc[rows]).max():.2e}")
