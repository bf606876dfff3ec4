"""Streaming (spattn.methods.streaming) against a numpy construction of sinks + local window."""

import math

import numpy as np
import pytest

import spattn
from conftest import make_qkv


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq, nk", [(300, 300), (100, 333), (1, 500)])
def test_streaming_matches_numpy_construction(causal, nq, nk):
    bs, sink, local = 32, 40, 70
    q, k, _ = make_qkv(1, 2, 1, nq, nk, 64)
    mask = spattn.methods.get("streaming", block_size=bs, sink_tokens=sink, local_tokens=local).estimate(q, k, causal=causal)
    off = nk - nq
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    near = (j <= i + off) & (j > i + off - local) if causal else np.abs(j - (i + off)) < local
    elem = (j < sink) | near
    nqb, nkb = math.ceil(nq / bs), math.ceil(nk / bs)
    pad = np.zeros((nqb * bs, nkb * bs), bool)
    pad[:nq, :nk] = elem
    expected = pad.reshape(nqb, bs, nkb, bs).any(axis=(1, 3))
    np.testing.assert_array_equal(mask.blocks[0, 0], expected)
