"""Radial Attention against a float64 / numpy transcription of the official mask construction
(mit-han-lab/radial-attention HEAD 72788d4, radial_attn/attn_mask.py): ``get_window_width``,
``get_diagonal_split_mask``, ``shrinkMaskStrict`` and ``gen_log_mask_shrinked`` evaluated token by
token (each frame pair's T x T mask built, padded into its canvas, shrunk and OR-ed), with
float32 ratios where the official code computes them in float32; outputs equal float64
attention under the resulting block mask."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention


def window_width(i, j, T, decay_factor, block_size, wan):
    dist = abs(i - j)
    if dist <= 1:  # wan: dist < 1 or dist == 1; hunyuan: dist <= 1
        return T
    group = dist.bit_length()
    decay = 2 ** T.bit_length() / 2 ** group * decay_factor
    return decay if decay >= block_size else block_size


def split_keeps(i, j, T):
    dist = abs(i - j)
    group = dist.bit_length()
    decay = 2 ** T.bit_length() / 2 ** group
    if decay >= 128:
        return True
    return dist % int(128 / decay) == 0


def shrink_strict(mask, bs):
    n = mask.shape[0] // bs
    m = mask[:n * bs, :n * bs].reshape(n, bs, n, bs)
    dens = (m.sum(axis=1) / bs).astype(np.float32)                 # (n, n, bs): column densities
    nonzero = dens > 0
    high = dens > np.float32(1 / 3)
    frac = high.sum(-1).astype(np.float32) / (nonzero.sum(-1).astype(np.float32) + np.float32(1e-9))
    return frac > np.float32(0.6)


def official_mask(s_blocks, video, F, bs, decay_factor, wan):
    final = np.zeros((s_blocks + 4, s_blocks + 4), bool)  # sized generously; cropped below
    T = video // F
    border = video // bs
    col = np.arange(T)[None, :]
    row = np.arange(T)[:, None]
    for i in range(F):
        for j in range(F):
            if j == 0 and wan:
                local = np.ones((T, T), bool)
            else:
                w = window_width(i, j, T, decay_factor, bs, wan)
                local = (np.abs(col - row) <= w) & split_keeps(i, j, T)
            rr, rc = (i * T) % bs, (j * T) % bs
            lr = rr + ((T - 1) // bs + 1) * bs
            lc = rc + ((T - 1) // bs + 1) * bs
            pad = np.zeros((lr, lc), bool)
            pad[rr:rr + T, rc:rc + T] = local
            bm = shrink_strict(pad, bs)
            r0, c0 = (i * T) // bs, (j * T) // bs
            final[r0:r0 + bm.shape[0], c0:c0 + bm.shape[1]] |= bm
    final = final[:s_blocks, :s_blocks]
    final[border:] = True
    final[:, border:] = True
    return final


@pytest.mark.parametrize("N, F, video, decay, wan, bs", [
    (3000, 10, 3000, 1.0, True, 128),     # T 300: subsampled far pairs, band 128
    (3000, 10, 3000, 0.2, False, 128),    # HunyuanVideo rule
    (2600, 13, 2600, 1.0, True, 64),      # T 200, smaller blocks
    (2100, 8, 1600, 0.95, False, 128),    # 500 text tokens after the video
    (1800, 20, 1800, 1.0, True, 128),     # T 90 < 128: neighbouring frames dropped by the split
])
def test_block_mask_equals_official(N, F, video, decay, wan, bs):
    q, k, _ = make_qkv(1, 2, 2, N, N, 64)
    m = spattn.methods.get("radial", frames=F, video_tokens=video, decay_factor=decay, wan=wan, block_size=bs)
    mask = m.estimate(q, k, causal=False)
    nb = -(-N // bs)
    np.testing.assert_array_equal(np.asarray(mask.blocks)[0, 0].astype(bool), official_mask(nb, video, F, bs, decay, wan))
    d = float(mask.density()[0, 0])
    assert 0 < d < 1


@pytest.mark.parametrize("Hq, Hkv, D", [(4, 2, 64), (2, 2, 80), (2, 1, 128)])
def test_output_equals_reference(Hq, Hkv, D):
    N, F = 1000, 8
    q, k, v = make_qkv(2, Hq, Hkv, N, N, D, seed=D)
    m = spattn.methods.get("radial", frames=F, block_size=64)
    mask = m.estimate(q, k)
    allowed = mask.to_dense()[:, :1].astype(bool)
    out, lse = m(q, k, v, return_lse=True)
    ref, ref_lse = ref_attention(q, k, v, allowed=np.broadcast_to(allowed, (2, Hq, N, N)))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_bad_input():
    q, k, v = make_qkv(1, 2, 1, 300, 300, 64)
    with pytest.raises(ValueError, match="non-causal"):
        spattn.methods.get("radial", frames=3)(q, k, v, causal=True)
    with pytest.raises(ValueError, match="multiple of frames"):
        spattn.methods.get("radial", frames=7).estimate(q, k)
    with pytest.raises(ValueError, match="video_tokens"):
        spattn.methods.get("radial", frames=3, video_tokens=600).estimate(q, k)
    with pytest.raises(ValueError, match="decay_factor"):
        spattn.methods.get("radial", decay_factor=0.0)
    with pytest.raises(ValueError, match="frames"):
        spattn.methods.get("radial", frames=0)
