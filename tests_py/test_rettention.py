"""Re-ttention (spattn.methods.rettention) over multi-step runs on slowly varying inputs, against a
float64 numpy port of the official processor (cccrrrccc/Re-ttention ``module/pixart_processor.py``
and ``hunyuan_processor.py``: ``Rettention_AttnProcessor.__call__`` with ``full_attention``,
``window_attention``, ``get_attention_scores_and_ratio``,
``get_attention_scores_with_denominator_ratio``, ``create_local_attention_mask``,
``convert_binary_mask_to_additive``); state reuse equal to recomputation; save / load / reset."""

import numpy as np
import pytest

import spattn
from spattn.methods.rettention import band_half_width
from conftest import make_qkv

# float32 kernels (and rho carried in float32 across steps) against float64 references
TOL = dict(atol=5e-5, rtol=1e-4)


# ---------------------------------------------------------------- float64 reference (official port)
def ref_band(n, sparsity):
    """create_local_attention_mask(n, int(n * sparsity)): |i - j| <= window // 2, 0/1 float."""
    half = int(n * sparsity) // 2
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return ((j >= i - half) & (j <= i + half)).astype(np.float64)


def ref_scores(q, k):
    return np.einsum("xid,xjd->xij", q, k) / np.sqrt(q.shape[-1])


def ref_probs_and_ratio(q, k, mask):
    """get_attention_scores_and_ratio: softmax over all keys and masked / full denominators."""
    s = ref_scores(q, k)
    e = np.exp(s - s.max(-1, keepdims=True))
    den = e.sum(-1, keepdims=True)
    return e / den, (e * mask).sum(-1, keepdims=True) / den


def ref_window_probs(q, k, mask, ratio):
    """window_attention: additive -1e5 outside the band; with a ratio the denominator is divided
    by it (get_attention_scores_with_denominator_ratio), else a plain softmax."""
    s = ref_scores(q, k) + (1.0 - mask) * -1e5
    e = np.exp(s - s.max(-1, keepdims=True))
    den = e.sum(-1, keepdims=True)
    return e / (den / ratio) if ratio is not None else e / den


class RefProcessor:
    """One attention module's Rettention_AttnProcessor state, on (B*H, N, d) float64 tensors."""

    def __init__(self, sparsity, full_steps, is_refresh, use_ratio=True, drift=0.04):
        self.sparsity, self.full_steps, self.is_refresh = sparsity, full_steps, is_refresh
        self.use_ratio, self.drift = use_ratio, drift
        self.stepi, self.cached_ratio, self.cached_residual = 0, None, None

    def full(self, q, k, v, mask):
        p, self.cached_ratio = ref_probs_and_ratio(q, k, mask)
        return p @ v

    def window(self, q, k, v, mask):
        return ref_window_probs(q, k, mask, self.cached_ratio if self.use_ratio else None) @ v

    def __call__(self, q, k, v):
        mask = ref_band(q.shape[1], self.sparsity)
        if self.stepi < self.full_steps:
            out = self.full(q, k, v, mask)
        elif self.is_refresh(self.stepi):
            out = self.full(q, k, v, mask)
            self.cached_residual = out - self.window(q, k, v, mask)
        else:
            out = self.window(q, k, v, mask) + self.cached_residual
            self.cached_ratio = self.cached_ratio + self.drift
        self.stepi += 1
        return out


def to_bh(x, G=1):
    """(B, H, N, d) -> (B*H*G, N, d) float64, kv heads repeated to the query heads (grouped)."""
    x = np.repeat(np.asarray(x, np.float64), G, axis=1)
    return x.reshape(-1, *x.shape[2:])


def run_both(m, ref, steps):
    outs = []
    for t, (q, k, v) in enumerate(steps):
        G = q.shape[1] // k.shape[1]
        got = m(q, k, v)
        want = ref(to_bh(q), to_bh(k, G), to_bh(v, G)).reshape(got.shape)
        outs.append((t, m.last_info["phase"], got, want))
    return outs


