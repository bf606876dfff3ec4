"""SEA against float64 transcriptions of the official code (gmlwns2000/sea-attention; each
reference names the official function it transcribes): the per-query grids, the causal_batch
budget and both expansions, the learned estimator (Performer pass, encoder, CNN decoder) against a
torch float64 transcription of PerlinAttention's modules, the gated output, the training loss and
its gradients, the .npz round trip, the training-free option and bad inputs.

Tolerances: float32 paths against float64 references, atol 2e-5 / rtol 1e-4 unless stated."""

import math
import os

import numpy as np
import pytest

import spattn
from spattn.methods import sea as sea_mod
from spattn.methods.sea import orthogonal_features
from conftest import make_qkv, ref_probs

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------- official grids
def official_accuracy_columns(L, W):
    """resize_from_m_to_t (ops/kernels/resize_m_to_t.py) in torch float32 as the official code runs
    it: token_index_x = floor(((mask_cs - 1) + 0.5) / token_length * T_M - 1e-4) of the L visible
    keys, clamped to [0, T_M]; index W means 'no column'."""
    mask_cs = torch.ones(L, dtype=torch.float32).cumsum(-1)
    token_length = mask_cs[-1:]
    idx = torch.floor(((mask_cs - 1) + 0.5) / token_length * W - 1e-4).to(torch.long)
    return torch.clamp(idx, 0, W).numpy()


def official_speed_bounds(L, W):
    """scan_col (ops/kernels/causal_resize_m_to_t.py): scales = target_width / original_width
    (float32), v_start/v_end = tl.math.round(b * scales), CUDA round = half away from zero
    (half up for these non-negative values; applied exactly to the float32 product)."""
    scales = torch.tensor([L]) / W
    x = (torch.arange(W + 1) * scales).numpy().astype(np.float64)
    return np.floor(x + 0.5).astype(int)


def official_keep(probs_row, H, W, L, k):
    """PerlinAttention.forward mask, k_flatten_dim 'causal_batch': per_item_top_k =
    clamp_min(round(H * (k * T_M / L)), 1) (torch.round, half to even); entries ranked by the
    estimated probabilities of all heads (ties: lower flat index); alive = rank < per_item_top_k."""
    budget = max(1.0, float(np.round(H * (k * W / L))))
    order = np.argsort(-probs_row.ravel(), kind="stable")
    keep = np.zeros(H * W, bool)
    keep[order[:int(min(budget, H * W))]] = True
    return keep.reshape(H, W)


def official_keys(keep, L, W, k, speed):
    """Keys per head: accuracy path every key whose column is kept (resize_from_m_to_t); speed
    path __scan_col_4_compute: n = min(v_end - v_start, k) keys v_end - 1 - floor(i (v_end - v_start) / n)."""
    H = keep.shape[0]
    out = []
    for h in range(H):
        if not speed:
            cols = official_accuracy_columns(L, W)
            out.append(set(np.nonzero((cols < W) & keep[h, np.minimum(cols, W - 1)])[0].tolist()))
        else:
            bd = official_speed_bounds(L, W)
            s = set()
            for c in np.nonzero(keep[h])[0]:
                size = bd[c + 1] - bd[c]
                n = min(size, k)
                s.update(int(bd[c + 1] - 1 - math.floor(i * size / n)) for i in range(n))
            out.append(s)
    return out


@pytest.mark.parametrize("L,W", [(1, 8), (5, 8), (10, 4), (6, 4), (127, 128), (1000, 128), (16384, 128),
                                 (16383, 128), (777, 32), (10001, 128), (10003, 16), (12345, 256)])
def test_accuracy_grid_matches_the_official_gather(L, W):
    """L = 10001, 10003: keys exactly at the 1e-4 offset, where float32 (official) and exact
    arithmetic put one key in different columns; the official float32 result is the reference."""
    cols = official_accuracy_columns(L, W)
    starts = sea_mod.accuracy_starts(np.array([L]), W)[0]
    expect = [int(np.searchsorted(cols, c, side="left")) for c in range(W + 1)]
    np.testing.assert_array_equal(starts, expect)
    np.testing.assert_array_equal(sea_mod.column_counts(L, L, W, True)[-1], np.bincount(cols, minlength=W + 1)[:W])


