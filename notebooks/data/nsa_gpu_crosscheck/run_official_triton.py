import os, sys, numpy as np, torch
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from native_sparse_attention.ops import compressed_attention, topk_sparse_attention
out_dir = os.environ.get("OUT", "/tmp")
d = np.load(os.path.join(here, "inputs.npz"))
res = {}
for name in sorted({k.split("_")[0] for k in d.files}):
    for dt_name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        q, k, v, kc, vc = (torch.from_numpy(d[f"{name}_{x}"]).cuda().to(dt) for x in ("q", "k", "v", "kc", "vc"))
        N, C = q.shape[0], kc.shape[0]
        cu_q = torch.tensor([0, N], dtype=torch.int32, device="cuda")
        cu_k = torch.tensor([0, C], dtype=torch.int32, device="cuda")
        o_cmp, idx = compressed_attention(q, kc, vc, 32, 16, 64, 16, cu_q, cu_k, N, C, init_blocks=1, local_blocks=2)
        o_slc = topk_sparse_attention(q, k, v, idx, 64, cu_q)
        np.savez_compressed(os.path.join(out_dir, f"nsa_{name}_{dt_name}.npz"), o_cmp=o_cmp.half().cpu().numpy(),
                            idx=idx.cpu().numpy().astype(np.int16), o_slc=o_slc.half().cpu().numpy())
        print(name, dt_name, tuple(o_cmp.shape), tuple(idx.shape), flush=True)
