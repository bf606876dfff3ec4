"""PowerAttention against the paper's Algorithm 1 (arXiv 2503.03588; no official code exists),
transcribed as a token-level mask function:

    sink = k < B; d = q//B - k//B; window = d < W; power = (d & (d-1)) == 0
    mask = (q >= k) & (window | power | sink)

with q the query's position (bottom-right aligned for Nq < Nk). Outputs equal float64 attention
under that mask on odd shapes (N not a multiple of B, chunked prefill with misaligned offsets,
decode, GQA, D 64/80/128)."""

import numpy as np
import pytest

import spattn
from conftest import ATOL, RTOL, make_qkv, ref_attention


def algorithm1_mask(Nq, Nk, B, W):
    q = np.arange(Nq)[:, None] + (Nk - Nq)
    k = np.arange(Nk)[None, :]
    sink = k < B
    d = q // B - k // B
    window = d < W
    power = (d & (d - 1)) == 0
    return (q >= k) & (window | power | sink)


@pytest.mark.parametrize("B_, Hq, Hkv, Nq, Nk, D, bs, W", [
    (1, 4, 2, 700, 700, 64, 32, 3),      # prefill, N not a multiple of the block
    (1, 2, 1, 1000, 1000, 80, 16, 5),
    (2, 4, 4, 100, 1037, 128, 32, 2),    # chunked prefill, offset 937 (not a multiple of 32)
    (1, 4, 2, 1, 2049, 64, 64, 5),       # decode
    (1, 2, 2, 513, 513, 64, 256, 5),     # paper defaults
])
def test_equals_algorithm1(B_, Hq, Hkv, Nq, Nk, D, bs, W):
    q, k, v = make_qkv(B_, Hq, Hkv, Nq, Nk, D, seed=Nk)
    m = spattn.methods.get("powerattention", block_size=bs, window_blocks=W)
    allowed = algorithm1_mask(Nq, Nk, bs, W)
    mask = m.estimate(q, k, causal=True)
    np.testing.assert_array_equal(mask.to_dense(causal=True)[0, 0].astype(bool), allowed)
    out, lse = m(q, k, v, causal=True, return_lse=True)
    ref, ref_lse = ref_attention(q, k, v, causal=True, allowed=np.broadcast_to(allowed, (B_, Hq, Nq, Nk)))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(lse, ref_lse, atol=ATOL, rtol=RTOL)


def test_log_many_blocks_and_defaults():
    m = spattn.methods.get("powerattention")
    assert m.params == {"block_size": 256, "window_blocks": 5}
    allowed = algorithm1_mask(1, 128 * 256, 256, 5)[0]
    kept_blocks = np.unique(np.flatnonzero(allowed) // 256)
    # query block 127: sink 0, window 123..127, distances 8, 16, 32, 64 -> blocks 119, 111, 95, 63
    assert kept_blocks.tolist() == [0, 63, 95, 111, 119, 123, 124, 125, 126, 127]
    q, k, _ = make_qkv(1, 1, 1, 1, 128 * 256, 64)
    idx = m.estimate(q, k, causal=True)
    assert np.flatnonzero(np.asarray(idx.blocks)[0, 0, 0]).tolist() == kept_blocks.tolist()


def test_bad_input():
    q, k, v = make_qkv(1, 2, 1, 64, 64, 64)
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("powerattention")(q, k, v, causal=False)
    with pytest.raises(ValueError, match="window_blocks"):
        spattn.methods.get("powerattention", window_blocks=0)
    with pytest.raises(ValueError, match="block_size"):
        spattn.methods.get("powerattention", block_size=0)