def test_speed_grid_rounds_half_up_at_exact_ties():
    # L = 10, W = 4: c L / W = 2.5 and 7.5 are ties; half up gives 3 and 8 (half to even: 2 and 8).
    H, W, L = 1, 4, 10
    probs = np.zeros((1, H, 1, W), np.float32)
    probs[..., 1] = 1.0  # column 1 ranks first
    ti = sea_mod.select(probs, L, k=1, causal=True, expansion="speed")  # budget max(1, round(0.4)) = 1
    keys = ti.indices[0, 0, 0][ti.indices[0, 0, 0] >= 0]
    lo, hi = official_speed_bounds(L, W)[1:3]
    assert (lo, hi) == (3, 5)
    np.testing.assert_array_equal(keys, [4])  # k = 1 key: v_end - 1 - floor(0) = 4
    ti = sea_mod.select(probs, L, k=2, causal=True, expansion="speed")  # budget round(0.8) = 1
    np.testing.assert_array_equal(ti.indices[0, 0, 0][ti.indices[0, 0, 0] >= 0], [3, 4])


@pytest.mark.parametrize("H", [1, 2, 4, 8])
def test_budget_and_expansion_at_long_prefix(H):
    """N 16384, W 128, k 64 (L > k W): the last query keeps budget = max(1, round(H / 2)) columns;
    the accuracy path attends budget x 128 keys (every key of each kept column), the speed path 64
    per column spread evenly (every second key from the column's end). Tested on the last query
    only (the selection of a row reads only that row's estimate)."""
    N, W, k = 16384, 128, 64
    rng = np.random.default_rng(H)
    probs = rng.dirichlet(np.ones(W), size=(1, H, 1)).astype(np.float32)
    budget = max(1, int(np.round(H * k * W / N)))
    for speed in (False, True):
        ti = sea_mod.select(probs, N, k=k, causal=True, expansion="speed" if speed else "accuracy")
        used = (ti.indices[0, :, 0] >= 0).sum()
        assert used == budget * (64 if speed else 128)
        keep = official_keep(probs[0, :, 0].astype(np.float64), H, W, N, k)
        expect = official_keys(keep, N, W, k, speed)
        for h in range(H):
            row = ti.indices[0, h, 0]
            assert set(row[row >= 0].tolist()) == expect[h]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("speed", [False, True])
@pytest.mark.parametrize("dims", [(1, 3, 45, 45, 8, 3), (2, 2, 30, 77, 16, 5), (1, 4, 1, 301, 32, 2),
                                  (1, 2, 1, 10001, 128, 2), (1, 2, 7, 1237, 24, 5)])
def test_selection_matches_official_transcription(dims, speed, causal):
    B, H, Nq, Nk, W, k = dims
    rng = np.random.default_rng(Nq + Nk)
    probs = rng.dirichlet(np.ones(W), size=(B, H, Nq)).astype(np.float32)
    probs[0, 0, :, 2] = probs[0, 0, :, 3]  # exact ties between columns
    ti = sea_mod.select(probs, Nk, k=k, causal=causal, expansion="speed" if speed else "accuracy")
    for b in range(B):
        for i in range(Nq):
            L = min(max(i + Nk - Nq + 1, 0), Nk) if causal else Nk
            if L == 0:
                assert np.all(ti.indices[b, :, i] < 0)
                continue
            expect = official_keys(official_keep(probs[b, :, i].astype(np.float64), H, W, L, k), L, W, k, speed)
            for h in range(H):
                row = ti.indices[b, h, i]
                assert set(row[row >= 0].tolist()) == expect[h], (b, h, i)


