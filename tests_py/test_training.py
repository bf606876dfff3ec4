"""The shared learned-estimator subsystem (spattn.training): AdamW against a hand-computed
update, the fit loop, sample preparation and the .npz artifacts."""

import math

import numpy as np
import pytest

from spattn import training


def hand_adamw(p, grads, *, lr, steps, warmup, betas, eps, wd, clip):
    """AdamW with warmup + cosine and global-norm clipping, written out step by step."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        s = t - 1
        lr_t = lr * (s + 1) / warmup if s < warmup else \
            lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
        norm = math.sqrt(float((g ** 2).sum()))
        if norm > clip:
            g = g * (clip / (norm + 1e-6))
        p = p * (1 - lr_t * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr_t * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


def test_adamw_steps_equal_the_hand_computed_update():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 4))
    grads = [rng.normal(scale=s, size=(3, 4)) for s in (5.0, 0.1, 2.0, 0.01, 1.0)]  # clipped and not
    kw = dict(lr=0.1, steps=5, betas=(0.8, 0.95), eps=1e-7)
    p = p0.copy()
    opt = training.AdamW([p], warmup_steps=2, weight_decay=0.05, max_grad_norm=1.0, **kw)
    norms = [opt.step([g]) for g in grads]
    expect = hand_adamw(p0, grads, warmup=2, wd=0.05, clip=1.0, **kw)
    np.testing.assert_allclose(p, expect, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(norms, [np.linalg.norm(g) for g in grads], rtol=1e-12)


def test_schedule_warms_up_then_decays_to_zero():
    opt = training.AdamW([np.zeros(1)], lr=1.0, steps=10, warmup_steps=4)
    assert [opt.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert opt.lr_at(4) == 1.0 and opt.lr_at(7) == pytest.approx(0.5)
    assert opt.lr_at(10) == pytest.approx(0.0, abs=1e-15) and opt.lr_at(12) == pytest.approx(0.0, abs=1e-15)


def test_fit_loop_minimises_and_records_every_loss():
    target = np.array([1.0, -2.0, 3.0])
    x = np.zeros(3)
    seen = []

    def loss_and_grads(step):
        seen.append(step)
        d = x - target
        return float(d @ d), [2 * d]

    losses = training.fit([x], loss_and_grads, steps=300, lr=0.1, warmup_steps=10, progress=False)
    assert seen == list(range(300)) and len(losses) == 300
    assert losses[0] == pytest.approx(14.0)
    assert losses[-1] < 1e-3 * losses[0]
    np.testing.assert_allclose(x, target, atol=0.05)  # updated in place
    with pytest.raises(ValueError, match="steps must be >= 1"):
        training.fit([x], loss_and_grads, steps=0, lr=0.1, progress=False)


def test_prepare_samples_maps_and_refuses_empty_data():
    assert training.prepare_samples(iter([1, 2, 3]), lambda i: i * 10, progress=False) == [10, 20, 30]
    with pytest.raises(ValueError, match="at least one"):
        training.prepare_samples([], lambda i: i, progress=False)


def test_npz_artifact_round_trip(tmp_path):
    path = str(tmp_path / "artifact.npz")
    arrays = {"layer0.w": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.array([0.5, -1.0])}
    config = [{"block_size": 64, "pool": ["max", "avg"]}, {"theta": 1e4}]
    training.save_npz(path, arrays, config)
    got, cfg = training.load_npz(path)
    assert cfg == config and set(got) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)
        assert got[name].dtype == a.dtype
    with pytest.raises(ValueError, match="reserved"):
        training.save_npz(path, {"__config__": np.zeros(1)}, {})
    plain = str(tmp_path / "plain.npz")
    np.savez(plain, w=np.zeros(2))
    with pytest.raises(ValueError, match="__config__"):
        training.load_npz(plain)