PRESETS = {  # (official processor, steps): full steps and refresh rule as in the official file
    "pixart": (dict(full_steps=5, refresh_period=5), 5, lambda s: s in [5, 10, 15], 20),
    "hunyuan": (dict(full_steps=10, refresh_period=5), 10, lambda s: s % 5 == 0, 24),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("B, Hq, Hkv, N, D, sparsity", [
    (1, 4, 2, 97, 64, 0.1), (2, 2, 2, 130, 80, 0.0625), (1, 2, 1, 200, 128, 0.03125)])
def test_multi_step_run_matches_the_official_processor(preset, B, Hq, Hkv, N, D, sparsity):
    params, full_steps, is_refresh, n_steps = PRESETS[preset]
    w = spattn.synthetic.structured_qkv(B=B, Hq=Hq, Hkv=Hkv, N=N, D=D, seed=3)
    steps = spattn.synthetic.denoising_steps(w, n_steps, drift=0.02, seed=1)
    m = spattn.methods.get("rettention", sparsity=sparsity, **params)
    ref = RefProcessor(sparsity, full_steps, is_refresh)
    phases = []
    for t, phase, got, want in run_both(m, ref, steps):
        phases.append(phase)
        np.testing.assert_allclose(got, want, err_msg=f"step {t} ({phase})", **TOL)
    assert phases == [("dense" if s < full_steps else "search" if is_refresh(s) else "reuse")
                      for s in range(n_steps)]
    assert m.state.step == n_steps
    # the state is the official one: rho after the last step (drift included), per (b, h, query)
    np.testing.assert_allclose(m.state["rho"].reshape(-1), ref.cached_ratio.reshape(-1), atol=1e-5, rtol=1e-5)


def test_ablation_without_ratio_matches_the_official_processor():
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=111, D=64, seed=5)
    steps = spattn.synthetic.denoising_steps(w, 12, drift=0.03, seed=2)
    m = spattn.methods.get("rettention", sparsity=0.1, use_ratio=False)
    ref = RefProcessor(0.1, 5, lambda s: s % 5 == 0, use_ratio=False)
    for t, phase, got, want in run_both(m, ref, steps):
        np.testing.assert_allclose(got, want, err_msg=f"step {t} ({phase})", **TOL)


def test_band_is_the_official_mask():
    for n, sp in [(97, 0.1), (200, 0.03125), (17, 0.0625), (1, 0.03125), (1000, 0.03125)]:
        q, k, _ = make_qkv(1, 2, 1, n, n, 16)
        wm = spattn.methods.get("rettention", sparsity=sp).estimate(q, k, causal=False)
        assert (wm.left, wm.right, wm.sinks) == (band_half_width(n, sp),) * 2 + (0,)
        np.testing.assert_array_equal(wm.to_dense(n, causal=False)[0, 0], ref_band(n, sp).astype(bool))


def test_reuse_equals_recomputation_when_inputs_and_ratio_stay():
    """rho * O_band + C is O_full on the refresh step's inputs: with inputs that do not change and
    no drift, every reuse step equals exact attention (the state is a faithful cache)."""
    q, k, v = tuple(spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=150, D=64, seed=4))[:3]
    m = spattn.methods.get("rettention", sparsity=0.05, full_steps=2, refresh_period=4, ratio_drift=0.0)
    exact = spattn.attention(q, k, v)
    for _ in range(9):
        out = m(q, k, v)
        np.testing.assert_allclose(out, exact, atol=2e-5, rtol=1e-5, err_msg=m.last_info["phase"])
    # and the refresh on the same inputs reproduces the state exactly
    st = m.state.copy()
    m.state.step = 8  # a refresh step
    m(q, k, v)
    np.testing.assert_array_equal(m.state["rho"], st["rho"])
    np.testing.assert_array_equal(m.state["correction"], st["correction"])


