"""One-off: the fixture anchor_attention_get_mask_block.npz from the official torch reference.

Runs the authors' ``get_mask_block`` (the torch reference of AnchorAttention's stripe selection,
in the AnchorAttn module; search-index id 67126152894) on CPU torch, float32, on small seeded
inputs, and stores its ``true_coords`` / ``true_counts`` with the inputs. The official module is
not part of spattn: pass the path of a file that defines ``get_mask_block`` (the official module,
or an excerpt of it without its Triton imports)::

    python tests_py/data/make_anchor_attention_fixture.py /path/to/anchorattn_excerpt.py

The anchors ``get_mask_block`` takes are the official step 1's (``get_mask_fused_anchor_triton``,
a Triton kernel that does not run on CPU): the maximum scaled logit over the first G = block * step
keys and the query's own big block, causal; computed here in float64 and handed over as float32.
The official code runs after repeat_kv, so k is repeated to the query heads first.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

CASES = [  # (name, B, Hq, Hkv, N, D, block, step, theta, seed): N a multiple of block (the view
    # get_mask_block takes), not of G (its padded last big block)
    ("gqa_d64", 1, 4, 2, 16 * 4 * 3 + 32, 64, 16, 4, 2.0, 11),
    ("mha_d80", 2, 1, 1, 8 * 4 * 5 + 24, 80, 8, 4, 1.5, 12),
]


def anchors_official_step1(q, k, scale, G):
    """max over keys j <= i with j < G or j >= (i // G) * G of scale q_i . k_j, float64."""
    N = q.shape[2]
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k.astype(np.float64)) * scale
    i = np.arange(N)[:, None]
    j = np.arange(N)[None, :]
    region = (j <= i) & ((j < G) | (j >= (i // G) * G))
    return np.where(region, s, -np.inf).max(-1)


def main(path):
    spec = importlib.util.spec_from_file_location("anchorattn_official", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.cuda.synchronize = lambda *a, **kw: None  # the reference times itself with CUDA syncs
    out = {}
    for name, B, Hq, Hkv, N, D, block, step, theta, seed in CASES:
        rng = np.random.default_rng(seed)
        # values exact in float16, stored so (half the file), used as float32
        q = rng.standard_normal((B, Hq, N, D)).astype(np.float16).astype(np.float32)
        k = rng.standard_normal((B, Hkv, N, D)).astype(np.float16).astype(np.float32)
        kr = np.repeat(k, Hq // Hkv, axis=1)
        scale = 1.0 / np.sqrt(D)
        anchors = anchors_official_step1(q, kr, scale, block * step).astype(np.float32)
        coords, counts = mod.get_mask_block(torch.from_numpy(q), torch.from_numpy(kr), torch.from_numpy(anchors),
                                            block, block, step, theta, B, Hq, N, D, scale, "cpu")
        counts = counts.numpy()[..., 0]
        width = max(int(counts.max()), 1)
        coords = np.where(np.arange(width) < counts[..., None], coords.numpy()[..., :width], -1)
        for key, val in dict(q=q.astype(np.float16), k=k.astype(np.float16), anchors=anchors, coords=coords.astype(np.int32), counts=counts.astype(np.int32),
                             meta=np.array([block, step, theta, scale], np.float64)).items():
            out[f"{name}/{key}"] = val
    dst = Path(__file__).with_name("anchor_attention_get_mask_block.npz")
    np.savez_compressed(dst, **out)
    print(f"wrote {dst} ({dst.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
