"""Inputs of the Direct3D-S2 SSA GPU cross-check: sparse voxel sets in the official token order
(sort_block), fp16-rounded q/k/v, and the mean-pool compressed keys/values spattn uses (given to
both sides, so the check covers the block scores, the top-k and the selected-block attention)."""
import os

import numpy as np

import spattn
from spattn.methods.direct3d_ssa import sort_block

here = os.path.dirname(os.path.abspath(__file__))
CASES = {  # name: (kind, N, Hq, Hkv, D, c, b, topk, res)
    "a": ("shell", 3000, 8, 2, 64, 4, 8, 8, 64),
    "b": ("random", 2500, 4, 2, 128, 4, 4, 8, 32),
}


def voxels(rng, kind, N, res):
    if kind == "random":
        flat = rng.choice(res ** 3, size=N, replace=False)
    else:  # the voxels of a sphere shell, N of them at random
        g = np.indices((res,) * 3).reshape(3, -1).T
        r = np.linalg.norm(g - (res - 1) / 2, axis=1)
        shell = np.flatnonzero(np.abs(r - res * 0.35) < 1.5)
        flat = np.ravel_multi_index(g[rng.choice(shell, size=N, replace=False)].T, (res,) * 3)
    return np.stack(np.unravel_index(flat, (res,) * 3), axis=1).astype(np.int64)


out = {}
for name, (kind, N, Hq, Hkv, D, c, b, topk, res) in CASES.items():
    rng = np.random.default_rng(ord(name))
    coords = voxels(rng, kind, N, res)
    coords = coords[sort_block(coords, b)]
    q = (rng.standard_normal((1, Hq, N, D)) * 1.5).astype(np.float16).astype(np.float32)
    k, v = (rng.standard_normal((2, 1, Hkv, N, D))).astype(np.float16).astype(np.float32)
    m = spattn.methods.get("direct3d_ssa", compression_block_size=c, selection_block_size=b, topk=topk, resolution=res)
    cell_of, C, _, _, _ = m._cells(coords)
    kc, vc = m.compress(k[0], v[0], coords, cell_of, C)
    cells = np.unique(coords // c, axis=0)
    out.update({f"{name}_q": q, f"{name}_k": k, f"{name}_v": v, f"{name}_coords": coords, f"{name}_cells": cells,
                f"{name}_kc": kc[None].astype(np.float16).astype(np.float32),
                f"{name}_vc": vc[None].astype(np.float16).astype(np.float32),
                f"{name}_cfg": np.array([c, b, topk, res])})
np.savez_compressed(os.path.join(here, "inputs.npz"), **out)
print({k: v.shape for k, v in out.items()})
