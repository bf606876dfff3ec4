"""Compares spattn's Video-BLADE block scores and energy mask with the official GPU results
(run_official_triton.py's blade_official.npz, path as argument); writes result.txt here."""
import os
import sys

import numpy as np

from spattn.methods.blade import energy_mask, pooled_block_scores

here = os.path.dirname(os.path.abspath(__file__))
inp = np.load(os.path.join(here, "..", "..", "..", "build", "official", "blade_inputs.npz"))
off = np.load(sys.argv[1])
lines = []
for name in sorted({k.split("_")[0] for k in inp.files}):
    qs, ks = (inp[f"{name}_{x}"].astype(np.float32) for x in ("qs", "ks"))
    A = pooled_block_scores(qs, ks, 32, None)
    A_norm = A / A.sum(-1, keepdims=True)  # the official map is divided by its row sum at the end
    mine = energy_mask(A)
    for dt in ("fp16", "bf16"):
        po, om = off[f"{name}_{dt}_po"], off[f"{name}_{dt}_mask"]
        same_logic = energy_mask(po)  # spattn's mask rule on the official scores
        lines.append(f"case {name} {tuple(qs.shape)} vs official Triton {dt}: pooled map max |diff| "
                     f"{np.abs(A_norm - po).max():.2e} (max {po.max():.3f}); mask rule on the official map "
                     f"identical {np.mean(same_logic == om):.4f}; spattn mask vs official entries identical "
                     f"{np.mean(mine == om):.4f}, rows identical {np.mean((mine == om).all(-1)):.4f}; "
                     f"density {mine.mean():.4f} vs {om.mean():.4f}")
print("\n".join(lines))
with open(os.path.join(here, "result.txt"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
