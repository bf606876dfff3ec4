"""Method state across calls (spattn.state): the schedule as data, the state's .npz round trip and
reset, the slowly varying inputs of spattn.synthetic.denoising_steps, the ``stateful``
capability, and stateful methods under the transformers backend (per-layer state, saved and
restored with hf.save_states / hf.load_states)."""

import numpy as np
import pytest

import spattn
from spattn.methods import Capabilities
from spattn.state import MethodState, Schedule

STATEFUL = [n for n in spattn.methods.available() if spattn.methods.capabilities(n).stateful]


def test_schedule_phases_and_dict_round_trip():
    s = Schedule(dense_steps=3, search_steps=(3, 9), refresh_period=0)
    assert s.phases(11) == ("dense",) * 3 + ("search",) + ("reuse",) * 5 + ("search", "reuse")
    r = Schedule(dense_steps=10, refresh_period=5)
    assert [r.phase(i) for i in (9, 10, 11, 15, 16)] == ["dense", "search", "reuse", "search", "reuse"]
    for x in (s, r, Schedule()):
        assert Schedule.from_dict(x.to_dict()) == x
    with pytest.raises(ValueError, match="dense_steps"):
        Schedule(dense_steps=-1)
    with pytest.raises(TypeError, match="refresh_period"):
        Schedule(refresh_period=1.5)
    with pytest.raises(ValueError, match="unknown Schedule field"):
        Schedule.from_dict({"dense": 1})


def test_method_state_saves_loads_copies_and_resets(tmp_path):
    st = MethodState(schedule=Schedule(dense_steps=2, search_steps=(2,)))
    st["mask"] = np.arange(12).reshape(3, 4) % 3 == 0
    st["rho"] = np.linspace(0, 1, 5, dtype=np.float32)
    st.step, st.meta["shape"] = 7, [[1, 2, 3, 4]]
    st.save(tmp_path / "s.npz")
    back = MethodState.load(tmp_path / "s.npz")
    assert back.step == 7 and back.schedule == st.schedule and back.meta == st.meta
    assert set(back) == {"mask", "rho"}
    for name in st:
        np.testing.assert_array_equal(back[name], st[name])
        assert back[name].dtype == st[name].dtype
    c = st.copy()
    c["rho"][0] = 5
    assert st["rho"][0] == 0  # a copy owns its arrays
    st.reset()
    assert st.step == 0 and not list(st) and not st.meta and st.schedule == c.schedule
    st.restore(c)
    assert st.step == 7 and st["rho"][0] == 5


def test_denoising_steps_vary_slowly():
    w = spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=64, D=32, seed=0)
    steps = spattn.synthetic.denoising_steps(w, 5, drift=0.01, seed=1)
    assert len(steps) == 5
    np.testing.assert_array_equal(steps[0][0], w.q)
    for t in range(1, 5):
        rel = np.linalg.norm(steps[t][1] - w.k) / np.linalg.norm(w.k)
        assert 0 < rel < 0.05
    with pytest.raises(ValueError, match="steps"):
        spattn.synthetic.denoising_steps(w, 0)
    with pytest.raises(ValueError, match="drift"):
        spattn.synthetic.denoising_steps(w, 2, drift=-1)


def test_stateful_requires_own_output():
    with pytest.raises(ValueError, match="stateful requires own_output"):
        Capabilities(stateful=True)


@pytest.mark.parametrize("name", STATEFUL)
def test_stateful_methods_expose_state_reset_and_warm_up(name):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=200, D=64, seed=2)
    m = spattn.methods.get(name)
    assert isinstance(m.state, MethodState) and m.state.step == 0
    n = m.warm_up(w.q, w.k, w.v)
    assert n == m.state.step and m.state.phase() == "reuse"
    assert m.schedule().phases(n) == tuple(m.state.schedule.phase(i) for i in range(n))
    m(w.q, w.k, w.v)
    assert m.last_info["phase"] == "reuse" and m.readouts()["phase"] == "reuse"
    m.reset()
    assert m.state.step == 0 and not list(m.state)


@pytest.mark.parametrize("name", STATEFUL)
def test_evaluate_measures_a_stateful_method_at_its_first_reuse_step(name):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=256, D=64, seed=3)
    rec, = spattn.evaluate([name], w, causal=False, progress=False, params={name: {"block_size": 32}}
                           if "block_size" in spattn.methods.lookup(name).default_params() else None)
    assert rec.readouts["phase"] == "reuse"
    assert 0 < rec.density < 1 and rec.rel_error > 0


# ---------------------------------------------------------------- transformers backend
def _bidirectional_llama(torch, transformers):
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    for layer in model.model.layers:  # a diffusion-style (bidirectional) stack
        layer.self_attn.is_causal = False
    return model


@pytest.mark.parametrize("name, params", [
    ("rettention", dict(sparsity=0.1, full_steps=3, refresh_period=3)),
    ("sparsed", dict(block_size=16, select=0.3, new_generation=32, whole_steps=10, skip=0.2)),  # dense 0..3
    ("adaspa", dict(block_size=16, search_steps=(3, 5), num_steps=12)),  # dense 0..2, searches 3 and 5
])
def test_stateful_method_under_the_transformers_backend_keeps_per_layer_state(tmp_path, name, params):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from spattn.integrations import hf

    model = _bidirectional_llama(torch, transformers)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 96, 64, generator=g)
    drift = [0.02 * torch.randn(1, 96, 64, generator=g) for _ in range(12)]
    embeds = [x0 + sum(drift[:t], torch.zeros_like(x0)) for t in range(12)]

    def step(t):
        with torch.no_grad():
            return model(inputs_embeds=embeds[t]).logits

    hf.use(model, method="dense", min_prefill_tokens=0)
    exact = [step(t) for t in range(12)]
    hf.use(model, method=name, min_prefill_tokens=0, **params)
    got = [step(t) for t in range(7)]
    for t in range(3):  # warm-up steps are exact attention
        torch.testing.assert_close(got[t], exact[t], atol=1e-5, rtol=1e-5)
    assert all(s.phase() == "reuse" for s in hf.method_states(model).values())  # step 7
    states = hf.method_states(model)
    assert sorted(states) == [0, 1] and all(s.step == 7 for s in states.values())
    assert states[0] is not states[1]  # one state per layer
    assert all(st["calls"] == {"sparse": 7} for st in hf.stats(model))
    hf.save_states(model, tmp_path / "states.npz")
    cont = [step(t) for t in range(7, 12)]
    hf.reset_states(model)
    assert all(s.step == 0 and not list(s) for s in hf.method_states(model).values())
    hf.load_states(model, tmp_path / "states.npz")
    assert all(s.step == 7 for s in hf.method_states(model).values())
    again = [step(t) for t in range(7, 12)]
    for a, b in zip(cont, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(cont[-1], exact[-1], atol=1e-6)  # sparse steps are not exact attention