# ----------------------------------------------------------------------------- learned estimator
def torch_reference(weights, q, k, v, causal, scale):
    """Float64 torch transcription of PerlinAttention.forward's estimator (mlp predictor):
    performer_pytorch 1.1.4 FastAttention (generalized_kernel + causal_linear_attention_noncuda with
    its 1e-6 on the key cumsum, or softmax_kernel with one key stabiliser per (b, h) + linear_attention), attention_predictor_enc, dec_row + ChannelSplit(2),
    attention_predictor_cnn (CausalConv2d with its 5x3 masked kernel and padding ((k-1) d, p),
    UpsampleFP32 nearest, KeepRes area interpolate), attention_predictor_dec_scaler."""
    F_ = torch.nn.functional
    t = {n: torch.tensor(np.asarray(a, np.float64)) for n, a in weights.items()}
    q, k, v = (torch.tensor(np.asarray(x, np.float64)) for x in (q, k, v))
    B, H, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    g = H // Hkv
    k = k.repeat_interleave(g, 1)
    v = v.repeat_interleave(g, 1)
    vals = torch.cat([t["pos"][:Nk].expand(B, H, Nk, D), v], -1)
    proj = t["projection"]
    if causal:
        qq = q * scale
        fq = torch.relu((D ** -0.25 * qq) @ proj.T) + 1e-3
        fk = torch.relu((D ** -0.25 * k) @ proj.T) + 1e-3
        A = torch.einsum("bhif,bhjf->bhij", fq, fk)
        i = torch.arange(Nq)[:, None] + Nk - Nq
        A = A * (torch.arange(Nk)[None, :] <= i)
    else:
        def sk(x, is_query):
            dd = (D ** -0.25 * x) @ proj.T
            diag = (x ** 2).sum(-1, keepdim=True) / 2 * D ** -0.5
            m = dd.amax(-1, keepdim=True) if is_query else dd.amax((-1, -2), keepdim=True)  # per (b, h)
            return proj.shape[0] ** -0.5 * (torch.exp(dd - diag - m) + 1e-4)
        A = torch.einsum("bhif,bhjf->bhij", sk(q, True), sk(k, False))
    den = A.sum(-1, keepdim=True)
    if causal:  # causal_linear_attention_noncuda: D_inv = 1 / (fq . (k_cumsum + 1e-6))
        den = den + 1e-6 * fq.sum(-1, keepdim=True)
    perf = (A @ vals) / den
    x = torch.cat([perf, v[:, :, Nk - Nq:]], -1)
    e = F_.gelu(F_.layer_norm(x @ t["enc_w"].T + t["enc_b"], (2 * D,), t["enc_ln_w"], t["enc_ln_b"]))
    gates = e @ t["gate_w"].T + t["gate_b"]
    r = e @ t["row_w"].T + t["row_b"]
    W4 = r.shape[-1] // 2
    r = r.view(B, H, Nq, 2, W4).permute(0, 1, 3, 2, 4).reshape(B, 2 * H, Nq, W4)
    y = F_.layer_norm(r, (W4,), t["ln1_w"], t["ln1_b"])

    def cconv(x, w, b):
        full = torch.zeros(w.shape[0], w.shape[1], 5, 3, dtype=torch.float64)
        full[:, :, :3] = w
        return F_.conv2d(x, full, b, padding=(4, 2), dilation=2)

    y = torch.relu(cconv(y, t["conv1_w"], t["conv1_b"]))
    y = torch.relu(cconv(y, t["conv2_w"], t["conv2_b"]))
    y = F_.interpolate(y, scale_factor=(1, 4), mode="nearest")
    y = F_.conv2d(y, t["conv4_w"][:, :, None, None], t["conv4_b"], padding=(0, 1))
    y = F_.interpolate(y, (Nq, 4 * W4), mode="area")
    z = F_.layer_norm(y, (4 * W4,), t["ln2_w"], t["ln2_b"])
    return z.numpy(), gates.numpy()


