"""Sampled block tokens for the Video-BLADE GPU cross-check (CPU): spattn's Gilbert order and
seeded sampling on synthetic q, k; writes build/official/blade_inputs.npz (fp16, not committed).

Run on an H100 on 2026-11-26 (result.txt). Steps, from the repository root:
1. put the official files (ziplab/VIDEO-BLADE ``wanx/train/special_attentions_local/``) in
   build/official/blade_pkg/sal/: TrainRelated/{attn_pooling_kernel,wanx_blocksparseattn}.py,
   utils/gilbert3d.py, empty __init__.py files in sal/, sal/TrainRelated/, sal/utils/, and a
   utils/tools.py defining ``timeit`` as the identity (the official one imports matplotlib);
2. ``PYTHONPATH=python python notebooks/data/blade_gpu_crosscheck/make_inputs.py``;
3. on a GPU, carrying build/official: ``python notebooks/data/blade_gpu_crosscheck/run_official_triton.py``
   (writes $OUT/blade_official.npz);
4. ``PYTHONPATH=python python notebooks/data/blade_gpu_crosscheck/compare.py PATH/blade_official.npz``
   (writes result.txt).
"""
import os

import numpy as np

import spattn
from spattn.methods.blade import _gather_sampled, sample_positions, token_order

CASES = {"wan": dict(grid=(52, 30, 21), H=2, D=128), "small": dict(grid=(26, 15, 21), H=4, D=64)}

if __name__ == "__main__":
    out = {}
    for name, c in CASES.items():
        N = int(np.prod(c["grid"]))
        w = spattn.synthetic.structured_qkv(B=1, Hq=c["H"], Hkv=c["H"], N=N, D=c["D"], seed=3)
        order = token_order(N, c["grid"])
        rng = np.random.default_rng(0)
        pq = sample_positions(1, c["H"], 128, 32, rng)
        pk = sample_positions(1, c["H"], 128, 32, rng)
        out[f"{name}_qs"] = _gather_sampled(w.q, order, pq, 128).astype(np.float16)
        out[f"{name}_ks"] = _gather_sampled(w.k, order, pk, 128).astype(np.float16)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "build", "official", "blade_inputs.npz")
    np.savez(path, **out)
    print({k: v.shape for k, v in out.items()})
