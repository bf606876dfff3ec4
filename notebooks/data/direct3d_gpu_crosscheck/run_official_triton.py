"""Runs the official Direct3D-S2 Triton ops (get_block_score -> spatial_selection_attention, copied
from DreamTechAI/Direct3D-S2 into official/, not committed) on inputs.npz, in fp16 and bf16.
The compressed attention's lse (flash_attn_varlen_func in the official forward) is computed in
fp32 torch from the same half inputs. Needs torch + triton and a CUDA GPU (flash_attn, spconv not needed).
Steps: python make_inputs.py (CPU, writes inputs.npz); put the two official files in official/:
  for f in compressed_attention selection_attention; do git --git-dir=<Direct3D-S2 mirror> show \
    HEAD:direct3d_s2/modules/sparse/attention/spatial_sparse_attention/ops/$f.py > official/$f.py; done
then on the GPU: python run_official_triton.py (writes $OUT/ssa_<case>_<dtype>.npz); here: python compare.py DIR."""
import importlib.util
import os
import sys
import types

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.environ.get("OUT", "/tmp")
for mod in ("direct3d_s2", "direct3d_s2.modules", "direct3d_s2.modules.sparse"):  # only the type annotation is read
    sys.modules.setdefault(mod, types.ModuleType(mod))
sys.modules["direct3d_s2.modules.sparse"].SparseTensor = object


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(here, "official", name + ".py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


get_block_score = load("compressed_attention").get_block_score
spatial_selection_attention = load("selection_attention").spatial_selection_attention
d = np.load(os.path.join(here, "inputs.npz"))
print("torch", torch.__version__, "triton", __import__("triton").__version__, torch.cuda.get_device_name(), flush=True)
for name in sorted({k.split("_")[0] for k in d.files}):
    c, b, topk, res = (int(x) for x in d[f"{name}_cfg"])
    for dt_name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        q, k, v, kc, vc = (torch.from_numpy(d[f"{name}_{x}"][0]).cuda().transpose(0, 1).contiguous().to(dt)
                           for x in ("q", "k", "v", "kc", "vc"))  # (N, H, D)
        N, Hq, D = q.shape
        C, Hkv = kc.shape[0], kc.shape[1]
        G = Hq // Hkv
        coords = torch.from_numpy(d[f"{name}_coords"]).cuda().int()
        cells = torch.from_numpy(d[f"{name}_cells"]).cuda().int()
        zero_n, zero_c = torch.zeros(N, 1, dtype=torch.int32, device="cuda"), torch.zeros(C, 1, dtype=torch.int32,
                                                                                            device="cuda")
        qs = types.SimpleNamespace(feats=q, coords=torch.cat([zero_n, coords], 1), device=q.device)
        ks = types.SimpleNamespace(feats=kc, coords=torch.cat([zero_c, cells], 1), device=kc.device)
        s = torch.einsum("nhd,chd->hnc", q.float(), kc.float().repeat_interleave(G, 1)) / D ** 0.5
        lse = torch.logsumexp(s, dim=-1)  # (Hq, N), what flash_attn returns
        o_cmp = torch.einsum("hnc,chd->nhd", torch.softmax(s, -1), vc.float().repeat_interleave(G, 1))
        cu = torch.tensor([0, N], dtype=torch.int32, device="cuda")
        cuc = torch.tensor([0, C], dtype=torch.int32, device="cuda")
        topk_idx, cu_blocks, cu_tokens = get_block_score(qs, ks, lse, res, c, b, topk, cu, cuc, cu[1:] - cu[:-1],
                                                          cuc[1:] - cuc[:-1])
        o_slc = spatial_selection_attention(q, k, v, topk_idx, cu_blocks, cu_tokens, b, cu)
        np.savez_compressed(os.path.join(out_dir, f"ssa_{name}_{dt_name}.npz"), idx=topk_idx.cpu().numpy().astype(np.int16),
                            o_slc=o_slc.float().cpu().numpy(), o_cmp=o_cmp.cpu().numpy(),
                            cu_tokens=cu_tokens.cpu().numpy())
        print(name, dt_name, tuple(topk_idx.shape), tuple(o_slc.shape), flush=True)