def test_rho_is_the_in_band_mass_and_drifts_by_the_official_constant():
    q, k, v = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=120, D=64, seed=6))[:3]
    m = spattn.methods.get("rettention", sparsity=0.1, full_steps=1, refresh_period=0)
    m(q, k, v)  # dense
    m(q, k, v)  # the refresh (first step after the warm-up)
    p, ratio = ref_probs_and_ratio(to_bh(q), to_bh(k, 2), ref_band(120, 0.1))
    np.testing.assert_allclose(m.state["rho"].reshape(-1), ratio.reshape(-1), atol=1e-6, rtol=1e-5)
    for i in range(1, 4):
        out, lse = m(q, k, v, return_lse=True)
        assert m.last_info["phase"] == "reuse"
        np.testing.assert_allclose(m.state["rho"].reshape(-1), ratio.reshape(-1) + 0.04 * i, atol=1e-5, rtol=1e-5)
    # the returned lse of a reuse step: the band's lse minus log of the ratio it used
    _, lse_band = spattn.window_attention(q, k, v, left=6, right=6, return_lse=True)
    np.testing.assert_allclose(lse, lse_band - np.log(ratio.reshape(lse.shape) + 0.04 * 2), atol=1e-5, rtol=1e-5)


def test_save_load_continues_the_run_exactly(tmp_path):
    w = spattn.synthetic.structured_qkv(B=1, Hq=4, Hkv=2, N=101, D=64, seed=7)
    steps = spattn.synthetic.denoising_steps(w, 12, drift=0.02, seed=3)
    a = spattn.methods.get("rettention", sparsity=0.1)
    for q, k, v in steps[:7]:
        a(q, k, v)
    path = tmp_path / "rettention_state.npz"
    a.state.save(path)
    b = spattn.methods.get("rettention", sparsity=0.1)
    b.state.restore(spattn.MethodState.load(path))
    assert b.state.step == 7 and set(b.state) == {"rho", "correction"}
    for q, k, v in steps[7:]:
        np.testing.assert_array_equal(a(q, k, v), b(q, k, v))


def test_reset_and_a_new_shape_start_a_new_run():
    q, k, v = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=64, D=32, seed=8))[:3]
    m = spattn.methods.get("rettention")
    for _ in range(7):
        m(q, k, v)
    assert m.state.step == 7 and "rho" in m.state
    m.reset()
    assert m.state.step == 0 and not list(m.state)
    for _ in range(7):
        m(q, k, v)
    q2, k2, v2 = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=80, D=32, seed=8))[:3]
    np.testing.assert_array_equal(m(q2, k2, v2), spattn.attention(q2, k2, v2))  # step 0 of a new run
    assert m.state.step == 1 and "rho" not in m.state
    m.set_params(full_steps=3)  # new parameters: a new run too
    assert m.state.step == 0 and m.state.schedule.dense_steps == 3


def test_schedule_as_data():
    m = spattn.methods.get("rettention")
    assert m.schedule().phases(12) == ("dense",) * 5 + ("search",) + ("reuse",) * 4 + ("search", "reuse")
    odd = spattn.methods.get("rettention", full_steps=3, refresh_period=5)  # the official code fails here
    assert odd.schedule().phases(7) == ("dense",) * 3 + ("search", "reuse", "search", "reuse")
    assert spattn.Schedule.from_dict(m.schedule().to_dict()) == m.schedule()


def test_bad_input_names_the_argument():
    q, k, v = tuple(spattn.synthetic.structured_qkv(B=1, Hq=2, Hkv=1, N=64, D=32, seed=0))[:3]
    with pytest.raises(ValueError, match="sparsity"):
        spattn.methods.get("rettention", sparsity=1.5)
    with pytest.raises(TypeError, match="use_ratio"):
        spattn.methods.get("rettention", use_ratio="yes")
    with pytest.raises(TypeError, match="full_steps"):
        spattn.methods.get("rettention", full_steps=2.5)
    with pytest.raises(ValueError, match="full_steps and refresh_period"):
        spattn.methods.get("rettention", full_steps=0, refresh_period=0)
    m = spattn.methods.get("rettention")
    with pytest.raises(ValueError, match="causal"):
        m(q, k, v, causal=True)
    with pytest.raises(ValueError, match="Nq=1, Nk=64"):
        m(q[:, :, :1], k, v)
    assert m.state.step == 0  # refused calls are no steps
