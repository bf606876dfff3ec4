"""The registry (spattn.methods) and the declared capabilities (spattn.methods.base): every
registered method declares them, runs where they say it can and refuses where they say it
cannot. Tests here parametrise over the registry and filter on capabilities, never on names."""

import json

import numpy as np
import pytest

import spattn
from spattn.methods import Capabilities, Method, register
from conftest import make_qkv

ALL = spattn.methods.available()
CAPS = {name: spattn.methods.capabilities(name) for name in ALL}


def test_every_registered_method_is_one_module_declaring_its_capabilities():
    assert len(ALL) >= 6
    assert spattn.methods.METHOD_MODULES == ALL  # each module of the package registers its method
    for name in ALL:
        cls = type(spattn.methods.get(name))
        assert cls.__module__ == f"spattn.methods.{name}"
        assert isinstance(cls.__dict__.get("capabilities"), Capabilities), name  # declared, not inherited
        assert cls.paper and cls.pattern and cls.__doc__


def test_register_refuses_duplicates_and_undeclared_capabilities():
    class Again(Method):
        name = ALL[0]
        capabilities = Capabilities()

    class Undeclared(Method):
        name = "undeclared_capabilities"

    with pytest.raises(ValueError, match="already registered"):
        register(Again)
    with pytest.raises(TypeError, match="capabilities"):
        register(Undeclared)
    assert spattn.methods.available() == ALL


