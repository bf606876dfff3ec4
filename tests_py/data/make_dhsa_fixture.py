"""One-off: the fixture dhsa_official.npz from the official DHSA code on CPU torch.

Runs ``dhsa_sdpa`` (and through it ``_obtain_dhsa_mask``) of xiongsiheng/DHSA,
legacy/utils/helper.py (snapshot cc8e9c7), float32, on small seeded inputs, and stores the
outputs and the per-block key lists (``topk_indices``) with the inputs. The official file is not
part of spattn: pass its path (it imports only torch and math)::

    git --git-dir /path/to/DHSA/.git show HEAD:legacy/utils/helper.py > /tmp/dhsa_helper.py
    python tests_py/data/make_dhsa_fixture.py /tmp/dhsa_helper.py

The official code runs after repeat_kv: k and v are repeated to the query heads first.
Cases "fixed_*" cut the budget on chunk boundaries (no ties), so the official outputs are
deterministic; case "predicted" has boundaries of unequal lengths (one empty chunk), where
torch.topk picks among equal scores of a chunk arbitrarily: compare it at chunk granularity.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

CASES = {  # B, Hq, Hkv, N, D, block, budget, local, global, instruction (None: no split), pooling, chunk
    "fixed_gqa": (1, 2, 1, 300, 64, 32, 96, 16, 16, 20, "avgpool_norm", 8),
    "fixed_avgpool_d128": (1, 1, 1, 192, 128, 32, 64, 32, 0, None, "avgpool", 16),
    "predicted": (2, 2, 2, 257, 80, 16, 64, 8, 8, 17, "avgpool_norm", None),
}


def boundaries_for(name, B, N, chunk, rng):
    if chunk is not None:
        return np.tile(np.array(list(range(0, N, chunk)) + [N]), (B, 1))
    rows = []
    for _ in range(B):  # 20 interior boundaries, one repeated (an empty chunk)
        inner = np.sort(rng.choice(np.arange(1, N), 19, replace=False))
        inner = np.sort(np.append(inner, inner[7]))
        rows.append(np.concatenate([[0], inner, [N]]))
    return np.stack(rows)


def main(path):
    spec = importlib.util.spec_from_file_location("dhsa_official_helper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for seed, (name, (B, Hq, Hkv, N, D, bs, T, local, glob, instr, pooling, chunk)) in enumerate(CASES.items()):
        rng = np.random.default_rng(100 + seed)
        # values exact in float16, stored so, used as float32
        q = rng.standard_normal((B, Hq, N, D)).astype(np.float16).astype(np.float32)
        k = rng.standard_normal((B, Hkv, N, D)).astype(np.float16).astype(np.float32)
        v = rng.standard_normal((B, Hkv, N, D)).astype(np.float16).astype(np.float32)
        bnd = boundaries_for(name, B, N, chunk, rng)
        rep = Hq // Hkv
        o, idx = mod.dhsa_sdpa(torch.from_numpy(q), torch.from_numpy(np.repeat(k, rep, 1)),
                               torch.from_numpy(np.repeat(v, rep, 1)), block_size=bs, topk_tokens=T,
                               scaling=1.0 / np.sqrt(D), boundaries=torch.from_numpy(bnd), instruction_tokens=instr,
                               pooling=pooling, global_tokens=glob, local_tokens=local)
        meta = np.array([bs, T, local, glob, 0 if instr is None else instr, pooling == "avgpool_norm",
                         0 if chunk is None else chunk])
        case = dict(q=q.astype(np.float16), k=k.astype(np.float16), boundaries=bnd.astype(np.int32),
                    indices=idx.numpy().astype(np.int32), meta=meta.astype(np.int64))
        if chunk is not None:  # deterministic outputs (no ties at the budget cut)
            case.update(v=v.astype(np.float16), out=o.numpy())
        for key, val in case.items():
            out[f"{name}/{key}"] = val
    dst = Path(__file__).with_name("dhsa_official.npz")
    np.savez_compressed(dst, **out)
    print(f"wrote {dst} ({dst.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
