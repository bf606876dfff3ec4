"""Half-precision K/V in dense attention: fp16 (numpy or torch) and bf16 (torch) k and v are read
as stored, accumulating in float32, and the result equals attention on their exact float32
conversion bit for bit, for decode (widened tile by tile), chunked rows and prefill (widened once)."""

import os

import numpy as np
import pytest

import spattn

# Under the sanitizer job (libasan preloaded) torch is not loaded: the numpy tests cover the kernel.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")
torch = None if SANITIZED else pytest.importorskip("torch")
needs_torch = pytest.mark.skipif(SANITIZED, reason="torch is not loaded under the sanitizer job")

SHAPES = [  # B, Hq, Hkv, Nq, Nk, D
    (1, 8, 2, 1, 5000, 64),    # decode, split-KV
    (2, 9, 3, 1, 3001, 80),    # decode, GQA 3, D 80
    (1, 4, 4, 3, 777, 128),    # a few rows
    (1, 4, 2, 300, 300, 64),   # prefill
    (1, 2, 1, 130, 300, 128),  # causal Nq < Nk
    (1, 4, 2, 1, 0, 64),       # no keys
]


def qkv(shape, seed=0):
    B, Hq, Hkv, Nq, Nk, D = shape
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, Hq, Nq, D)).astype(np.float32)
    k = (2 * rng.standard_normal((B, Hkv, Nk, D))).astype(np.float32)
    v = rng.standard_normal((B, Hkv, Nk, D)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
def test_fp16_numpy_equals_float32_conversion(shape, causal):
    q, k, v = qkv(shape)
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    out, lse = spattn.attention(q, k16, v16, causal=causal, return_lse=True)
    ref, ref_lse = spattn.attention(q, k16.astype(np.float32), v16.astype(np.float32), causal=causal, return_lse=True)
    assert np.array_equal(out, ref) and np.array_equal(lse, ref_lse)


@needs_torch
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_half_tensors_equal_float32_conversion(shape, dtype):
    dtype = getattr(torch, dtype)
    q, k, v = qkv(shape, seed=1)
    kt, vt = torch.from_numpy(k).to(dtype), torch.from_numpy(v).to(dtype)
    out = spattn.attention(torch.from_numpy(q), kt, vt, causal=True)
    ref = spattn.attention(q, kt.float().numpy(), vt.float().numpy(), causal=True)
    assert np.array_equal(out, ref)
    # and against float64 attention on the stored values
    qq, kk, vv = q.astype(np.float64), kt.double().numpy(), vt.double().numpy()
    G = q.shape[1] // k.shape[1]
    kk, vv = np.repeat(kk, G, axis=1), np.repeat(vv, G, axis=1)
    if k.shape[2]:
        s = np.einsum("bhid,bhjd->bhij", qq, kk) / np.sqrt(q.shape[3])
        Nq, Nk = q.shape[2], k.shape[2]
        s = np.where(np.arange(Nk)[None, :] <= np.arange(Nq)[:, None] + Nk - Nq, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(out, np.einsum("bhij,bhjd->bhid", p, vv), atol=2e-5)


def test_non_contiguous_half_views():
    q, k, v = qkv((1, 4, 2, 1, 2100, 64), seed=2)
    k16 = np.asfortranarray(k.astype(np.float16))
    v16 = v.astype(np.float16)[:, :, ::-1]
    ref = spattn.attention(q, k16.astype(np.float32), np.ascontiguousarray(v16).astype(np.float32))
    assert np.array_equal(spattn.attention(q, k16, v16), ref)


@needs_torch
def test_non_contiguous_torch_half():
    q, k, v = qkv((1, 4, 2, 1, 2100, 64), seed=2)
    kt = torch.from_numpy(k).bfloat16().transpose(2, 3).contiguous().transpose(2, 3)  # strided view
    assert not kt.is_contiguous()
    vt = torch.from_numpy(v).bfloat16()
    assert np.array_equal(spattn.attention(q, kt, vt), spattn.attention(q, kt.float(), vt.float()))


def test_special_values_widen_exactly():
    specials = np.array([0, -0.0, 6e-8, -6.1e-5, 1.0, 65504, np.inf, -np.inf, 0.333], dtype=np.float16)
    q = np.ones((1, 1, 1, 8), np.float32)
    k = np.ones((1, 1, 1, 8), np.float16)
    v = specials.reshape(1, 1, 1, -1)
    out = spattn.attention(q, k, v)
    assert np.array_equal(out.reshape(-1), specials.astype(np.float32))
    vn = np.array([np.nan, 1.0], dtype=np.float16).reshape(1, 1, 1, 2)
    assert np.isnan(spattn.attention(q, k, vn)[0, 0, 0, 0])


def test_mixed_or_bad_half_inputs():
    q, k, v = qkv((1, 2, 1, 1, 50, 64))
    # mixed precisions fall back to float32 conversion (same result)
    ref = spattn.attention(q, k.astype(np.float16).astype(np.float32), v)
    assert np.array_equal(spattn.attention(q, k.astype(np.float16), v), ref)
    with pytest.raises(ValueError, match="v must have shape"):
        spattn.attention(q, k.astype(np.float16), v[:, :, :10].astype(np.float16))
    with pytest.raises(ValueError, match="head dim"):
        spattn.attention(q, k[..., :32].astype(np.float16), v.astype(np.float16))
