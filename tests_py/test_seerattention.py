"""SeerAttention: gate forward against numpy, ground truth against float64, gradients against
finite differences, training gain, save/load, selection rules."""

import math

import numpy as np
import pytest

import spattn
from spattn.methods import seerattention as seer
from conftest import make_qkv, ref_probs


def np_gate_scores(gate, q, k):
    """Direct numpy re-implementation of the gate forward (float64)."""
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    bs, H = gate.block_size, gate.hidden
    nb = math.ceil(N / bs)

    def pool(x, kinds):
        out = []
        for kind in kinds:
            f = {"max": np.max, "min": np.min, "avg": np.mean}[kind]
            out.append(np.stack([f(x[..., i * bs:(i + 1) * bs, :], axis=-2) for i in range(nb)], axis=-2))
        return np.concatenate(out, -1)

    qp = pool(q.astype(np.float64), gate.q_pool)
    kp = np.repeat(pool(k.astype(np.float64), gate.k_pool), G, axis=1)
    wk = gate.wk.astype(np.float64)
    widx = np.arange(Hq) if wk.shape[0] == Hq else np.arange(Hq) // G
    kg = np.einsum("bhnc,hco->bhno", kp, wk[widx])
    qg = qp if gate.wq is None else np.einsum("bhnc,hco->bhno", qp, gate.wq.astype(np.float64))
    half = H // 2
    ang = (np.arange(nb) * bs)[:, None] * gate.rope_theta ** (-2.0 * np.arange(half) / H)[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    rot = lambda x: np.concatenate([x[..., :half] * cos - x[..., half:] * sin, x[..., half:] * cos + x[..., :half] * sin], -1)
    S = np.einsum("bhid,bhjd->bhij", rot(qg), rot(kg)) / np.sqrt(H)
    S[..., np.triu(np.ones((nb, nb), bool), 1)] = -np.inf
    S = np.exp(S - S.max(-1, keepdims=True))
    return S / S.sum(-1, keepdims=True)


@pytest.mark.parametrize("N, bs, Hq, Hkv, D, identity", [(300, 64, 4, 2, 64, True), (257, 32, 4, 1, 80, False), (128, 64, 2, 2, 128, True)])
def test_gate_forward_matches_numpy(N, bs, Hq, Hkv, D, identity):
    q, k, _ = make_qkv(2, Hq, Hkv, N, N, D, seed=1)
    kw = {"hidden": D} if identity else {"hidden": 48, "q_pool": ("avg", "max")}
    gate = seer.SeerGate.init(D, Hq, Hkv, block_size=bs, seed=2, init_std=0.2, **kw)
    assert (gate.wq is None) == identity
    np.testing.assert_allclose(gate.scores(q, k), np_gate_scores(gate, q, k), atol=2e-5)


@pytest.mark.parametrize("N, bs", [(200, 32), (128, 64), (77, 16)])
def test_ground_truth_matches_float64(N, bs):
    q, k, _ = make_qkv(1, 4, 2, N, N, 64, seed=3)
    gt = seer.ground_truth(q, k, bs)
    p, _ = ref_probs(q, k, causal=True)
    nb = math.ceil(N / bs)
    pp = np.zeros((1, 4, nb * bs, nb * bs))
    pp[..., :N, :N] = p
    raw = pp.reshape(1, 4, nb, bs, nb, bs).max(axis=(3, 5))
    np.testing.assert_allclose(gt, raw / raw.sum(-1, keepdims=True), atol=1e-6)
    assert not np.triu(gt[0, 0], 1).any()


@pytest.mark.parametrize("identity", [True, False])
def test_gradient_matches_finite_differences(identity):
    q, k, _ = make_qkv(1, 2, 1, 256, 256, 32, seed=4)
    kw = {"hidden": 32} if identity else {"hidden": 16, "q_pool": ("avg", "min")}
    gate = seer.SeerGate.init(32, 2, 1, block_size=32, seed=5, init_std=0.3, **kw)
    sample = seer._prepare((q, k), gate)
    g64 = seer._with_params(gate, [gate.wk.astype(np.float64)] + ([gate.wq.astype(np.float64)] if gate.wq is not None else []))
    loss, dwk, dwq, _ = seer.gate_loss_and_grads(g64, sample)
    rng = np.random.default_rng(6)
    checks = [(g64.wk, dwk)] + ([(g64.wq, dwq)] if dwq is not None else [])
    for w, grad in checks:
        for _ in range(6):
            idx = tuple(rng.integers(0, s) for s in w.shape)
            old = w[idx]
            w[idx] = old + 1e-5
            lp = seer.gate_loss_and_grads(g64, sample)[0]
            w[idx] = old - 1e-5
            lm = seer.gate_loss_and_grads(g64, sample)[0]
            w[idx] = old
            assert abs((lp - lm) / 2e-5 - grad[idx]) <= 1e-6 + 1e-4 * abs(grad[idx])


def test_training_lowers_loss_and_raises_recall_at_equal_density():
    train = [tuple(spattn.synthetic.structured_qkv(Hq=6, Hkv=2, N=2048, D=64, seed=s))[:2] for s in range(4)]
    test = spattn.synthetic.structured_qkv(Hq=6, Hkv=2, N=2048, D=64, seed=99)
    res = seer.train_gate(train, steps=300, progress=False)
    assert np.mean(res.losses[-20:]) < 0.25 * np.mean(res.losses[:5])
    rec = {}
    for name, g in (("untrained", None), ("trained", res.gate)):
        m = spattn.methods.get("seerattention", gate=g, nz_ratio=0.2)
        mask = m.estimate(test.q, test.k, causal=True)
        rec[name] = float(np.mean(spattn.metrics.recall(test.q, test.k, mask, causal=True)))
        assert abs(float(np.mean(mask.density(causal=True))) - 0.28) < 0.03  # equal density
    assert rec["trained"] > rec["untrained"] + 0.15, rec


def test_training_is_deterministic_with_a_seed():
    data = [tuple(spattn.synthetic.structured_qkv(Hq=2, Hkv=1, N=512, D=32, seed=s))[:2] for s in range(2)]
    a = seer.train_gate(data, steps=20, batch_size=2, seed=3, progress=False)
    b = seer.train_gate(data, steps=20, batch_size=2, seed=3, progress=False)
    np.testing.assert_array_equal(a.gate.wk, b.gate.wk)
    assert a.losses == b.losses


def test_save_load_round_trip_gives_identical_masks(tmp_path):
    q, k, _ = make_qkv(1, 4, 2, 500, 500, 64, seed=7)
    gates = [seer.SeerGate.init(64, 4, 2, seed=s, init_std=0.2) for s in range(2)]
    gates.append(seer.SeerGate.init(64, 4, 2, hidden=32, q_pool=("max", "avg"), seed=9))
    path = tmp_path / "gates.npz"
    seer.save_gates(str(path), gates)
    loaded = seer.load_gates(str(path))
    assert len(loaded) == 3
    for g, h in zip(gates, loaded):
        m1 = spattn.methods.get("seerattention", gate=g, topk=3).estimate(q, k, causal=True)
        m2 = spattn.methods.get("seerattention", gate=h, topk=3).estimate(q, k, causal=True)
        assert m1 == m2
        assert h.q_pool == g.q_pool and h.block_size == g.block_size


def test_selection_rules():
    q, k, _ = make_qkv(1, 2, 1, 640, 640, 64, seed=8)
    gate = seer.SeerGate.init(64, 2, 1, seed=1, init_std=0.5)
    scores = gate.scores(q, k)
    nb = 10
    m = spattn.methods.get("seerattention", gate=gate, threshold=0.05).estimate(q, k, causal=True)
    expect = (scores > 0.05) & np.tril(np.ones((nb, nb), bool))
    expect[..., -2:, :] = np.tril(np.ones((nb, nb), bool))[-2:]  # last two rows dense
    np.testing.assert_array_equal(m.blocks, expect)
    m = spattn.methods.get("seerattention", gate=gate, nz_ratio=0.3, last_block_dense=False).estimate(q, k, causal=True)
    kk = max(1, int((1 - math.sqrt(1 - 0.3)) * nb))
    for r in range(nb):
        top = np.argsort(-scores[0, 0, r], kind="stable")[:kk]
        np.testing.assert_array_equal(np.flatnonzero(m.blocks[0, 0, r]), np.sort(top[top <= r]))


def test_errors():
    q, k, _ = make_qkv(1, 2, 1, 100, 100, 64)
    with pytest.raises(ValueError, match="causal"):
        spattn.methods.get("seerattention").estimate(q, k, causal=False)
    with pytest.raises(ValueError, match="at most one"):
        spattn.methods.get("seerattention", nz_ratio=0.1, topk=2)
    with pytest.raises(TypeError, match="SeerGate"):
        spattn.methods.get("seerattention", gate=np.zeros(3))
    with pytest.raises(ValueError, match="q_pool"):
        seer.SeerGate.init(64, 2, q_pool=("mean",))
    with pytest.raises(ValueError, match="head dim"):
        seer.SeerGate.init(32, 2, 1).scores(q, k)
