"""Cross-check spattn's SEA against the OFFICIAL PerlinAttention (gmlwns2000/sea-attention) run
on identical inputs and identical weights (issue 12).

The official module is imported from its own files (``src/models/perlin_attention/attention.py``,
``modules.py``, ``config.py``, ``attention_state.py``, ``ops/kernels/resize_m_to_t.py``,
``src/models/common/performer.py``) with performer_pytorch 1.1.4; only the helpers that have
nothing to do with the computation are stubbed (``src.utils`` timers / buffer registry,
``masked_mm`` (numba CUDA), ``hf_bert.BertConfig``, ``kl_div_for_atten``, ``common.lora``, the Triton CSR ops of
the speed path). The stubbed ``get_bench().register_temp_buffer`` records the official
intermediates (kept (head, column) mask before the expansion, expanded key mask, gate logits).

Runs the causal (OPT) configuration, accuracy path (``benchmarking=False``), CPU torch fp32,
eval mode, MHA (the official module has one head count for q, k, v), Nq = Nk (the non-cached
path asserts it). Writes ``result.txt`` next to this file and, with ``--fixture``, the small
fixture ``tests_py/data/sea_official.npz`` read by ``tests_py/test_sea.py``.

Usage (from the repository root; needs torch and the official code, not needed by the tests):
    git --git-dir /work/.mirror/gmlwns2000+sea-attention/repo archive HEAD src/models/perlin_attention \
        src/models/common/performer.py | tar -x -C build/official/sea-attention
    pip install --no-deps --target /tmp/ref_performer performer-pytorch einops local-attention \
        axial-positional-embedding
    PYTHONPATH=python python notebooks/data/sea_official_crosscheck/crosscheck.py [--fixture]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
OFFICIAL = Path(os.environ.get("SEA_OFFICIAL", ROOT / "build/official/sea-attention"))
PERFORMER = os.environ.get("SEA_PERFORMER_PATH", "/tmp/ref_performer")
OFFICIAL_COMMIT = "5609413b14f480d741cf1edde49691576fc92b50"
sys.path.insert(0, PERFORMER)
sys.path.insert(0, str(ROOT / "python"))

import torch  # noqa: E402

import spattn  # noqa: E402
from spattn.methods import sea as sea_mod  # noqa: E402

BUFFERS: dict = {}


# ------------------------------------------------------------------------ import the official module
class _Bench:
    def region(self, name):
        return contextlib.nullcontext()

    mem_region = region

    def register_temp_buffer(self, name, value, lazy=None):
        BUFFERS[name] = lazy() if (value is None and lazy is not None) else value


def _package(name, path=None):
    m = types.ModuleType(name)
    m.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = m
    return m


def load_official():
    src = OFFICIAL / "src"
    if "src.models.perlin_attention.attention" in sys.modules:
        return (sys.modules["src.models.perlin_attention.attention"], sys.modules["src.models.perlin_attention.config"])
    # performer_pytorch imports these at top level for other classes; FastAttention uses neither
    for name, attr in (("local_attention", "LocalAttention"), ("axial_positional_embedding", "AxialPositionalEmbedding")):
        stub = types.ModuleType(name)
        setattr(stub, attr, object)
        sys.modules[name] = stub
    _package("src", src)
    utils = types.ModuleType("src.utils")
    utils.batch_to = lambda x, dtype: x.to(dtype)
    utils.get_bench = lambda: _Bench()
    utils.Metric = type("Metric", (), {"update": lambda self, v, name=None: v})
    utils.raise_if_nan = lambda x: x
    utils.strify = str
    sys.modules["src.utils"] = utils
    _package("src.models", src / "models")
    _package("src.models.common", src / "models/common")
    kl = types.ModuleType("src.models.common.kl_div_for_atten")
    kl.kl_div_attention = None
    sys.modules[kl.__name__] = kl
    lora = types.ModuleType("src.models.common.lora")  # imported by attention_state, used only with LoRA on
    for n in ("LoraLinear", "lora_forward", "lora_forward_linear", "lora_forward_lora"):
        setattr(lora, n, None)
    sys.modules[lora.__name__] = lora
    hf = types.ModuleType("src.models.hf_bert")
    hf.BertConfig = object
    sys.modules[hf.__name__] = hf
    pa = src / "models/perlin_attention"
    _package("src.models.perlin_attention", pa)  # its __init__ imports self_attention (LoRA etc.): skipped
    mm = types.ModuleType("src.models.perlin_attention.masked_mm")
    mm.sparse_attn = None  # numba CUDA, speed path only
    sys.modules[mm.__name__] = mm
    ops = _package("src.models.perlin_attention.ops", pa / "ops")  # __init__ imports the Triton CSR ops
    _package("src.models.perlin_attention.ops.kernels", pa / "ops/kernels")
    ops.resize_from_m_to_t = importlib.import_module(
        "src.models.perlin_attention.ops.kernels.resize_m_to_t").resize_from_m_to_t
    att = importlib.import_module("src.models.perlin_attention.attention")
    cfg = importlib.import_module("src.models.perlin_attention.config")
    return att, cfg


# ------------------------------------------------------------------------ one case
def make_official(att, cfg, H, D, W, k, nbf, P, seed):
    torch.manual_seed(seed)
    config = types.SimpleNamespace(num_attention_heads=H, hidden_size=H * D, max_position_embeddings=P)
    pconf = cfg.PerlinAttentionConfig(causal=True, k=k, attention_predictor_length=W, performer_nb_factor=nbf,
                                      k_flatten=True, k_flatten_dim="causal_batch")
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # performer_pytorch's "no CUDA causal product"
        mod = att.PerlinAttention(config, pconf)
    mod.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # LayerNorms off identity (fresh ones are weight 1, bias 0)
        for name, p in mod.named_parameters():
            if "attention_predictor" in name and p.ndim == 1 and ("enc.1." in name or "cnn.0." in name
                                                                  or "cnn.2." in name):
                p.copy_((1.0 + 0.3 * torch.randn(p.shape, generator=g)) if name.endswith("weight")
                        else 0.3 * torch.randn(p.shape, generator=g))
    return mod


def round_to_fp16_(mod):
    """Round every parameter / buffer to float16 values (stored exactly in the small fixture)."""
    with torch.no_grad():
        for t in list(mod.parameters()) + list(mod.buffers()):
            if t.dtype == torch.float32:
                t.copy_(t.half().float())


def run_official(mod, q, k, v):
    """q, k, v: (1, H, T, D) float32, q already scaled by D^-1/2 (OPT scales its query)."""
    T = q.shape[2]
    fp_min = torch.finfo(torch.float32).min / 2
    mask = torch.full((T, T), fp_min).triu(1).view(1, 1, T, T)
    BUFFERS.clear()
    with torch.no_grad():
        out = mod(q=q, k=k, v=v, q_for_atten=q, k_for_atten=k, v_for_atten=v, q_for_score=q, k_for_score=k,
                  attention_mask=mask, attention_scores_truth=None, context_layer_truth=None, last_state=None)
    H, D = q.shape[1], q.shape[3]
    return {
        "out": out.context_layer.view(1, T, H, D).permute(0, 2, 1, 3).numpy(),
        "probs": out.estimated_attention_probs_m.numpy(),
        "kept_cols": (BUFFERS["partial_attention_mask_before_interp"] > -1).numpy(),   # (1, H, T, W)
        "keys": (out.partial_attention_mask > -1).numpy(),                                # (1, H, T, T)
        "gates": BUFFERS["estimated_scales"].numpy(),
        "performer": BUFFERS["performer_context_layer"].numpy(),
    }


def keys_of(mask, H, T):
    """Boolean (1, H, T, T) key sets from spattn TokenIndices."""
    idx = mask.indices  # (B, H, T, K), -1 padded
    got = np.zeros((1, H, T, T), bool)
    b, h, i, s = np.nonzero(idx >= 0)
    got[b, h, i, idx[b, h, i, s]] = True
    return got


def run_spattn(w, q, k, v, kk, W):
    m = spattn.methods.get("sea", k=kk, compressed_width=W, weights=w)
    out = m(q, k, v, causal=True, scale=1.0)  # q is pre-scaled, as the official scores are q.k
    info = m.last_info
    H, T = q.shape[1], q.shape[2]
    # kept (head, column) set: columns of the official grid holding a selected key
    return {"out": out, "probs": info["estimate"], "gates": info["gates"], "keys": keys_of(info["mask"], H, T)}


def spattn_kept_cols(probs, T, H, W, kk):
    """The kept (head, column) set spattn ranks (the same rule C++ sea_select applies)."""
    kept = np.zeros((1, H, T, W), bool)
    for i in range(T):
        L = i + 1
        n = int(max(1, min(H * W, round(H * kk * W / L))))
        flat = probs[0, :, i].reshape(-1)
        order = np.lexsort((np.arange(H * W), -flat))[:n]
        kept[0, order // W, i, order % W] = True
    return kept


def compare(case, log, fixture=None):
    H, D, W, kk, T, nbf, seed = case["H"], case["D"], case["W"], case["k"], case["T"], case["nbf"], case["seed"]
    P = case.get("P", T)
    att, cfg = load_official()
    mod = make_official(att, cfg, H, D, W, kk, nbf, P, seed)
    if fixture is not None:
        round_to_fp16_(mod)
    rng = np.random.default_rng(seed)
    # OPT pre-scales its query by D^-1/2; values rounded to float16 so the fixture stores them exactly
    qs = (rng.standard_normal((1, H, T, D)) * D ** -0.5).astype(np.float16).astype(np.float32)
    k = rng.standard_normal((1, H, T, D)).astype(np.float16).astype(np.float32)
    v = rng.standard_normal((1, H, T, D)).astype(np.float16).astype(np.float32)
    off = run_official(mod, torch.tensor(qs), torch.tensor(k), torch.tensor(v))
    sd = mod.state_dict()
    w = sea_mod.from_official_state_dict(sd)
    ours = run_spattn(w, qs, k, v, kk, W)
    w64 = {n: a.astype(np.float64) for n, a in w.items()}
    z64, g64, _ = sea_mod.estimator_forward(w64, qs, k, v, causal=True, scale=1.0)
    p64 = sea_mod.softmax(z64)
    kept = spattn_kept_cols(ours["probs"], T, H, W, kk)
    # official rank margin at the budget boundary (how close the top-k was to a tie)
    flat = np.sort(off["probs"][0].transpose(1, 0, 2).reshape(T, H * W), axis=1)[:, ::-1]
    budget = np.clip(np.round(H * kk * W / np.arange(1, T + 1)), 1, H * W).astype(int)
    inner = budget < H * W
    margin = (flat[inner, budget[inner] - 1] - flat[inner, budget[inner]]).min() if inner.any() else np.inf
    rows = [
        f"case {case['name']}: H={H} D={D} W={W} k={kk} T={T} nb_features={sd['performer.projection_matrix'].shape[0]}"
        f" (nbf={nbf}) P={P} seed={seed}",
        f"  state_dict keys loaded by from_official_state_dict: {len(sea_mod.OFFICIAL_NAMES)} / "
        f"{sum(1 for n in sd if 'weight_mask' not in n)} official tensors (the rest: unused modules)",
        f"  estimate probs   max|diff| spattn fp32 vs official fp32: {np.abs(ours['probs'] - off['probs']).max():.3e}"
        f"   (spattn float64 vs official: {np.abs(p64 - off['probs']).max():.3e})",
        f"  gate logits      max|diff|: {np.abs(ours['gates'] - off['gates']).max():.3e}"
        f"   (float64: {np.abs(g64 - off['gates']).max():.3e})",
        f"  kept (head, col) identical rows: {100.0 * np.mean(np.all(kept == off['kept_cols'], axis=(1, 3))):.2f}%"
        f"  differing entries: {int((kept != off['kept_cols']).sum())} / {kept.size}"
        f"  (official top-k margin at the budget: {margin:.3e})",
        f"  expanded keys (accuracy path) identical (head, query) rows: "
        f"{100.0 * np.mean(np.all(ours['keys'] == off['keys'], axis=-1)):.2f}%"
        f"  differing entries: {int((ours['keys'] != off['keys']).sum())} / {ours['keys'].size}",
        f"  final output     max|diff|: {np.abs(ours['out'] - off['out']).max():.3e}"
        f"  (max|out| {np.abs(off['out']).max():.3f})",
    ]
    for r in rows:
        log(r)
    if fixture is not None:
        arrays = {"q": qs.astype(np.float16), "k": k.astype(np.float16), "v": v.astype(np.float16)}
        for theirs in sea_mod.OFFICIAL_NAMES.values():  # the official state dict entries, official layouts
            a = sd[theirs].numpy()
            arrays["sd." + theirs] = a.astype(np.float16)
            assert np.array_equal(arrays["sd." + theirs].astype(np.float32), a)
        arrays.update(off_probs=off["probs"].astype(np.float32), off_gates=off["gates"].astype(np.float32),
                      off_out=off["out"].astype(np.float32),
                      off_kept_cols=np.packbits(off["kept_cols"].reshape(-1)),
                      off_keys=np.packbits(off["keys"].reshape(-1)),
                      meta=np.array([H, D, W, kk, T], np.int64))
        np.savez_compressed(fixture, **arrays)
        log(f"  fixture written: {fixture} ({os.path.getsize(fixture) / 1024:.1f} KiB)")


def performer_float64(log):
    """FastAttention alone in float64 (official module's own projection and performer) against
    spattn's performer_pass: causal (generalized ReLU kernel) and non-causal (softmax kernel)."""
    att, cfg = load_official()
    H, D, T = 3, 64, 211
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, H, T, D)) * D ** -0.5
    k = rng.standard_normal((2, H, T, D)) + rng.standard_normal((2, H, 1, D))  # per-head key offsets
    vals = rng.standard_normal((2, H, T, 2 * D))
    for causal in (True, False):
        config = types.SimpleNamespace(num_attention_heads=H, hidden_size=H * D, max_position_embeddings=T)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            mod = att.PerlinAttention(config, cfg.PerlinAttentionConfig(causal=causal, performer_nb_factor=8)).double()
        with torch.no_grad():
            off = mod.performer(torch.tensor(q), torch.tensor(k), torch.tensor(vals)).numpy()
        ours, _ = sea_mod.performer_pass(q, k, vals, mod.performer.projection_matrix.numpy(), causal=causal, scale=1.0)
        log(f"performer pass alone, float64, {'causal (generalized)' if causal else 'non-causal (softmax kernel)'}"
            f" B=2 H={H} T={T} D={D}: max|diff| {np.abs(off - ours).max():.3e} (max|value| {np.abs(off).max():.2f})")


