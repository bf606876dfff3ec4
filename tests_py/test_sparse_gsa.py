"""DLGSANet SparseGSA against a numpy transcription of the official ``SparseAttention``
(NeonLeexiang/DLGSANet basicsr/archs/dlgsanet_arch.py): ``_forward`` (F.normalize over the
tokens, (q @ k^T) * temperature, ReLU, @ v on the (head, c, h*w) layout) and the test-time
``grids`` / ``grids_inverse`` (TLC) windows."""

from __future__ import annotations

import math

from pathlib import Path

import numpy as np
import pytest

import spattn
from conftest import make_qkv


def official_forward(q, k, v, temp):
    """(heads, c, hw) float64, as _forward after the rearrange."""
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    attn = np.maximum((q @ np.swapaxes(k, -1, -2)) * temp, 0.0)
    return attn @ v


def official_tlc(q, k, v, temp, h, w, kernel):
    """q, k, v: (heads, c, h, w); the TLC grids / grids_inverse loop."""
    k1, k2 = min(h, kernel), min(w, kernel)
    nr, nc = (h - 1) // k1 + 1, (w - 1) // k2 + 1
    step_j = k2 if nc == 1 else math.ceil((w - k2) / (nc - 1) - 1e-8)
    step_i = k1 if nr == 1 else math.ceil((h - k1) / (nr - 1) - 1e-8)
    preds = np.zeros(q.shape)
    count = np.zeros((h, w))
    i, last_i = 0, False
    while i < h and not last_i:
        j = 0
        if i + k1 >= h:
            i, last_i = h - k1, True
        last_j = False
        while j < w and not last_j:
            if j + k2 >= w:
                j, last_j = w - k2, True
            sl = (slice(None), slice(None), slice(i, i + k1), slice(j, j + k2))
            part = official_forward(*(t[sl].reshape(t.shape[0], t.shape[1], -1) for t in (q, k, v)), temp)
            preds[sl] += part.reshape(q.shape[0], q.shape[1], k1, k2)
            count[i:i + k1, j:j + k2] += 1
            j += step_j
        i += step_i
    return preds / count


@pytest.mark.parametrize("B, Hq, Hkv, H, W, D, kernel, tlc", [(1, 4, 2, 11, 13, 64, 5, True),
                                                               (2, 2, 1, 9, 7, 80, 48, True),
                                                               (1, 2, 2, 6, 17, 128, 4, False)])
def test_matches_the_official_sparse_attention(B, Hq, Hkv, H, W, D, kernel, tlc):
    N = H * W
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=N)
    temps = tuple(np.linspace(0.5, 2.0, Hq))
    m = spattn.methods.get("sparse_gsa", grid=(H, W), tlc_kernel=kernel, tlc=tlc, temperature=temps)
    out = m(q, k, v)
    G = Hq // Hkv
    for b in range(B):
        # (N, D) per head -> the official (head, c, h, w) layout: channels = D, tokens row-major
        to_img = lambda x: np.asarray(x, np.float64).transpose(0, 2, 1).reshape(x.shape[0], D, H, W)  # noqa: E731
        qi, ki, vi = to_img(q[b]), to_img(np.repeat(k[b], G, 0)), to_img(np.repeat(v[b], G, 0))
        t = np.asarray(temps)[:, None, None]
        if tlc:
            ref = official_tlc(qi, ki, vi, t, H, W, kernel)
        else:
            ref = official_forward(qi.reshape(Hq, D, N), ki.reshape(Hq, D, N), vi.reshape(Hq, D, N), t)
        np.testing.assert_allclose(out[b], ref.reshape(Hq, D, N).transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
    assert 0.0 < m.last_info["relu_zero_fraction"] < 1.0
    assert m.estimate(q, k).blocks.all()  # channel attention: no token is skipped


def test_refusals():
    q, k, v = make_qkv(1, 2, 1, 12, 12, 16, Dv=8)
    m = spattn.methods.get("sparse_gsa")
    with pytest.raises(ValueError, match="Dv == D"):
        m(q, k, v)
    with pytest.raises(ValueError, match="temperature"):
        spattn.methods.get("sparse_gsa", temperature=(1.0, 2.0, 3.0))(q, k, np.zeros((1, 1, 12, 16)))
    with pytest.raises(ValueError, match="causal"):
        m.estimate(q, k, causal=True)
    assert spattn.methods.capabilities("sparse_gsa").channel_attention


@pytest.mark.parametrize("case", ["tlc", "whole"])
def test_matches_the_official_torch_sparse_attention(case):
    """The official SparseAttention on CPU torch with identity convolutions
    (tests_py/data/make_vision_fixture.py): eval with TLC windows, and the training path."""
    z = np.load(Path(__file__).parent / "data" / "sparse_gsa_official.npz")
    qkv, ref = z[f"{case}/qkv"].astype(np.float32), z[f"{case}/out"]
    heads = int(z[f"{case}/heads"])
    _, C3, H, W = qkv.shape
    C = C3 // 3
    c = C // heads
    # 'b (head c) h w -> b head (h w) c': spattn's (B, H, N, D) with D = the head's channels
    q, k, v = (np.ascontiguousarray(t.reshape(1, heads, c, H * W).transpose(0, 1, 3, 2)) for t in np.split(qkv, 3, 1))
    m = spattn.methods.get("sparse_gsa", grid=(H, W), tlc=bool(z[f"{case}/tlc"]), tlc_kernel=int(z[f"{case}/tlc_kernel"]),
                           temperature=tuple(z[f"{case}/temperature"].tolist()))
    out = m(q, k, v)
    np.testing.assert_allclose(out.transpose(0, 1, 3, 2).reshape(1, C, H, W), ref, rtol=1e-4, atol=1e-5)
    if case == "tlc":
        assert m.last_info["windows"] > 1