@pytest.mark.parametrize("kwargs, msg", [
    (dict(mask_format="dense"), "mask_format"),
    (dict(gqa_layouts=("interleaved",)), "gqa_layouts"),
    (dict(needs_fit=True), "needs_fit requires fittable"),
    (dict(causal=False, noncausal=False), "causal"),
    (dict(prefill=False, chunked=False, decode=False), "prefill"),
])
def test_inconsistent_capabilities_are_refused(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Capabilities(**kwargs)


def test_supported_lengths():
    causal_prefill = Capabilities(noncausal=False, chunked=False)
    assert causal_prefill.supports(causal=True, q_len=5, kv_len=5)
    assert causal_prefill.supports(causal=True, q_len=1, kv_len=9)
    assert not causal_prefill.supports(causal=True, q_len=3, kv_len=9)
    assert not causal_prefill.supports(causal=False, q_len=5, kv_len=5)
    assert causal_prefill.lengths_text() == "Nq == Nk (prefill) or Nq == 1 (decode)"
    assert Capabilities().supports(causal=False, q_len=3, kv_len=9)
    assert not Capabilities(decode=False, chunked=False).supports(causal=True, q_len=1, kv_len=9)


def test_the_registry_holds_an_exact_baseline():
    assert any(c.exact and c.mask_format == "none" for c in CAPS.values())


FORMATS = {"block": spattn.BlockMask, "none": spattn.BlockMask, "token": spattn.TokenIndices,
           "vertical_slash": spattn.VerticalSlashMask, "window": spattn.WindowMask,
           "permuted": spattn.PermutedBlockMask, "clustered": spattn.ClusteredMask,
           "row_block": spattn.RowBlockIndices}


def test_every_mask_format_has_a_class():
    from spattn.methods.base import MASK_FORMATS
    assert set(FORMATS) == set(MASK_FORMATS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("causal", [False, True])
def test_every_method_runs_and_returns_valid_mask(name, causal):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=700, D=64, seed=1)
    m = spattn.methods.get(name)
    if not (m.capabilities.causal if causal else m.capabilities.noncausal):
        with pytest.raises(ValueError, match="causal"):
            m.estimate(w.q, w.k, causal=causal)
        return
    mask = m.estimate(w.q, w.k, causal=causal)
    assert isinstance(mask, tuple(FORMATS.values()))
    mask.check_against(1, 4, 700, 700)
    snapshot = None
    if m.capabilities.stateful:  # calls are steps: check its first reuse (sparse) step, state built on w
        assert m.warm_up(w.q, w.k, w.v, causal=causal) > 0
        snapshot = m.state.copy()
    out = m(w.q, w.k, w.v, causal=causal)
    assert out.shape == w.q.shape and np.isfinite(out).all()
    if snapshot is not None:
        m.state.restore(snapshot)  # the next call below runs the same step again
    if m.capabilities.own_output:  # its own output step: the recorded mask is the call's, and the output
        _check_output_reads_only_the_mask(m, w, mask, out, causal)  # reads no value outside the mask's support
    elif m.capabilities.exact:
        np.testing.assert_array_equal(out, spattn.attention(w.q, w.k, w.v, causal=causal))
    elif isinstance(mask, spattn.BlockMask):  # the method is its mask run by the kernel
        ref = spattn.block_sparse_attention(w.q, w.k, w.v, mask, causal=causal)
        np.testing.assert_array_equal(out, ref)
    elif isinstance(mask, spattn.TokenIndices):
        ref = spattn.token_sparse_attention(w.q, w.k, w.v, mask, causal=causal)
        if type(m).__call__ is spattn.methods.Method.__call__:
            np.testing.assert_array_equal(out, ref)
        else:  # a method with its own kernel for the pattern (natten: na1d in place): same keys, other rounding
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    else:  # structured patterns run on their own kernels
        ref = spattn.sparse_attention(w.q, w.k, w.v, mask, causal=causal)
        if name == "sener_arrow":  # its global row 0 attends every key on top of the mask (LogN-scaled)
            np.testing.assert_array_equal(out[:, :, 1:], ref[:, :, 1:])
        else:
            np.testing.assert_array_equal(out, ref)
    d = mask.density(causal=causal)
    assert np.all((d > 0) & (d <= 1))
    assert repr(m).startswith("spattn.methods.get(")


def _dense_of(mask, Nq, causal):
    if isinstance(mask, spattn.BlockMask):
        return mask.to_dense(causal=causal)
    return mask.to_dense(Nq, causal=causal)


def _check_output_reads_only_the_mask(m, w, mask, out, causal):
    """``last_info["mask"]``, when recorded, is the mask of the call; and, unless the method reads
    values through summaries of keys outside its mask (``reads_outside_mask``: Combiner's span
    summaries), values of keys that no query of a kv head's group selects never change the output."""
    B, Hq, Nq, _ = w.q.shape
    Hkv, Nk = w.k.shape[1], w.k.shape[2]
    dense = _dense_of(mask, Nq, causal)
    if "mask" in m.last_info:
        np.testing.assert_array_equal(_dense_of(m.last_info["mask"], Nq, causal), dense)
    if getattr(m, "reads_outside_mask", False):
        return
    used = np.broadcast_to(dense, (B, Hq, Nq, Nk)).reshape(B, Hkv, Hq // Hkv, Nq, Nk).any(axis=(2, 3))
    v2 = w.v.copy()
    v2[~used] = 1e3
    np.testing.assert_array_equal(m(w.q, w.k, v2, causal=causal), out)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("nq, nk", [(300, 300), (100, 300), (1, 300)], ids=["prefill", "chunked", "decode"])
def test_declared_lengths_run_and_the_others_are_refused(name, nq, nk):
    caps = CAPS[name]
    causal = caps.causal
    q, k, v = make_qkv(1, 4, 2, nq, nk, 64, seed=2)
    m = spattn.methods.get(name)
    if not caps.supports_lengths(nq, nk):
        with pytest.raises(ValueError, match=r"Nq=\d+, Nk=\d+"):
            m.estimate(q, k, causal=causal)
        return
    mask = m.estimate(q, k, causal=causal)
    mask.check_against(1, 4, nq, nk)
    out = m(q, k, v, causal=causal)
    assert out.shape == q.shape and np.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_mask_format_is_what_estimate_returns(name):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=300, D=64, seed=3)
    mask = spattn.methods.get(name).estimate(w.q, w.k, causal=CAPS[name].causal)
    fmt = CAPS[name].mask_format
    assert isinstance(mask, FORMATS[fmt])
    if fmt == "none":  # nothing is skipped
        assert mask.blocks.all()


@pytest.mark.parametrize("name", ALL)
def test_gqa_layouts_match_the_parameters(name):
    interleaved = "interleaved" in CAPS[name].gqa_layouts
    assert interleaved == ("gqa_interleave" in spattn.methods.get(name).default_params())
    if interleaved:
        w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=300, D=64, seed=4)
        m = spattn.methods.get(name, gqa_interleave=True)
        out = m(w.q, w.k, w.v, causal=CAPS[name].causal)
        assert out.shape == w.q.shape and np.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_parameters_come_from_one_hook(name):
    cls = type(spattn.methods.get(name))
    defaults = cls.default_params()
    assert spattn.methods.get(name).params == defaults
    defaults.clear()  # a fresh dict each time
    assert cls.default_params()
    with pytest.raises(TypeError, match="no_such_param"):
        spattn.methods.get(name, no_such_param=1)


def test_a_refused_parameter_leaves_the_method_unchanged():
    m = spattn.methods.get("oracle_topk", gamma=0.5)
    with pytest.raises(ValueError, match="gamma"):
        m.set_params(gamma=2.0)
    assert m.params["gamma"] == 0.5
    assert m.set_params(block_size=32).params == {"gamma": 0.5, "block_size": 32}


@pytest.mark.parametrize("name", ALL)
def test_fittable_methods_fit_and_the_others_refuse(name):
    m = spattn.methods.get(name)
    n_in = 3 if CAPS[name].value_inputs else 2  # a method whose estimator reads V trains on (q, k, v)
    data = [tuple(spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=256, D=64, seed=s))[:n_in] for s in (1, 2)]
    if not CAPS[name].fittable:
        with pytest.raises(TypeError, match="no learned part"):
            m.fit(data)
        assert not m.fitted
        return
    assert not m.fitted
    res = m.fit(data, steps=3, progress=False)
    assert m.fitted and len(res.losses) == 3 and np.isfinite(res.losses).all()
    assert json.dumps(m.describe_params())  # a learned object is shown by its type name
    assert f"<{type(m.params[m.learned_param]).__name__}>" in m.describe_params().values()
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=256, D=64, seed=0)
    m.estimate(w.q, w.k, causal=CAPS[name].causal,  # a fitted non-causal-only method (Sparsifiner) runs too
               **({"v": w.v} if CAPS[name].value_inputs else {})).check_against(1, 4, 256, 256)