def rand_weights(H, D, W, P, seed=0, F=None):
    w = sea_mod.init_weights(H, D, width=W, max_positions=P, nb_features=F, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for n in ("enc_ln_w", "enc_ln_b", "ln1_w", "ln1_b", "ln2_w", "ln2_b"):  # off their identity init
        w[n] = w[n] + rng.normal(0, 0.2, w[n].shape)
    return w


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dims", [(1, 2, 1, 37, 37, 64, 16), (2, 4, 2, 29, 45, 80, 8), (1, 2, 2, 40, 40, 128, 32)])
def test_estimator_matches_torch_transcription_of_the_official_modules(dims, causal):
    B, H, Hkv, Nq, Nk, D, W = dims
    q, k, v = make_qkv(B, H, Hkv, Nq, Nk, D, seed=D)
    w = rand_weights(H, D, W, 64, seed=1)
    z, gates, _ = sea_mod.estimator_forward(w, q, k, v, causal=causal, scale=D ** -0.5)
    zr, gr = torch_reference(w, q, k, v, causal, D ** -0.5)
    np.testing.assert_allclose(z, zr, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gates, gr, rtol=1e-9, atol=1e-9)
    # The method's float32 path gives the same estimate to float32 rounding.
    m = spattn.methods.get("sea", k=4, compressed_width=W, weights=w)
    m.estimate(q, k, v=v, causal=causal)
    np.testing.assert_allclose(m.last_info["estimate"], sea_mod.softmax(zr), atol=2e-5)


def dense_selected_reference(q, k, v, ti, causal, scale):
    """Float64 softmax attention over exactly the selected keys (0 for empty rows)."""
    p, _ = ref_probs(q, k, causal=causal, scale=scale, allowed=ti.to_dense(q.shape[2]))
    p = np.nan_to_num(p)
    G = q.shape[1] // k.shape[1]
    return np.einsum("bhij,bhjd->bhid", p, np.repeat(v.astype(np.float64), G, axis=1))


@pytest.mark.parametrize("expansion", ["accuracy", "speed"])
@pytest.mark.parametrize("dims", [(1, 4, 2, 63, 63, 64, 8, 3), (2, 2, 1, 20, 51, 80, 16, 4)])
def test_output_is_gated_attention_over_the_selected_keys(dims, expansion):
    B, H, Hkv, Nq, Nk, D, W, kk = dims
    q, k, v = make_qkv(B, H, Hkv, Nq, Nk, D, seed=5)
    w = rand_weights(H, D, W, 64, seed=3)
    m = spattn.methods.get("sea", k=kk, compressed_width=W, weights=w, expansion=expansion)
    out = m(q, k, v, causal=True)
    ti = m.last_info["mask"]
    sparse = dense_selected_reference(q, k, v, ti, True, None)
    gates = m.last_info["gates"].astype(np.float64)
    s0, s1 = 1 / (1 + np.exp(-gates[..., :1])), 1 / (1 + np.exp(-gates[..., 1:]))
    G = H // Hkv
    vv = np.repeat(v.astype(np.float64), G, axis=1)
    L = np.arange(Nq) + Nk - Nq + 1
    mean = np.cumsum(vv, 2)[:, :, L - 1] / L[:, None]
    np.testing.assert_allclose(out, s1 * s0 * sparse + (1 - s1) * mean, atol=2e-5, rtol=1e-4)


def test_starved_head_outputs_the_running_mean_share():
    """All logits equal (ln2 weight 0): the ties go to head 0's columns, so with a budget below
    W the other heads keep nothing and output (1 - sigmoid(s1)) * running mean of V."""
    B, H, N, D, W, kk = 1, 2, 64, 64, 8, 2
    q, k, v = make_qkv(B, H, 1, N, N, D, seed=9)
    w = rand_weights(H, D, W, 64, seed=4)
    w["ln2_w"][:] = 0.0
    w["ln2_b"][:] = 0.0
    m = spattn.methods.get("sea", k=kk, compressed_width=W, weights=w)
    out = m(q, k, v, causal=True)
    ti = m.last_info["mask"]
    starved = (ti.indices[0, 1] < 0).all(-1)
    assert starved.sum() > N // 2
    s1 = 1 / (1 + np.exp(-m.last_info["gates"][0, 1, :, 1:].astype(np.float64)))
    mean = np.cumsum(v[0, 0].astype(np.float64), 0) / np.arange(1, N + 1)[:, None]
    np.testing.assert_allclose(out[0, 1][starved], ((1 - s1) * mean)[starved], atol=2e-6)
    assert np.all(np.abs(out[0, 1][starved]).sum(-1) > 0)


def test_estimate_needs_v_and_matching_shapes_with_weights():
    q, k, v = make_qkv(1, 2, 1, 40, 40, 64, seed=1)
    m = spattn.methods.get("sea", k=4, compressed_width=8, weights=rand_weights(2, 64, 8, 32))
    with pytest.raises(ValueError, match="v is required"):
        m.estimate(q, k, causal=True)
    with pytest.raises(ValueError, match="pos"):
        m.estimate(q, k, v=v, causal=True)  # 40 keys > 32 positions
    m = spattn.methods.get("sea", k=4, compressed_width=8, weights=rand_weights(3, 64, 8, 64))
    with pytest.raises(ValueError, match="3 heads"):
        m.estimate(q, k, v=v, causal=True)
    with pytest.raises(TypeError, match="v"):
        spattn.methods.get("streaming").estimate(q, k, v=v, causal=True)


# ----------------------------------------------------------------------------- training
def test_exact_compressed_targets_match_float64_on_the_accuracy_grid():
    q, k, _ = make_qkv(1, 4, 2, 150, 300, 64, seed=3)
    for causal in (True, False):
        mass, psq, plogp = spattn._core.compressed_attention_targets(q, k, causal, 1 / 8, 16)
        p, _ = ref_probs(q, k, causal=causal)
        for i in (0, 77, 149):
            L = i + 151 if causal else 300
            cols = official_accuracy_columns(L, 16)
            ref = np.zeros((1, 4, 17))
            np.add.at(ref, (slice(None), slice(None), cols), p[:, :, i, :L])
            np.testing.assert_allclose(mass[:, :, i], ref[..., :16], atol=1e-6)
        np.testing.assert_allclose(psq, (p ** 2).sum(-1), atol=1e-6)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.testing.assert_allclose(plogp, np.where(p > 0, p * np.log(p), 0).sum(-1), atol=1e-5)


def test_estimate_loss_equals_the_official_full_resolution_loss():
    """PerlinAttention.forward (causal): estimated_attention_score_resized (every key takes its
    column's logit, resize_from_m_to_t), F.kl_div(log_softmax, softmax(truth), 'batchmean') * 0.1
    + F.mse_loss(softmax, target) over all (row, key) pairs, masked keys at FP_MIN."""
    q, k, v = make_qkv(1, 2, 1, 90, 90, 32, seed=6)
    W = 8
    s = sea_mod.prepare_sample((q, k, v), width=W, causal=True)
    z = np.random.default_rng(1).normal(size=(1, 2, 90, W))
    loss, _, guarded = sea_mod.distillation_loss(z, s.mass, s.psq, s.plogp, s.counts, 90)
    assert guarded == 0
    p, _ = ref_probs(q, k, causal=True)
    zt = torch.tensor(z)
    resized = torch.full((1, 2, 90, 90), torch.finfo(torch.float32).min / 2, dtype=torch.float64)
    for i in range(90):
        cols = torch.tensor(official_accuracy_columns(i + 1, W))
        resized[:, :, i, :i + 1] = zt[:, :, i, cols]
    target = torch.tensor(np.nan_to_num(p)).view(-1, 90)
    inp = torch.log_softmax(resized, -1).view(-1, 90)
    expect = (torch.nn.functional.kl_div(inp, target, reduction="batchmean") * 0.1
              + torch.nn.functional.mse_loss(torch.softmax(resized, -1).view(-1, 90), target)).item()
    assert loss == pytest.approx(expect, rel=1e-5)  # the teacher masses are float32 (C++)


def test_guard_counts_rows_whose_estimate_lives_on_empty_columns():
    q, k, v = make_qkv(1, 1, 1, 6, 6, 16, seed=2)
    s = sea_mod.prepare_sample((q, k, v), width=8, causal=True)
    z = np.zeros((1, 1, 6, 8))
    assert s.counts[0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]  # query 0 (L = 1): key 0 in column floor(4 - 1e-4)
    z[0, 0, 0, 3] = -200.0  # float32 softmax over W: exp(-200) underflows
    loss, dz, guarded = sea_mod.distillation_loss(z, s.mass, s.psq, s.plogp, s.counts, 6)
    assert guarded == 1 and np.isfinite(loss) and np.all(np.isfinite(dz))


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_match_finite_differences(causal):
    B, H, Hkv, N, D, W = 1, 2, 1, 13, 8, 8
    q, k, v = make_qkv(B, H, Hkv, N, N, D, seed=11)
    s = sea_mod.prepare_sample((q, k, v), width=W, causal=causal)
    w = rand_weights(H, D, W, 16, seed=7, F=6)
    mask = sea_mod.select(sea_mod.softmax(sea_mod.estimator_forward(w, q, k, v, causal=causal, scale=D ** -0.5)[0]),
                          N, k=2, causal=causal)
    _, grads, _ = sea_mod.loss_and_grads(w, s, k=2, mask=mask)
    rng = np.random.default_rng(0)
    for name in sea_mod.TRAINED:
        p = w[name]
        for _ in range(3):
            idx = tuple(int(rng.integers(0, n)) for n in p.shape)
            if name == "pos":
                idx = (int(rng.integers(0, N)),) + idx[1:]
            old = p[idx]
            p[idx] = old + 1e-6
            lp = sea_mod.loss_and_grads(w, s, k=2, mask=mask)[0]
            p[idx] = old - 1e-6
            lm = sea_mod.loss_and_grads(w, s, k=2, mask=mask)[0]
            p[idx] = old
            fd = (lp - lm) / 2e-6
            assert abs(fd - grads[name][idx]) <= 1e-7 + 1e-4 * abs(fd), (name, idx, fd, grads[name][idx])


def test_training_lowers_the_loss_and_weights_round_trip(tmp_path):
    data = [tuple(spattn.synthetic.structured_qkv(Hq=2, Hkv=1, N=256, D=32, seed=s)) for s in (1, 2)]
    res = sea_mod.train(data, k=8, width=16, steps=40, lr=3e-3, progress=False)
    assert len(res.losses) == 40 and len(res.guarded_rows) == 40
    assert np.mean(res.losses[-5:]) < 0.9 * np.mean(res.losses[:3]), res.losses
    path = str(tmp_path / "sea.npz")
    sea_mod.save_weights(path, res.weights)
    again = sea_mod.load_weights(path)
    assert set(again) == set(sea_mod.WEIGHT_SHAPES)
    for n in again:
        np.testing.assert_array_equal(again[n], res.weights[n])
    test = spattn.synthetic.structured_qkv(Hq=2, Hkv=1, N=256, D=32, seed=0)
    a = spattn.methods.get("sea", k=8, compressed_width=16, weights=res.weights)
    b = spattn.methods.get("sea", k=8, compressed_width=16, weights=again)
    np.testing.assert_array_equal(a(test.q, test.k, test.v, causal=True), b(test.q, test.k, test.v, causal=True))
    m = spattn.methods.get("sea", k=8, compressed_width=16)
    r = m.fit(data[:1], steps=2, progress=False)
    assert m.fitted and len(r.losses) == 2


def test_official_state_dict_loads_with_the_official_layouts():
    w = rand_weights(2, 16, 8, 32, seed=2)
    sd = {}
    for ours, theirs in sea_mod.OFFICIAL_NAMES.items():
        a = torch.tensor(w[ours])
        if ours in ("conv1_w", "conv2_w"):  # CausalConv2d: (out, in, 2k - 1, k), rows k.. masked
            a = torch.cat([a, torch.randn(a.shape[0], a.shape[1], 2, 3, dtype=a.dtype)], 2)
        elif ours == "conv4_w":
            a = a[:, :, None, None]
        elif ours == "pos":
            a = a[None, None]
        sd["model.layers.0.attention." + theirs] = a
    sd["model.layers.0.attention.norm.weight"] = torch.ones(3)  # unrelated keys are ignored
    got = sea_mod.from_official_state_dict(sd, prefix="model.layers.0.attention.")
    for n in sea_mod.WEIGHT_SHAPES:
        np.testing.assert_array_equal(got[n], w[n])
    with pytest.raises(ValueError, match="enc_ln_w"):
        sea_mod.from_official_state_dict({k: v for k, v in sd.items() if "enc.1.weight" not in k},
                                         prefix="model.layers.0.attention.")


def test_evaluate_harness_passes_v_and_measures_the_gated_output():
    w = spattn.synthetic.structured_qkv(Hq=2, Hkv=1, N=200, D=32, seed=4)
    m = spattn.methods.get("sea", k=8, compressed_width=16, weights=rand_weights(2, 32, 16, 256, seed=5))
    rec = spattn.evaluate([m], w, progress=False)[0]
    out = m(w.q, w.k, w.v, causal=True)
    ref = spattn.attention(w.q, w.k, w.v, causal=True)
    assert rec.rel_error == pytest.approx(spattn.metrics.relative_error(out, ref), rel=1e-6)


# ----------------------------------------------------------------------------- training-free option
def np_estimate(q, k, feats, causal, W):
    """The training-free estimate (not the paper's): FAVOR+ linear attention over the accuracy-grid
    column indicators."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    B, Hq, Nq, D = q.shape
    G = Hq // k.shape[1]
    w = feats.astype(np.float64)
    c = math.sqrt(1 / math.sqrt(D))
    est = np.zeros((B, Hq, Nq, W))
    for b in range(B):
        for h in range(Hq):
            ks, qs = k[b, h // G] * c, q[b, h] * c
            phk = np.exp(ks @ w.T - (ks ** 2).sum(1, keepdims=True) / 2)
            phq = np.exp(qs @ w.T - (qs ** 2).sum(1, keepdims=True) / 2)
            for i in range(Nq):
                L = min(max(i + k.shape[2] - Nq + 1, 0), k.shape[2]) if causal else k.shape[2]
                if L == 0:
                    continue
                cols = official_accuracy_columns(L, W)
                a = phq[i] @ phk[:L].T
                est[b, h, i] = np.bincount(cols, weights=a, minlength=W + 1)[:W] / a.sum()
    return est


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dims", [(1, 4, 2, 300, 300, 64), (2, 2, 1, 77, 150, 80), (1, 2, 2, 1, 500, 128)])
def test_training_free_estimate_matches_numpy(dims, causal):
    q, k, _ = make_qkv(*dims, seed=1)
    q *= 0.5
    k *= 0.5
    m = spattn.methods.get("sea", compressed_width=16, nb_features=64, seed=3)
    est = m.compressed_estimate(q, k, causal=causal)
    ref = np_estimate(q, k, m.features(q.shape[3]), causal, 16)
    np.testing.assert_allclose(est, ref, atol=2e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_training_free_path_selects_officially_and_runs_plain_sparse_attention(causal):
    q, k, v = make_qkv(1, 4, 2, 200, 260, 64, seed=2)
    m = spattn.methods.get("sea", k=8, compressed_width=32, nb_features=128)
    ti = m.estimate(q, k, causal=causal)
    np.testing.assert_array_equal(ti.indices, sea_mod.select(m.last_info["estimate"], 260, k=8, causal=causal).indices)
    out = m(q, k, v, causal=causal)
    np.testing.assert_allclose(out, dense_selected_reference(q, k, v, ti, causal, None), atol=2e-5, rtol=1e-4)


def test_orthogonal_features_are_orthogonal_blocks():
    w = orthogonal_features(100, 32, seed=1)
    assert w.shape == (100, 32)
    blk = w[:32] / np.linalg.norm(w[:32], axis=1, keepdims=True)
    np.testing.assert_allclose(blk @ blk.T, np.eye(32), atol=1e-5)
    assert sea_mod.default_nb_features(64) == 33  # int(64 ln 64 / 8), the OPT runs' nbf = 8


# ----------------------------------------------------------------------------- bad inputs
def test_bad_parameters_name_the_argument():
    with pytest.raises(ValueError, match="k must be >= 1"):
        spattn.methods.get("sea", k=0)
    with pytest.raises(TypeError, match="compressed_width must be an int"):
        spattn.methods.get("sea", compressed_width=1.5)
    with pytest.raises(ValueError, match="expansion"):
        spattn.methods.get("sea", expansion="fast")
    with pytest.raises(TypeError, match="weights"):
        spattn.methods.get("sea", weights="x")
    w = sea_mod.init_weights(2, 16, width=8, max_positions=16)
    with pytest.raises(ValueError, match="compressed_width"):
        spattn.methods.get("sea", compressed_width=16, weights=w)
    bad = dict(w, conv1_w=w["conv1_w"][:, :3])
    with pytest.raises(ValueError, match="conv1_w"):
        spattn.methods.get("sea", compressed_width=8, weights=bad)
    with pytest.raises(ValueError, match="missing"):
        spattn.methods.get("sea", compressed_width=8, weights={n: a for n, a in w.items() if n != "pos"})
    with pytest.raises(ValueError, match="width must be a multiple of 4"):
        sea_mod.init_weights(2, 16, width=10)
    with pytest.raises(ValueError, match="heads must be >= 1"):
        sea_mod.init_weights(0, 16)
    with pytest.raises(ValueError, match="expansion"):
        sea_mod.select(np.zeros((1, 1, 1, 4), np.float32), 4, k=1, causal=True, expansion="x")
    with pytest.raises(TypeError, match="q, k, v"):
        sea_mod.train([(1, 2)], steps=1, progress=False)


def test_matches_the_official_perlin_attention_on_identical_inputs():
    """tests_py/data/sea_official.npz: the OFFICIAL PerlinAttention.forward (gmlwns2000/sea-attention
    @ 5609413, causal OPT configuration, k_flatten_dim 'causal_batch', benchmarking=False = accuracy
    path, performer_pytorch 1.1.4, CPU torch float32, eval) run by
    notebooks/data/sea_official_crosscheck/crosscheck.py on float16-exact q (pre-scaled), k, v with
    its own randomly initialised state dict (LayerNorms off identity), stored in the official layouts
    and loaded here through from_official_state_dict. H=2, D=64, W=16, k=4, T=77.

    Tolerances: both sides are float32 with different summation orders; measured max |diff| is
    5e-7 (probabilities), 3e-7 (gate logits, output), so atol 5e-6. The official top-k margin at the
    budget is 1.6e-4, far above that error, so the kept columns and keys must be identical."""
    f = np.load(os.path.join(os.path.dirname(__file__), "data", "sea_official.npz"))
    H, D, W, k, T = (int(x) for x in f["meta"])
    w = sea_mod.from_official_state_dict({n[3:]: f[n].astype(np.float32) for n in f.files if n.startswith("sd.")})
    q, kk, v = (f[n].astype(np.float32) for n in ("q", "k", "v"))
    m = spattn.methods.get("sea", k=k, compressed_width=W, weights=w)
    out = m(q, kk, v, causal=True, scale=1.0)  # q is pre-scaled: the official scores are q . k
    np.testing.assert_allclose(m.last_info["estimate"], f["off_probs"], rtol=0, atol=5e-6)
    np.testing.assert_allclose(m.last_info["gates"], f["off_gates"], rtol=0, atol=5e-6)
    keys = np.unpackbits(f["off_keys"])[:H * T * T].reshape(1, H, T, T).astype(bool)
    np.testing.assert_array_equal(m.last_info["mask"].to_dense(T), keys)
    # kept (head, column) set: spattn's ranking of its own estimate reproduces the official one
    kept = np.unpackbits(f["off_kept_cols"])[:H * T * W].reshape(H, T, W).astype(bool)
    for i in range(T):
        L = i + 1
        n = max(1, min(H * W, round(H * k * W / L)))
        top = np.argsort(-m.last_info["estimate"][0, :, i].reshape(-1), kind="stable")[:n]
        ours = np.zeros(H * W, bool)
        ours[top] = True
        np.testing.assert_array_equal(ours.reshape(H, W), kept[:, i])
    np.testing.assert_allclose(out, f["off_out"], rtol=0, atol=5e-6)
