"""Compare spattn's NSA compressed branch, selection and selected-block branch with the official
XunhaoLai/native-sparse-attention-triton Triton kernels (compressed_attention, topk_sparse_attention)
run on an H100 by run_official_triton.py on the same inputs (.official/nsa/inputs.npz: random q, k,
v and mean-pooled compressed keys / values; kernel 32, stride 16, block 64, top 16, init 1, local 2).
Usage: python compare.py [path to spattn's python dir]; the official outputs in /work/tmp/nsa_gpu."""
import sys, numpy as np
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "/work/main/python")
import spattn
from spattn import _core
d = np.load("/work/main/.official/nsa/inputs.npz")
m = spattn.methods.get("nsa")
for name in ("a", "b"):
    q, k, v, kc, vc = (d[f"{name}_{x}"] for x in ("q", "k", "v", "kc", "vc"))
    N, C = q.shape[0], kc.shape[0]
    Q = np.ascontiguousarray(q.transpose(1, 0, 2)[None]); K = np.ascontiguousarray(k.transpose(1, 0, 2)[None])
    V = np.ascontiguousarray(v.transpose(1, 0, 2)[None])
    KC = np.ascontiguousarray(kc.transpose(1, 0, 2)[None]); VC = np.ascontiguousarray(vc.transpose(1, 0, 2)[None])
    blocks, o_cmp, lse = _core.nsa_compressed_attention(Q, KC, VC, C, N, None, m.cparams)
    o_cmp = o_cmp[0].transpose(1, 0, 2)
    for dt in ("fp16", "bf16"):
        g = np.load(f"/work/tmp/nsa_gpu/nsa_{name}_{dt}.npz")
        oc, idx, osl = g["o_cmp"].astype(np.float32), g["idx"].astype(np.int32), g["o_slc"].astype(np.float32)
        rows = np.arange(N) >= 31  # rows with a visible compressed token (official: others output 0)
        err_cmp = np.abs(o_cmp[rows] - oc[rows]).max()
        ours = blocks[0]  # (Hkv, N, n)
        same = np.mean([set(a[a >= 0]) == set(b[b >= 0]) for a, b in zip(ours.reshape(-1, ours.shape[-1]), idx.reshape(-1, idx.shape[-1]))])
        # selected-block attention with the official selection, on spattn's row-block kernel
        idx_s = np.sort(np.where(idx < 0, np.iinfo(np.int32).max, idx), -1)
        idx_s = np.where(idx_s == np.iinfo(np.int32).max, -1, idx_s).astype(np.int32)[None]
        o_slc = spattn.row_block_sparse_attention(Q, K, V, spattn.RowBlockIndices(idx_s, 64, N, assume_sorted=True), causal=True)
        err_slc = np.abs(o_slc[0].transpose(1, 0, 2) - osl).max()
        print(f"case {name} (N {N}, Hq {q.shape[1]}, Hkv {k.shape[1]}, D {q.shape[2]}) vs official Triton {dt}: "
              f"compressed-branch max |diff| {err_cmp:.2e}, selection rows identical {same:.4f}, "
              f"selected-branch (official selection) max |diff| {err_slc:.2e}")
