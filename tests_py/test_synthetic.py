"""The synthetic workload is seeded and carries the planted structures."""

import numpy as np

import spattn
from conftest import ref_probs


def test_seeded_and_shaped():
    a = spattn.synthetic.structured_qkv(B=2, Hq=4, Hkv=2, N=300, D=64, Dv=32, seed=5)
    b = spattn.synthetic.structured_qkv(B=2, Hq=4, Hkv=2, N=300, D=64, Dv=32, seed=5)
    q, k, v = a
    assert q.shape == (2, 4, 300, 64) and k.shape == (2, 2, 300, 64) and v.shape == (2, 2, 300, 32)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(a.q, b.q)
    assert not np.array_equal(a.q, spattn.synthetic.structured_qkv(B=2, Hq=4, Hkv=2, N=300, D=64, Dv=32, seed=6).q)


def test_planted_structures_carry_the_attention_mass():
    kinds = ("sink", "local", "vertical", "slash", "retrieval", "diffuse")
    w = spattn.synthetic.structured_qkv(B=1, Hq=6, Hkv=1, N=1024, D=128, head_kinds=kinds, seed=0,
                                        slash_offsets=(0, 300))
    p, _ = ref_probs(w.q, w.k, causal=True)
    rows = np.arange(600, 1024)
    mass = lambda h, cols: np.mean([p[0, h, i, cols(i)].sum() for i in rows])
    assert mass(0, lambda i: [0]) > 0.5                                  # sink
    assert mass(1, lambda i: np.arange(max(0, i - 127), i + 1)) > 0.5    # local window
    assert mass(2, lambda i: w.info["vertical"][0][w.info["vertical"][0] <= i]) > 0.5
    assert mass(3, lambda i: [i, i - 300]) > 0.4                          # slash lines
    assert np.mean(p[0, 5, rows].max(axis=-1)) < 0.05                    # diffuse: no peak
