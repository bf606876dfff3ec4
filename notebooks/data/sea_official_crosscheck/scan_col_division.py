"""The arithmetic of the official speed-path kernel on a GPU (run with the device tool, H200,
torch 2.11 + Triton 3.6): ``__scan_col_4_compute`` (gmlwns2000/sea-attention
src/models/perlin_attention/ops/kernels/causal_resize_m_to_t.py) stores, for a kept column
[v_start, v_end) of n keys with k' = min(n, k) slots, the keys
``range_end - (tl.arange(0, MAX) * ((range_end - range_start) / col_len)).to(tl.int32) - 1``
(v_start / v_end float32 from ``triton_round``, col_len int64). This kernel evaluates exactly that
expression for every column size n = 1..600 and k = 1..256 and compares it with the exact
``v_end - 1 - floor(i n / k')`` that spattn uses. The whole official module could not be run on
the GPU in this session (the device tool ships the lead's checkout, not this worktree, so the
official sources could not travel); this is its only GPU-specific arithmetic on the accuracy of
which the selection depends. Writes /tmp/o.npz (the keys); crosscheck.py --division-result reads it.
"""
import torch, triton, triton.language as tl, numpy as np
@triton.jit
def kern(VS, VE, CL, OUT, N, MAXP: tl.constexpr):
    p = tl.program_id(0)
    v_start = tl.load(VS + p)
    v_end = tl.load(VE + p)
    col_len = tl.load(CL + p)
    r = tl.arange(0, MAXP)
    val = v_end - (r * ((v_end - v_start) / col_len)).to(tl.int32) - 1
    tl.store(OUT + p * MAXP + r, val, mask=r < col_len)
S, K = 600, 256
sz, kk = np.meshgrid(np.arange(1, S + 1), np.arange(1, K + 1), indexing="ij")
sz, kk = sz.ravel(), kk.ravel()
m = np.minimum(sz, kk)
vs = torch.tensor(1000.0 + 0 * sz, dtype=torch.float32, device="cuda")
ve = torch.tensor(1000.0 + sz, dtype=torch.float32, device="cuda")
cl = torch.tensor(m, dtype=torch.int64, device="cuda")
out = torch.full((len(sz), 256), -7, dtype=torch.int64, device="cuda")
kern[(len(sz),)](vs, ve, cl, out, len(sz), MAXP=256)
o = out.cpu().numpy()
i = np.arange(256)[None]
ok = i < m[:, None]
exact = 1000 + sz[:, None] - 1 - (i * sz[:, None]) // m[:, None]
f32 = 1000 + sz[:, None] - 1 - (i.astype(np.float32) * (sz[:, None].astype(np.float32) / m[:, None].astype(np.float32))).astype(np.int32)
bad_ex = np.any((o != exact) & ok, 1)
bad_f = np.any((o != f32) & ok, 1)
print("triton", triton.__version__, "combos", len(sz), "differ from exact floor:", int(bad_ex.sum()), "differ from IEEE f32 emulation:", int(bad_f.sum()))
print("examples (size,k):", list(zip(sz[bad_ex][:8].tolist(), kk[bad_ex][:8].tolist())))
np.savez_compressed("/tmp/o.npz", o=o)
