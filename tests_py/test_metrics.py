"""Recall, density and relative error against float64 numpy."""

import numpy as np
import pytest

import spattn
from conftest import make_qkv, ref_probs


def ref_recall(q, k, allowed, causal):
    p, lse = ref_probs(q, k, causal=causal)
    kept = (p * allowed).sum(axis=-1)
    valid = np.isfinite(lse)
    return np.where(valid, kept, 0).sum(-1) / valid.sum(-1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dims", [(1, 4, 2, 130, 130, 64), (2, 2, 1, 60, 200, 80), (1, 2, 2, 1, 300, 128)])
def test_block_mask_recall_matches_reference(dims, causal):
    q, k, _ = make_qkv(*dims, seed=2)
    B, Hq, Nq, _ = q.shape
    Nk = k.shape[2]
    rng = np.random.default_rng(3)
    m = spattn.BlockMask(rng.random((B, Hq, -(-Nq // 32), -(-Nk // 32))) < 0.5, 32, 32, Nq, Nk)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, m, causal=causal),
                               ref_recall(q, k, m.to_dense(), causal), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_token_indices_recall_matches_reference(causal):
    q, k, _ = make_qkv(1, 4, 2, 70, 90, 64, seed=4)
    rng = np.random.default_rng(5)
    ti = spattn.TokenIndices(rng.integers(-1, 90, size=(1, 4, 70, 20)), 1, 90)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, ti, causal=causal),
                               ref_recall(q, k, ti.to_dense(70), causal), atol=1e-5)


def test_full_mask_recall_is_one_and_rows_without_keys_are_skipped():
    q, k, _ = make_qkv(1, 2, 1, 40, 20, 64)  # causal: first 20 rows see nothing
    m = spattn.BlockMask.full(1, 1, 40, 20, 16, 16)
    np.testing.assert_allclose(spattn.metrics.recall(q, k, m, causal=True), 1.0, atol=1e-5)


def test_relative_error():
    a = np.array([3.0, 4.0])
    assert spattn.metrics.relative_error(a, a) == 0.0
    assert spattn.metrics.relative_error(np.zeros(2), a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        spattn.metrics.relative_error(a, a[:1])
