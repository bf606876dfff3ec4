"""Writes tests_py/data/infllmv2_official.npz: InfLLM-V2 block selections computed by the OFFICIAL
pure-torch references of OpenBMB/infllmv2_cuda_impl (HEAD f908e73), run on the CPU.

Not run by the tests (they read the .npz only). Usage, with a checkout of the official repo:

    python tests_py/data/make_infllmv2_fixture.py /path/to/infllmv2_cuda_impl

The official functions are loaded from that checkout at run time (nothing of them is copied here):
``tests/test_stage1_compressed_lse.py::compress_tensor`` (with ``calc_chunks_with_stride``) builds
k1 (kernel 32, stride 16) and k2 (128, 64) from k, and
``tests/stage1/complse_online_softmax.py::compresssed_lse_online_softmax`` gives the group-summed
stage-1 scores (float32, causal). The max pooling and forced blocks follow
``csrc/max_pooling_1d.cuh::max_pooling_1d_kernel`` (a CUDA kernel: its rule is written out below in
torch), then ``topk(...).indices.sort(-1).values`` (ties to the lower index, see official_selection)
and ``> q_idx -> -1`` as the model's ``compressed_attention``.
"""

import ast
import sys
from pathlib import Path

import numpy as np
import torch

from infllm_cases import INFLLMV2_CASES as CASES
from infllm_cases import infllmv2_inputs as case_inputs


def load_functions(path: Path, names):
    """The named top-level functions of an official file, defined in a fresh namespace."""
    tree = ast.parse(path.read_text())
    keep = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    ns = {"torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
    return ns


def max_pool_blocks(score, nblocks, block_size, stride, init_blocks, local_blocks):
    """csrc/max_pooling_1d.cuh (cache_len 0): per (head, query i, block b) +inf when forced, else
    the max of score[j] over j in [b r - 1, b r + r) clipped to the k1 tokens, -inf when empty."""
    H, Tq, C1 = score.shape
    r = block_size // stride
    out = torch.empty(H, Tq, nblocks, dtype=score.dtype)
    for i in range(Tq):
        qb = i // block_size
        for b in range(nblocks):
            if b < init_blocks or (qb >= b and qb <= b + local_blocks):
                out[:, i, b] = float("inf")
                continue
            j0, j1 = max(b * r - 1, 0), min(b * r - 1 + r + 1, C1)
            out[:, i, b] = score[:, i, j0:j1].max(dim=-1).values if j1 > j0 else float("-inf")
    return out


def official_selection(ns, q, k, block_size, init_blocks, local_blocks, topk):
    """q (Hq, T, D), k (Hkv, T, D) float32 -> topk_idx (Hkv, T, K) int32."""
    Hq, T, D = q.shape
    Hkv = k.shape[0]
    cu = torch.tensor([0, T], dtype=torch.int32)
    k1, _ = ns["compress_tensor"](k, cu, 32, 16, Hkv, D)
    k2, _ = ns["compress_tensor"](k, cu, 128, 64, Hkv, D)
    score = ns["compresssed_lse_online_softmax"](q.transpose(0, 1).contiguous(), k1.transpose(0, 1).contiguous(),
                                                 k2.transpose(0, 1).contiguous(), 16, 16, causal=True)
    nblocks = -(-T // block_size)
    pooled = max_pool_blocks(score, nblocks, block_size, 16, init_blocks, local_blocks)
    K = min(topk + local_blocks, nblocks)
    # topk(K) with ties to the lower index: the order torch.topk's CUDA kernel gives at the k-th value
    # (the windows of neighbouring blocks share one k1 token, so equal block scores are common);
    # torch.topk on the CPU may return the higher index instead
    idx = pooled.sort(dim=-1, descending=True, stable=True).indices[..., :K].sort(-1).values
    q_idx = torch.arange(T) // block_size
    idx[idx > q_idx[None, :, None]] = -1
    return idx.to(torch.int32)


def main(repo: str) -> None:
    root = Path(repo)
    ns = load_functions(root / "tests/test_stage1_compressed_lse.py", {"compress_tensor", "calc_chunks_with_stride"})
    ns.update(load_functions(root / "tests/stage1/complse_online_softmax.py",
                             {"apply_causal_mask", "compresssed_lse_online_softmax"}))
    cases = {}
    for n, (Hq, Hkv, T, D, window, topk) in enumerate(CASES):
        q, k = case_inputs(n, Hq, Hkv, T, D)
        idx = official_selection(ns, torch.from_numpy(q[0]), torch.from_numpy(k[0]), 64, 1, window // 64, topk)
        cases[f"case{n}"] = idx.numpy()[None]
    out = Path(__file__).with_name("infllmv2_official.npz")
    np.savez_compressed(out, **cases)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
