"""On a GPU: the official Video-BLADE ``attn_with_pooling`` (Triton) and
``transfer_attn_to_mask(mode="energy")`` on the sampled tokens of make_inputs.py (fp16 and
bf16). Needs the official files under build/official/blade_pkg/sal (not committed); the
block_sparse_attn / einops imports of wanx_blocksparseattn.py are stubbed (unused here)."""
import os
import sys
import types

import numpy as np
import torch

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "build", "official")
sys.path.insert(0, os.path.join(root, "blade_pkg"))
bsa = types.ModuleType("block_sparse_attn")
bsa.block_sparse_attn_func = None
pad = types.ModuleType("block_sparse_attn.bert_padding")
pad.pad_input = pad.unpad_input = None
sys.modules.update({"block_sparse_attn": bsa, "block_sparse_attn.bert_padding": pad})
try:
    import einops  # noqa: F401
except ImportError:
    e = types.ModuleType("einops")
    e.rearrange = None
    sys.modules["einops"] = e
from sal.TrainRelated.attn_pooling_kernel import attn_with_pooling  # noqa: E402
from sal.TrainRelated.wanx_blocksparseattn import transfer_attn_to_mask  # noqa: E402

out_dir = os.environ.get("OUT", "/tmp")
d = np.load(os.path.join(root, "blade_inputs.npz"))
res = {}
for name in sorted({k.split("_")[0] for k in d.files}):
    for dt_name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        qs = torch.from_numpy(d[f"{name}_qs"].astype(np.float32)).cuda().to(dt)
        ks = torch.from_numpy(d[f"{name}_ks"].astype(np.float32)).cuda().to(dt)
        _, po = attn_with_pooling(qs, ks, qs, False, 1.0 / (qs.size(-1) ** 0.5), 32)
        if hasattr(transfer_attn_to_mask, "fix_weight"):
            del transfer_attn_to_mask.fix_weight  # cached per shape in the official code
        mask = transfer_attn_to_mask(po, mode="energy", max_retain_ratio=0.17, min_retain_ratio=0.05,
                                     energy_threshold=0.95)
        res[f"{name}_{dt_name}_po"] = po.float().cpu().numpy()
        res[f"{name}_{dt_name}_mask"] = mask.cpu().numpy()
        print(name, dt_name, tuple(po.shape), float(mask.float().mean()), flush=True)
np.savez_compressed(os.path.join(out_dir, "blade_official.npz"), **res)
