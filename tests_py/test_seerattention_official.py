"""SeerAttention against references written from the official code (microsoft/SeerAttention,
prefill_sparse/attn_gate.py, modules/common.py, the llama modelling file and the distillation
loss), not from spattn's own reading: the gate forward in the official (B, N, H, D) layout with
its block rotary embedding (model head_dim, llama3 scaling from a transformers config), the
official weights file layout, KL(mean) over rows >= nb // 4 times 10, nz_ratio / threshold
selection with last_block_dense; gate inputs separate from attention inputs."""

import json
import math

import numpy as np
import pytest

import spattn
from spattn.methods import seerattention as seer
from conftest import make_qkv, ref_probs

FMIN = float(np.finfo(np.float32).min)  # the official gate mask fills with the dtype's minimum


# ------------------------------------------------------------------ official forward, in numpy
def official_block_rope(config, nb, bs):
    """cos, sin (nb, rotary) of the official block rotary embedding: LlamaRotaryEmbedding on a
    copy of the config (hidden_size changed, head_dim kept) at positions 0, bs, 2 bs, ...;
    frequencies from transformers' own rope init functions (not spattn's)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rp = config.rope_parameters
    dim = config.head_dim
    if rp.get("rope_type", "default") == "default":
        inv = 1.0 / rp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    else:
        inv = ROPE_INIT_FUNCTIONS[rp["rope_type"]](config, "cpu")[0].double().numpy()
    freqs = (np.arange(nb) * bs)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    return np.cos(emb), np.sin(emb)


def official_pool(x, bs, kinds):
    """max/min/avg_pool3d with kernel [bs, 1, 1], ceil_mode=True on (B, N, H, D), concatenated."""
    B, N, H, D = x.shape
    nb = math.ceil(N / bs)
    out = []
    for kind in kinds:
        f = {"max": np.max, "min": np.min, "avg": np.mean}[kind]
        out.append(np.stack([f(x[:, i * bs:(i + 1) * bs], axis=1) for i in range(nb)], axis=1))
    return np.concatenate(out, -1)


def official_gate_logits(wq, wk, q, k, q_pool, k_pool, bs, cos_sin=None):
    """AttnGate.forward with use_softmax=False (training / nz_ratio), float64; q (B, N, Hq, D) and
    k (B, N, Hkv, D) as the official gate receives them (pre-RoPE, not transposed)."""
    q, k = q.astype(np.float64), k.astype(np.float64)
    Hq = q.shape[2]
    qp = official_pool(q, bs, q_pool)
    if wq is not None:
        qp = np.einsum("bshi,hio->bsho", qp, wq.astype(np.float64))
    kp = official_pool(k, bs, k_pool)
    if kp.shape[2] < wk.shape[0]:  # repeat_kv_varlen: head h -> h // n_rep
        kp = np.repeat(kp, wk.shape[0] // kp.shape[2], axis=2)
    kp = np.einsum("bshi,hio->bsho", kp, wk.astype(np.float64))
    hidden = wk.shape[2]
    if cos_sin is not None:
        cos, sin = cos_sin
        rd = cos.shape[-1]

        def rot(x):
            xr, xp = x[..., :rd], x[..., rd:]
            half = rd // 2
            rh = np.concatenate([-xr[..., half:], xr[..., :half]], -1)
            return np.concatenate([xr * cos[None, :, None] + rh * sin[None, :, None], xp], -1)

        qp, kp = rot(qp), rot(kp)
    qp, kp = qp.transpose(0, 2, 1, 3), kp.transpose(0, 2, 1, 3)
    if kp.shape[1] < Hq:
        kp = np.repeat(kp, Hq // kp.shape[1], axis=1)
    S = qp @ kp.transpose(0, 1, 3, 2) * hidden ** -0.5
    nb = S.shape[-1]
    return S + np.triu(np.full((nb, nb), FMIN), 1)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def official_nz_ratio_mask(logits, nz_ratio, last_block_dense):
    """get_sparse_attn_mask_from_nz_ratio: top-k per row of the gate output, the last two rows
    dense when asked, then tril."""
    nb = logits.shape[-1]
    topk = int((1 - math.sqrt(1 - nz_ratio)) * nb)
    topk = 1 if topk == 0 else topk
    idx = np.argsort(-logits, axis=-1, kind="stable")[..., :topk]
    mask = np.zeros(logits.shape, bool)
    np.put_along_axis(mask, idx, True, axis=-1)
    if last_block_dense:
        mask[..., -2:, :] = True
    return mask & np.tril(np.ones((nb, nb), bool))


def official_threshold_mask(scores, threshold, last_block_dense):
    nb = scores.shape[-1]
    mask = scores > threshold
    if last_block_dense:
        mask[..., -2:, :] = True
    return mask & np.tril(np.ones((nb, nb), bool))


def bnhd(x):
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


def llama_config(head_dim=32, scaling="llama3"):
    from transformers import LlamaConfig

    rs = None
    if scaling == "llama3":
        rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 128, "rope_theta": 500000.0}
    return LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                       rope_theta=500000.0, rope_scaling=rs)


def gate_qk(seed, B=2, Hq=4, Hkv=2, N=500, D=32):
    """A (q, k) pair standing for the attention inputs and an unrelated pair for the gate."""
    q, k, v = make_qkv(B, Hq, Hkv, N, N, D, seed=seed)
    qg, kg, _ = make_qkv(B, Hq, Hkv, N, N, D, seed=seed + 100)
    return q, k, v, qg, kg


# ------------------------------------------------------------------ RoPE from a model config
def test_rope_from_config_llama3_matches_transformers():
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = llama_config(head_dim=64)
    r = seer.rope_from_config(cfg)
    assert r["rope_theta"] == 500000.0 and r["rope_dim"] == 64 and r["rope_scaling"]["rope_type"] == "llama3"
    ref = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")[0].double().numpy()
    np.testing.assert_allclose(seer.rope_inv_freq(r["rope_theta"], 64, r["rope_scaling"]), ref, rtol=1e-6)
    # the same settings from a plain config.json dict (transformers 4 field names)
    d = {"rope_theta": 500000.0, "hidden_size": 4096, "num_attention_heads": 32,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 128}}
    r2 = seer.rope_from_config(d)
    assert r2["rope_dim"] == 128 and r2["rope_theta"] == 500000.0
    # no scaling: plain theta
    r3 = seer.rope_from_config({"rope_theta": 1e6, "head_dim": 16})
    assert r3 == {"rope_theta": 1e6, "rope_scaling": None, "rope_dim": 16}


def test_rope_from_config_errors():
    with pytest.raises(ValueError, match="rope_scaling"):
        seer.rope_from_config({"rope_theta": 1e4, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="rope_scaling"):
        seer.rope_from_config({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(TypeError, match="config"):
        seer.rope_from_config(None)
    with pytest.raises(ValueError, match="rope_dim"):  # model head_dim above the gate hidden size
        seer.SeerGate.init(64, 4, 2, hidden=32, rope_config={"rope_theta": 1e4, "head_dim": 64})


# ------------------------------------------------------------------ gate forward vs official
@pytest.mark.parametrize("hidden, scaling", [(64, "llama3"), (32, "llama3"), (64, None)])
def test_gate_scores_equal_official_forward_with_model_rope(hidden, scaling):
    pytest.importorskip("transformers")
    cfg = llama_config(head_dim=32, scaling=scaling)
    _, _, _, qg, kg = gate_qk(1)
    gate = seer.SeerGate.init(32, 4, 2, hidden=hidden, block_size=32, rope_config=cfg, seed=3, init_std=0.3)
    assert (gate.wq is None) == (hidden == 32)
    nb = math.ceil(500 / 32)
    ref = softmax(official_gate_logits(gate.wq, gate.wk, bnhd(qg), bnhd(kg), gate.q_pool, gate.k_pool, 32,
                                       official_block_rope(cfg, nb, 32)))
    np.testing.assert_allclose(gate.scores(qg, kg), ref, atol=3e-5)


def test_default_hidden_is_128():
    g = seer.SeerGate.init(64, 4, 2)
    assert g.hidden == 128 and g.wq.shape == (4, 64, 128) and g.wk.shape == (2, 192, 128)
    g = seer.SeerGate.init(128, 4, 2)
    assert g.wq is None and g.wk.shape == (4, 384, 128)  # identity q, one k weight per query head


# ------------------------------------------------------------------ official weights file
def official_state_dict(torch, layers, Hq, Hkv, D, hidden, q_pool, k_pool, seed, dtype=None):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    identity = len(q_pool) == 1 and hidden == D
    for i in range(layers):
        pre = f"model.layers.{i}.self_attn.attn_gate."
        sd[pre + "mask_linear_k.weight"] = torch.randn(Hq if identity else Hkv, len(k_pool) * D, hidden, generator=g) * 0.3
        if not identity:
            sd[pre + "mask_linear_q.weight"] = torch.randn(Hq, len(q_pool) * D, hidden, generator=g) * 0.3
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sd


def test_official_weights_file_loads_and_scores_as_the_official_forward(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = llama_config(head_dim=32)
    sd = official_state_dict(torch, 2, 4, 2, 32, 64, ("avg",), ("max", "min", "avg"), seed=5)
    torch.save(sd, tmp_path / "attn_gate_weights.pth")
    conf = cfg.to_dict()
    conf.update(seerattn_gate_type="Qavg_Kmaxminavg", seerattn_gate_block_size=32, seerattn_gate_hidden_size=64)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    gates = seer.load_official_gates(str(tmp_path))
    assert len(gates) == 2
    _, _, _, qg, kg = gate_qk(2)
    nb = math.ceil(500 / 32)
    for i, g in enumerate(gates):
        pre = f"model.layers.{i}.self_attn.attn_gate."
        assert g.block_size == 32 and g.k_pool == ("max", "min", "avg") and g.rope_dim == 32
        ref = softmax(official_gate_logits(sd[pre + "mask_linear_q.weight"].numpy(),
                                           sd[pre + "mask_linear_k.weight"].numpy(), bnhd(qg), bnhd(kg),
                                           ("avg",), ("max", "min", "avg"), 32, official_block_rope(cfg, nb, 32)))
        np.testing.assert_allclose(g.scores(qg, kg), ref, atol=3e-5)
    # the same file through its path, with gate type and block size given
    again = seer.load_official_gates(str(tmp_path / "attn_gate_weights.pth"), gate_type="Qavg_Kmaxminavg",
                                     block_size=32, rope_config=cfg)
    np.testing.assert_array_equal(again[1].wk, gates[1].wk)


def test_official_identity_gate_and_k_channel_order():
    torch = pytest.importorskip("torch")
    # Qavg_Kmaxmin, hidden == D: no q weight, k weight per query head; bf16 as trained
    sd = official_state_dict(torch, 1, 4, 2, 32, 32, ("avg",), ("max", "min"), seed=6, dtype=torch.bfloat16)
    g = seer.load_official_gates(sd, gate_type="Qavg_Kmaxmin", block_size=32)[0]
    assert g.wq is None and g.wk.shape == (4, 64, 32) and g.k_pool == ("max", "min")
    _, _, _, qg, kg = gate_qk(3)
    wk = sd["model.layers.0.self_attn.attn_gate.mask_linear_k.weight"].float().numpy()
    nb = math.ceil(500 / 32)
    half = 16
    freqs = (np.arange(nb) * 32)[:, None] * (1e4 ** (-np.arange(half) / half))[None, :]
    cs = (np.cos(np.concatenate([freqs, freqs], -1)), np.sin(np.concatenate([freqs, freqs], -1)))
    ref = softmax(official_gate_logits(None, wk, bnhd(qg), bnhd(kg), ("avg",), ("max", "min"), 32, cs))
    np.testing.assert_allclose(g.scores(qg, kg), ref, atol=3e-5)
    # min before max in the weight rows would be a different gate: the order is max, min
    swapped = np.concatenate([wk[:, 32:], wk[:, :32]], 1)
    bad = softmax(official_gate_logits(None, swapped, bnhd(qg), bnhd(kg), ("avg",), ("max", "min"), 32, cs))
    assert np.abs(g.scores(qg, kg) - bad).max() > 1e-3


def test_official_loader_errors(tmp_path):
    torch = pytest.importorskip("torch")
    sd = official_state_dict(torch, 1, 4, 2, 32, 64, ("avg",), ("max", "min", "avg"), seed=7)
    with pytest.raises(ValueError, match="gate_type"):
        seer.load_official_gates(sd, gate_type="Qmean_Kmax")
    no_q = {k: v for k, v in sd.items() if "mask_linear_q" not in k}
    with pytest.raises(ValueError, match="mask_linear_q"):
        seer.load_official_gates(no_q)
    with pytest.raises(ValueError, match="mask_linear_k"):
        seer.load_official_gates({"model.norm.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="source"):
        seer.load_official_gates(str(tmp_path / "missing.pth"))
    with pytest.raises(TypeError, match="source"):
        seer.load_official_gates(3)


# ------------------------------------------------------------------ loss vs KL(mean)
def independent_ground_truth(q, k, bs):
    """Exact causal attention max-pooled per block pair, rows normalised (float64, N x N)."""
    p, _ = ref_probs(q, k, causal=True)
    B, H, N, _ = p.shape
    nb = math.ceil(N / bs)
    pp = np.zeros((B, H, nb * bs, nb * bs))
    pp[..., :N, :N] = p
    raw = pp.reshape(B, H, nb, bs, nb, bs).max(axis=(3, 5))
    return raw / raw.sum(-1, keepdims=True)


@pytest.mark.filterwarnings("ignore:reduction")
@pytest.mark.parametrize("hidden", [64, 32])
def test_loss_equals_kl_mean_with_quarter_rows_dropped_times_10(hidden):
    torch = pytest.importorskip("torch")
    cfg = llama_config(head_dim=32)
    q, k, _, qg, kg = gate_qk(4, N=400)
    bs = 32
    gate = seer.SeerGate.init(32, 4, 2, hidden=hidden, block_size=bs, rope_config=cfg, seed=8, init_std=0.3)
    sample = seer._prepare((q, k, qg, kg), gate)
    loss = seer.gate_loss_and_grads(gate, sample)[0]
    nb = math.ceil(400 / bs)
    logits = official_gate_logits(gate.wq, gate.wk, bnhd(qg), bnhd(kg), gate.q_pool, gate.k_pool, bs,
                                  official_block_rope(cfg, nb, bs))
    gt = independent_ground_truth(q, k, bs)  # from the attention inputs, not the gate's
    r0 = nb // 4
    assert r0 == 3
    pred = torch.log_softmax(torch.from_numpy(logits[:, :, r0:]), dim=-1)
    ref = 10.0 * torch.nn.KLDivLoss()(pred, torch.from_numpy(gt[:, :, r0:])).item()
    assert loss == pytest.approx(ref, rel=1e-4)
    # KL(mean) by hand: sum of T (log T - log Q) over every kept entry, / their count (B H (nb - r0) nb)
    lq = pred.numpy()
    T = gt[:, :, r0:]
    manual = 10.0 * np.sum(np.where(T > 0, T * (np.log(np.where(T > 0, T, 1)) - lq), 0)) / (2 * 4 * (nb - r0) * nb)
    assert loss == pytest.approx(manual, rel=1e-4)
    # the dropped rows matter: keeping them gives another value
    full = 10.0 * torch.nn.KLDivLoss()(torch.log_softmax(torch.from_numpy(logits), -1), torch.from_numpy(gt)).item()
    assert abs(full - loss) > 1e-4 * abs(loss)


# ------------------------------------------------------------------ selection vs official
@pytest.mark.parametrize("nz_ratio", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("last_block_dense", [True, False])
def test_nz_ratio_selection_on_every_head(nz_ratio, last_block_dense):
    _, _, _, qg, kg = gate_qk(5, N=700)
    gate = seer.SeerGate.init(32, 4, 2, hidden=64, block_size=32, seed=9, init_std=0.5)
    m = spattn.methods.get("seerattention", gate=gate, nz_ratio=nz_ratio, last_block_dense=last_block_dense)
    mask = m.estimate(qg, kg, causal=True)
    cs = official_block_rope_plain(math.ceil(700 / 32), 32, 64)
    logits = official_gate_logits(gate.wq, gate.wk, bnhd(qg), bnhd(kg), gate.q_pool, gate.k_pool, 32, cs)
    ref = official_nz_ratio_mask(logits, nz_ratio, last_block_dense)
    assert ref.shape == mask.blocks.shape == (2, 4, 22, 22)
    np.testing.assert_array_equal(mask.blocks.astype(bool), ref)  # every batch row, every head


@pytest.mark.parametrize("last_block_dense", [True, False])
def test_threshold_selection_on_every_head(last_block_dense):
    _, _, _, qg, kg = gate_qk(6, N=600)
    gate = seer.SeerGate.init(32, 4, 2, hidden=64, block_size=32, seed=10, init_std=0.5)
    m = spattn.methods.get("seerattention", gate=gate, threshold=2e-2, last_block_dense=last_block_dense)
    mask = m.estimate(qg, kg, causal=True)
    nb = math.ceil(600 / 32)
    scores = softmax(official_gate_logits(gate.wq, gate.wk, bnhd(qg), bnhd(kg), gate.q_pool, gate.k_pool, 32,
                                          official_block_rope_plain(nb, 32, 64)))
    ref = official_threshold_mask(scores, 2e-2, last_block_dense)
    np.testing.assert_array_equal(mask.blocks.astype(bool), ref)
    if last_block_dense:
        assert ref[..., -2:, :].sum() == 2 * 4 * (2 * nb - 1)


def official_block_rope_plain(nb, bs, dim, theta=10000.0):
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    freqs = (np.arange(nb) * bs)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    return np.cos(emb), np.sin(emb)


# ------------------------------------------------------------------ gate inputs vs attention inputs
def test_gate_inputs_choose_the_mask_attention_inputs_the_output():
    q, k, v, qg, kg = gate_qk(7, N=512)
    gate = seer.SeerGate.init(32, 4, 2, hidden=64, block_size=32, seed=11, init_std=0.5)
    m = spattn.methods.get("seerattention", gate=gate, nz_ratio=0.3)
    own = m.estimate(q, k, causal=True)
    sep = m.estimate(q, k, causal=True, q_gate=qg, k_gate=kg)
    assert sep == m.estimate(qg, kg, causal=True)  # the mask is the gate inputs' mask
    assert sep != own
    np.testing.assert_array_equal(m.last_info["scores"], gate.scores(qg, kg))
    out = m(q, k, v, causal=True, q_gate=qg, k_gate=kg)
    np.testing.assert_allclose(out, spattn.sparse_attention(q, k, v, sep, causal=True), atol=1e-6)
    # other attention inputs, same gate inputs: same mask, another output
    q2 = q[:, ::-1].copy()
    assert m.estimate(q2, k, causal=True, q_gate=qg, k_gate=kg) == sep
    assert np.abs(m(q2, k, v, causal=True, q_gate=qg, k_gate=kg) - out).max() > 1e-3
    # only one of them given: the other defaults to the attention input
    assert m.estimate(q, k, causal=True, q_gate=qg) == m.estimate(qg, k, causal=True)


def test_gate_input_errors():
    q, k, v, qg, kg = gate_qk(8, N=128)
    m = spattn.methods.get("seerattention")
    with pytest.raises(ValueError, match="q_gate"):
        m.estimate(q, k, causal=True, q_gate=qg[:, :, :64])
    with pytest.raises(ValueError, match="k_gate"):
        m.estimate(q, k, causal=True, k_gate=kg[:, :1])
    with pytest.raises(TypeError, match="k_gate"):
        m.estimate(q, k, causal=True, k_gate=kg.astype(np.int32))
    with pytest.raises(ValueError, match="q_gate"):
        m.estimate(q, k, causal=True, q_gate=np.full_like(q, np.nan))
    for cls in spattn.methods.registered():
        if not cls.capabilities.gate_inputs:
            with pytest.raises(TypeError, match="gate inputs"):
                cls().estimate(q, k, causal=cls.capabilities.causal, q_gate=qg)
            break


def test_train_gate_on_separate_inputs_uses_them():
    q, k, _, qg, kg = gate_qk(9, N=256)
    a = seer.train_gate([(q, k, qg, kg)], steps=3, progress=False, block_size=32, hidden=32)
    b = seer.train_gate([(q, k)], steps=3, progress=False, block_size=32, hidden=32)
    assert a.losses[0] != b.losses[0]
    cfg = {"rope_theta": 5e5, "head_dim": 16}
    c = seer.train_gate([(q, k, qg, kg)], steps=2, progress=False, block_size=32, hidden=32, rope_config=cfg)
    assert c.gate.rope_theta == 5e5 and c.gate.rope_dim == 16


def test_save_load_keeps_rope_settings(tmp_path):
    pytest.importorskip("transformers")
    g = seer.SeerGate.init(32, 4, 2, hidden=64, rope_config=llama_config(head_dim=32), seed=1)
    seer.save_gates(str(tmp_path / "g.npz"), [g])
    h = seer.load_gates(str(tmp_path / "g.npz"))[0]
    assert h.rope_scaling == g.rope_scaling and h.rope_dim == 32 and h.rope_theta == 5e5
    np.testing.assert_array_equal(h.inv_freq(), g.inv_freq())
