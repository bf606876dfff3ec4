"""Writes tests_py/data/nosa_official.npz: NOSA block selections computed by the OFFICIAL
selection code of thunlp/NOSA (HEAD 94d5f75) run on the CPU.

Not run by the tests (they read the .npz only). Usage, with checkouts of both official repos:

    python tests_py/data/make_nosa_fixture.py /path/to/NOSA /path/to/infllmv2_cuda_impl

``benchmarks/Efficiency/proxy_modeling_nosa.py::compressed_attention`` is loaded from the NOSA
checkout and run as it is, with its GPU kernels replaced by CPU equivalents: ``infllmv2_attn_stage1``
by the official pure-torch reference ``tests/stage1/complse_online_softmax.py::
compresssed_lse_online_softmax`` of infllmv2_cuda_impl (k = v = the 32 / 16 mean-pooled keys, as
``sparse_forward`` passes them), ``max_pooling_1d_varlen`` by the rule of
``csrc/max_pooling_1d.cuh::max_pooling_1d_varlen_kernel`` and ``nosa_mean_pooling`` by the rule of
``benchmarks/Efficiency/cis_pooling.py::nosa_mean_pool_kernel``, both written out below in torch.
``Tensor.topk`` is made to return ties in ascending index order, the order of torch.topk's CUDA
kernel (the CPU one may not). The eviction scores follow ``LlamaSdpaAttention.forward``:
``cis = A * softplus(delta(concat_h V))``.
"""

import ast
import sys
import types
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from infllm_cases import NOSA_CASES as CASES
from infllm_cases import nosa_inputs as case_inputs
from make_infllmv2_fixture import load_functions


def stable_topk(self, k, dim=-1, largest=True, sorted=True):
    order = torch.sort(self, dim=dim, descending=largest, stable=True)
    return types.SimpleNamespace(values=order.values.narrow(dim, 0, k), indices=order.indices.narrow(dim, 0, k))


def max_pooling_1d_varlen(input, cu_seqlens_q, cu_seqlens_k, cache_lens, max_seqlen_q, max_seqlen_k, local_blocks,
                          init_blocks, block_size=64, stride=16):
    """csrc/max_pooling_1d.cuh::max_pooling_1d_varlen_kernel for one sequence."""
    r = block_size // stride
    H, Tq, _ = input.shape
    seqlen_k = int(cu_seqlens_k[1] - cu_seqlens_k[0])
    out_len = (max_seqlen_q + int(cache_lens.max()) + block_size - 1) // block_size
    out = torch.zeros(H, Tq, out_len, dtype=input.dtype)
    for i in range(Tq):
        qb = (i + int(cache_lens[0])) // block_size
        for b in range(out_len):
            if b < init_blocks or (qb >= b and qb <= b + local_blocks):
                out[:, i, b] = float("inf")
                continue
            j0, j1 = max(b * r - 1, 0), min(b * r - 1 + r + 1, seqlen_k)
            out[:, i, b] = input[:, i, j0:j1].max(dim=-1).values if j1 > j0 else float("-inf")
    return out


def nosa_mean_pooling(cis, cu_seqlens, max_seqlen, kernel_size=32, stride=16):
    """cis_pooling.py::nosa_mean_pool_kernel for one sequence: the mean of every complete window,
    written to every query row."""
    N, H = cis.shape
    M = max_seqlen // stride - 1
    out = torch.zeros(H, N, M, dtype=cis.dtype)
    for m in range(M):
        if m * stride + kernel_size <= N:
            out[:, :, m] = cis[m * stride:m * stride + kernel_size].mean(dim=0)[:, None]
    return out


def load_compressed_attention(nosa_root: Path, infllm_root: Path):
    ref = load_functions(infllm_root / "tests/stage1/complse_online_softmax.py",
                         {"apply_causal_mask", "compresssed_lse_online_softmax"})

    def infllmv2_attn_stage1(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
        return ref["compresssed_lse_online_softmax"](q, k, v, 16, 16, causal=causal)

    path = nosa_root / "benchmarks/Efficiency/proxy_modeling_nosa.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compressed_attention"]
    nvtx = types.SimpleNamespace(range_push=lambda *a: None, range_pop=lambda *a: None)
    ns = {"torch": torch, "Tuple": Tuple, "nvtx": nvtx, "infllmv2_attn_stage1": infllmv2_attn_stage1,
          "max_pooling_1d_varlen": max_pooling_1d_varlen, "nosa_mean_pooling": nosa_mean_pooling}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), ns)
    return ns["compressed_attention"]


def main(nosa_repo: str, infllm_repo: str) -> None:
    torch.Tensor.topk = stable_topk
    compressed_attention = load_compressed_attention(Path(nosa_repo), Path(infllm_repo))
    ns = load_functions(Path(infllm_repo) / "tests/test_stage1_compressed_lse.py",
                        {"compress_tensor", "calc_chunks_with_stride"})
    cases = {}
    for n, (Hq, Hkv, T, D, window, topk, select) in enumerate(CASES):
        q, k, v, A, W, bias = (torch.from_numpy(x) for x in case_inputs(n, Hq, Hkv, T, D))
        cis = A * F.softplus(F.linear(v[0].transpose(0, 1).flatten(1, 2), W, bias))  # (T, Hkv)
        cu = torch.tensor([0, T], dtype=torch.int32)
        k1, cu1 = ns["compress_tensor"](k[0], cu, 32, 16, Hkv, D)
        idx = compressed_attention(q[0].transpose(0, 1).contiguous(), k1.transpose(0, 1).contiguous(),
                                   k1.transpose(0, 1).contiguous(), cis, 32, 16, 64, topk, cu, cu1, T,
                                   int(cu1[1]), None, init_blocks=1, local_blocks=window // 64,
                                   select_blocks=select, cache_lens=None, cu_seqlens_k_ori=cu,
                                   max_seqlen_in_batch_k_ori=T)
        cases[f"case{n}"] = idx.numpy()[None]
    out = Path(__file__).with_name("nosa_official.npz")
    np.savez_compressed(out, **cases)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(sys.argv[1], sys.argv[2])
