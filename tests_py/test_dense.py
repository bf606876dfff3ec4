"""Dense (spattn.methods.dense): the exact baseline."""

import numpy as np
import pytest

import spattn
from conftest import make_qkv


def test_dense_method_is_exact():
    q, k, v = make_qkv(1, 4, 2, 100, 100, 64)
    np.testing.assert_array_equal(spattn.methods.get("dense")(q, k, v, causal=True),
                                  spattn.attention(q, k, v, causal=True))


@pytest.mark.parametrize("nq, nk", [(100, 100), (37, 300), (1, 200)])
def test_dense_estimate_is_the_full_mask(nq, nk):
    q, k, _ = make_qkv(2, 4, 2, nq, nk, 64)
    mask = spattn.methods.get("dense", block_size=32).estimate(q, k, causal=True)
    assert mask.blocks.shape == (2, 1, -(-nq // 32), -(-nk // 32)) and mask.blocks.all()
