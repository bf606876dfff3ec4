"""One-off: the fixture sparsifiner_official.npz from the official Sparsifiner code on CPU torch.

Runs ``MaskPredictor.forward`` of lim142857/Sparsifiner, src/models/sparsifiner.py (snapshot
90174dd), in eval mode (the mask: basis |proj_back_n| thresholded at 0.02, top-8 basis
coefficients, top ceil(0.25 N) keys, CLS row of ones) and in training mode with
LOSS.USE_ATTN_RECON (the approximation phase 1 regresses), float32, on seeded inputs and
weights, and stores them (the mask bit-packed along keys, the first ROWS rows of the approximation). The official file is not part of spattn: pass its path. timm is
stubbed (the predictor uses only ``trunc_normal_`` at construction; the weights are then
overwritten)::

    git --git-dir /path/to/Sparsifiner/.git show HEAD:src/models/sparsifiner.py > /tmp/sparsifiner.py
    python tests_py/data/make_sparsifiner_fixture.py /tmp/sparsifiner.py
"""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

CASES = {"vit_s": (1, 4, 197, 64), "odd": (2, 2, 101, 80)}  # B, H, N, head_dim
ROWS = 16  # rows of the training approximation kept (rows 1..16 of the attention)


def load(path):
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = torch.nn.Identity
    layers.to_2tuple = lambda x: (x, x)
    layers.trunc_normal_ = lambda t, std=1.0, a=-2.0, b=2.0: torch.nn.init.trunc_normal_(t, std=std, a=a, b=b)
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda f: f
    helpers = types.ModuleType("timm.models.helpers")
    for name, mod in {"timm": timm, "timm.data": data, "timm.models": models, "timm.models.layers": layers,
                      "timm.models.registry": registry, "timm.models.helpers": helpers}.items():
        sys.modules.setdefault(name, mod)
    spec = importlib.util.spec_from_file_location("sparsifiner_official", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cfg(recon):
    ns = types.SimpleNamespace
    spar = ns(BASIS_THRESHOLD=0.02, BASIS_COEF=ns(USE_TOPK=True, TOPK=8, THRESHOLD=0.0),
              ATTN_SCORE=ns(USE_TOPK=True, THRESHOLD=0.0), OUT_BASIS_SPARSITY=False, OUT_BASIS_COEF_SPARSITY=False,
              OUT_ATTN_MASK_SPARSITY=False, PRUNE_ATTN_MATRIX_ROW=False)
    return ns(SPAR=spar, LOSS=ns(USE_ATTN_RECON=recon))


def main(path):
    mod = load(path)
    torch.manual_seed(0)
    out = {}
    for case, (B, H, N, hd) in CASES.items():
        rng = np.random.default_rng(N)
        q = rng.standard_normal((B, H, N, hd)).astype(np.float16).astype(np.float32)  # stored as float16
        k = rng.standard_normal((B, H, N, hd)).astype(np.float16).astype(np.float32)
        mp = mod.MaskPredictor(H * hd, num_heads=H, num_tokens=N, attn_keep_rate=0.25, reduce_n_factor=6,
                               reduce_c_factor=2, cfg=cfg(False))
        with torch.no_grad():  # weights large enough that the 0.02 threshold keeps some basis entries
            for p in mp.parameters():
                p.copy_(torch.from_numpy((rng.standard_normal(tuple(p.shape)) * 0.1).astype(np.float32)))
        mp.eval()
        with torch.no_grad():
            d = mp(torch.from_numpy(q), torch.from_numpy(k))
        mp.cfg = cfg(True)
        mp.train()
        with torch.no_grad():
            t = mp(torch.from_numpy(q), torch.from_numpy(k))
        out.update({f"{case}/q": q.astype(np.float16), f"{case}/k": k.astype(np.float16), f"{case}/mask": np.packbits(d["attn_mask"].numpy() > 0, axis=-1),
                    f"{case}/approx_train": t["approx_attn"].numpy()[:, :, :ROWS],
                    f"{case}/wq": mp.proj_c_q.weight.detach().numpy().T.copy(), f"{case}/bq": mp.proj_c_q.bias.detach().numpy(),
                    f"{case}/wk": mp.proj_c_k.weight.detach().numpy().T.copy(), f"{case}/bk": mp.proj_c_k.bias.detach().numpy(),
                    f"{case}/proj_n": mp.proj_n.detach().numpy(), f"{case}/proj_back_n": mp.proj_back_n.detach().numpy()})
    dest = Path(__file__).with_name("sparsifiner_official.npz")
    np.savez_compressed(dest, **out)
    print("wrote", dest)


if __name__ == "__main__":
    main(sys.argv[1])
