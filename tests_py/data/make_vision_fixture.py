"""One-off: fixtures svga_official.npz and sparse_gsa_official.npz from the official code on CPU torch.

* MobileViG (SLDGroup/MobileViG, models/mobilevig.py, snapshot 42483c2): ``MRConv4d(C, 2C, K)``;
  a forward hook on its ``nn`` block records the input concat[x, x_j], and x_j is stored.
* DLGSANet (NeonLeexiang/DLGSANet, basicsr/archs/dlgsanet_arch.py, snapshot 3c99082): the class
  ``SparseAttention`` is cut out of the file and run with its convolutions replaced by identities,
  so its input is the qkv map itself; eval mode with ``tlc_flag=True`` (the TLC windows) and
  training mode (one window), per-head temperatures set.

The official files are not part of spattn; pass their paths (needs torch and einops, e.g.
``pip install --no-deps --target /tmp/ref_einops einops``)::

    python tests_py/data/make_vision_fixture.py /tmp/mobilevig.py /tmp/dlgsanet_arch.py /tmp/ref_einops
"""

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent


def stub_timm():
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = nn.Identity
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda f: f
    for name, mod in {"timm": timm, "timm.data": data, "timm.models": models, "timm.models.layers": layers,
                      "timm.models.registry": registry}.items():
        sys.modules.setdefault(name, mod)


def f16(rng, shape):  # values exactly representable in float16 (stored as such)
    return rng.standard_normal(shape).astype(np.float16)


def mobilevig(path):
    stub_timm()
    spec = importlib.util.spec_from_file_location("mobilevig_official", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for case, (B, C, H, W, K) in {"7x7": (1, 16, 7, 7, 2), "odd": (2, 8, 9, 11, 2), "k3": (1, 4, 6, 10, 3)}.items():
        x = f16(np.random.default_rng(H * W), (B, C, H, W))
        conv = mod.MRConv4d(C, 2 * C, K=K).eval()
        seen = {}
        conv.nn.register_forward_hook(lambda m, inp, o: seen.setdefault("cat", inp[0].detach().clone()))
        with torch.no_grad():
            conv(torch.from_numpy(x.astype(np.float32)))
        out[f"{case}/x"] = x
        out[f"{case}/xj"] = seen["cat"][:, C:].numpy()
        out[f"{case}/K"] = np.int64(K)
    np.savez_compressed(HERE / "svga_official.npz", **out)
    print("wrote", HERE / "svga_official.npz")


def dlgsanet(path, einops_dir):
    sys.path.insert(0, einops_dir)
    from einops import rearrange

    src = Path(path).read_text()
    start = src.index("class SparseAttention(nn.Module):")
    end = src.index("\nclass ", start + 10)
    ns = {"torch": torch, "nn": nn, "rearrange": rearrange, "math": __import__("math")}
    exec(compile(src[start:end], "dlgsanet_SparseAttention", "exec"), ns)
    out = {}
    for case, (C, heads, H, W, kernel, train) in {"tlc": (48, 6, 20, 23, 12, False), "whole": (24, 3, 9, 7, 48, True)}.items():
        rng = np.random.default_rng(H * W)
        qkv = f16(rng, (1, 3 * C, H, W))
        att = ns["SparseAttention"](C, heads, bias=False, tlc_flag=True, tlc_kernel=kernel)
        att.qkv, att.qkv_dwconv, att.project_out = nn.Identity(), nn.Identity(), nn.Identity()
        temps = np.linspace(0.5, 2.0, heads).astype(np.float32)
        with torch.no_grad():
            att.temperature.copy_(torch.from_numpy(temps)[:, None, None])
        att.train(train)
        with torch.no_grad():
            y = att(torch.from_numpy(qkv.astype(np.float32)))
        out.update({f"{case}/qkv": qkv, f"{case}/out": y.numpy(), f"{case}/heads": np.int64(heads),
                    f"{case}/temperature": temps, f"{case}/tlc_kernel": np.int64(kernel), f"{case}/tlc": np.bool_(not train)})
    np.savez_compressed(HERE / "sparse_gsa_official.npz", **out)
    print("wrote", HERE / "sparse_gsa_official.npz")


if __name__ == "__main__":
    mobilevig(sys.argv[1])
    dlgsanet(sys.argv[2], sys.argv[3])