@pytest.mark.parametrize("name", ALL)
def test_prepare_fits_exactly_the_methods_that_need_it(name):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=256, D=64, seed=0)
    m = spattn.methods.get(name)
    assert m.prepare(w, steps=2) is m
    assert m.fitted == CAPS[name].needs_fit
    if CAPS[name].needs_fit:
        with pytest.raises(ValueError, match="workload's seed"):
            spattn.methods.get(name).prepare(w, seeds=(0, 1), steps=2)


@pytest.mark.parametrize("name", ALL)
def test_displays_are_json_ready(name):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=300, D=64, seed=5)
    m = spattn.methods.get(name)
    m.estimate(w.q, w.k, causal=CAPS[name].causal)
    json.dumps(m.describe_params())
    json.dumps(m.readouts())


@pytest.mark.parametrize("name", spattn.methods.available())
def test_parameters_and_their_checks_come_from_the_cpp_struct(name):
    """The C++ parameter struct is the only place a default lives and the only range check."""
    cls = type(spattn.methods.get(name))
    m = spattn.methods.get(name)
    if cls.params_struct is None:
        assert set(m.params) == set(cls.extra_defaults)
        return
    cpp = cls.params_struct()
    for field in cls.params_struct.field_names():
        assert m.params[field] == getattr(cpp, field)
        assert getattr(cls.params_struct, field).__doc__  # documented once, in the C++ header
    assert set(m.params) == set(cls.params_struct.field_names()) | set(cls.extra_defaults)
    assert m.cparams == cpp
    # an out-of-range int raises the C++ ValueError naming the method and the field
    int_fields = [f for f in cls.params_struct.field_names() if isinstance(getattr(cpp, f), int)
                  and not isinstance(getattr(cpp, f), bool) and f != "seed"]
    for field in int_fields:
        with pytest.raises(ValueError, match=f"{name}: {field} must be >="):
            spattn.methods.get(name, **{field: -5})
        with pytest.raises(TypeError, match=f"{name}: {field} must be an int"):
            spattn.methods.get(name, **{field: 2 ** 31})
    # a failed override leaves the method as it was
    before = dict(m.params)
    with pytest.raises((ValueError, TypeError)):
        m.set_params(**{cls.params_struct.field_names()[0]: "not a number"})
    assert m.params == before


GEOMETRY = [n for n in ALL if CAPS[n].geometry]
CHANNEL = [n for n in ALL if CAPS[n].channel_attention]


@pytest.mark.parametrize("name", GEOMETRY)
def test_geometry_methods_take_points_and_ignore_qk_for_the_pattern(name):
    """capabilities.geometry: the pattern comes from ``params["points"]`` (a default layout when
    None), the same for every head and for any q / k."""
    N = 150
    q, k, v = make_qkv(1, 4, 2, N, N, 64, seed=7)
    q2, k2, _ = make_qkv(1, 4, 2, N, N, 64, seed=8)
    pts = np.random.default_rng(0).random((N, 3)).astype(np.float32)
    m = spattn.methods.get(name, points=pts)
    mask = m.estimate(q, k, causal=False)
    np.testing.assert_array_equal(mask.to_dense(N), m.estimate(q2, k2, causal=False).to_dense(N))
    dense = mask.to_dense(N)
    assert (dense == dense[:, :1]).all()
    assert not np.array_equal(dense, spattn.methods.get(name).estimate(q, k, causal=False).to_dense(N))
    out = m(q, k, v, causal=False)
    assert out.shape == q.shape and np.isfinite(out).all()
    with pytest.raises(ValueError, match="points"):
        spattn.methods.get(name, points=pts[:-1]).estimate(q, k, causal=False)


@pytest.mark.parametrize("name", CHANNEL)
def test_channel_attention_methods_read_every_key_and_need_dv_equal_d(name):
    """capabilities.channel_attention: a D x D map over all tokens' q and k (no token skipped,
    the full mask), applied to each token's v (out is linear in v), refusing Dv != D."""
    N = 120
    q, k, v = make_qkv(1, 4, 2, N, N, 64, seed=9)
    m = spattn.methods.get(name)
    assert m.estimate(q, k, causal=False).blocks.all()
    out = m(q, k, v, causal=False)
    np.testing.assert_allclose(m(q, k, 2 * v, causal=False), 2 * out, rtol=1e-5, atol=1e-6)
    k2 = k.copy()
    k2[:, :, -1] += 1.0
    assert not np.array_equal(m(q, k2, v, causal=False)[:, :, :1], out[:, :, :1])  # the first token reads the last key
    _, _, v_small = make_qkv(1, 4, 2, N, N, 64, Dv=32, seed=9)
    with pytest.raises(ValueError, match="Dv"):
        m(q, k, v_small, causal=False)
