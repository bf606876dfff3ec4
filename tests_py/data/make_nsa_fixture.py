"""Writes tests_py/data/nsa_official.npz: NSA compression, compressed attention and block selection
computed by the OFFICIAL pure-torch references of XunhaoLai/native-sparse-attention-triton
(HEAD 9bea856) on the CPU.

Not run by the tests (they read the .npz only). Usage, with a checkout (or a bare mirror: the
files are read with ``git show``) of the official repository and einops importable:

    PYTHONPATH=/tmp/ref_nsa python tests_py/data/make_nsa_fixture.py /path/to/native-sparse-attention-triton[.git]

Functions run as they are, loaded from ``native_sparse_attention/ops/torch/``:
``compress_key_value.py::linear_compress_torch`` (its bf16/fp16 dtype asserts and the
``device="cuda"`` of its cu_seqlens are relaxed through a thin torch proxy so that it runs in
float32 on the CPU), ``compressed_attention.py::compressed_attention_torch`` (prefill: output and
topk_idx), ``compressed_attention_decode.py::compressed_attention_decode`` (the last query as
decode) and ``topk_sparse_attention.py::topk_sparse_attention_torch`` (the selected branch).
"""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

FILES = {
    "compress": "native_sparse_attention/ops/torch/compress_key_value.py",
    "cmp": "native_sparse_attention/ops/torch/compressed_attention.py",
    "dec": "native_sparse_attention/ops/torch/compressed_attention_decode.py",
    "slc": "native_sparse_attention/ops/torch/topk_sparse_attention.py",
}

sys.path.insert(0, str(Path(__file__).parent))
from nsa_cases import NSA_CASES as CASES  # noqa: E402
from nsa_cases import ROW_STRIDE, nsa_inputs  # noqa: E402


def source(root: Path, rel: str) -> str:
    if (root / rel).exists():
        return (root / rel).read_text()
    return subprocess.run(["git", f"--git-dir={root}", "show", f"HEAD:{rel}"], check=True, capture_output=True,
                          text=True).stdout


class TorchCPU(types.ModuleType):
    """torch, with float16 / bfloat16 read as float32 (the dtype asserts) and device= dropped."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        if name in ("float16", "bfloat16"):
            return torch.float32
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kw):
        return torch.zeros(*args, **kw)


def load(root: Path, key: str, fake_torch: bool = False) -> dict:
    ns: dict = {"__name__": f"nsa_official_{key}"}
    exec(compile(source(root, FILES[key]), FILES[key], "exec"), ns)
    if fake_torch:
        ns["torch"] = TorchCPU()
    return ns


def main(root: Path) -> None:
    comp = load(root, "compress", fake_torch=True)
    cmp_ns, dec_ns, slc_ns = load(root, "cmp"), load(root, "dec"), load(root, "slc")
    out = {}
    for ci, (name, l, d, bs, topk, init, local, N, Hq, Hkv, D) in enumerate(CASES):
        q, k, v, wk, wv, pe = map(torch.from_numpy, nsa_inputs(ci, l, Hq, Hkv, N, D))
        cu = torch.tensor([0, N], dtype=torch.int32)
        kc, ccu = comp["linear_compress_torch"](k, wk, cu, l, d, pe)
        vc, _ = comp["linear_compress_torch"](v, wv, cu, l, d, None)
        C = int(ccu[-1])
        o_cmp, idx = cmp_ns["compressed_attention_torch"](q, kc, vc, l, d, bs, topk, cu, ccu, N, C, None, init, local)
        o_slc = slc_ns["topk_sparse_attention_torch"](q, k, v, idx, bs, cu, None)
        o_dec, idx_dec = dec_ns["compressed_attention_decode"](
            q[-1:].reshape(1, Hq, D), kc[None], vc[None], torch.tensor([N]), torch.tensor([C]), l, d, bs, topk,
            init, local, None)
        rows = slice(0, N, ROW_STRIDE)
        case = dict(kc=kc, vc=vc, o_cmp=o_cmp[rows], topk_idx=idx, o_slc=o_slc[rows], o_dec=o_dec, idx_dec=idx_dec)
        for key, val in case.items():
            out[f"{name}/{key}"] = val.detach().numpy()
        out[f"{name}/config"] = np.array([l, d, bs, topk, init, local, N, Hq, Hkv, D])
    dest = Path(__file__).with_name("nsa_official.npz")
    np.savez_compressed(dest, **out)
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