CASES = [
    dict(name="A", H=4, D=64, W=32, k=8, T=300, nbf=8, seed=1),
    dict(name="B", H=4, D=64, W=16, k=8, T=517, nbf=8, seed=2, P=600),
    dict(name="C", H=2, D=64, W=32, k=4, T=333, nbf=1, seed=3),
]
FIXTURE_CASE = dict(name="fixture", H=2, D=64, W=16, k=4, T=77, nbf=8, seed=7)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", action="store_true", help="also write tests_py/data/sea_official.npz")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    log(f"Official: gmlwns2000/sea-attention @ {OFFICIAL_COMMIT}, src/models/perlin_attention/attention.py "
        f"PerlinAttention.forward (causal OPT config, k_flatten_dim='causal_batch', benchmarking=False = accuracy "
        f"path), performer_pytorch 1.1.4 FastAttention (generalized ReLU kernel, causal_linear_attention_noncuda).")
    log(f"Run on: CPU, torch {torch.__version__}, float32, eval mode, batch 1, MHA, Nq = Nk; spattn SEA(weights="
        f"from_official_state_dict(module.state_dict())) fp32 and its float64 estimator_forward.")
    performer_float64(log)
    for c in CASES:
        compare(c, log)
    if args.fixture:
        compare(FIXTURE_CASE, log, fixture=str(ROOT / "tests_py/data/sea_official.npz"))
    (Path(__file__).parent / "result.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
