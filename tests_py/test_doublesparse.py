"""Double Sparsity: selections equal a numpy transcription of the official accuracy path
(andy-yang-1/DoubleSparse HEAD b0575e6, LongBench/modify_llama.py
``LlamaAttention_heavy_hitter.forward``: repeat_kv, gather of ``sorted_channel[h]``, the first
``D // group_factor`` channels, ``pseudo_quantize`` of query and key labels when label_bits < 16,
the grouped-mean fallback without a table, descending sort and the first ``heavy_const`` kept);
labels in float32 as the inputs (official: the model dtype), scores in float64, ties to the lower
token. The decode output equals float64 attention over the kept tokens; the cache's labels after
many appends equal labels built from scratch; dense layers, prefill, parameters and errors."""

import numpy as np
import pytest

import spattn
from spattn import _core
from spattn.methods.doublesparse import DoubleSparseLabels, calibrate_channels, pseudo_quantize
from conftest import assert_matches, make_qkv, ref_attention


def official_pseudo_quantize(t, q_bit):
    """pseudo_quantize, line by line (in the input dtype)."""
    max_quant = 2 ** q_bit - 1
    min_val = t.min(axis=-1, keepdims=True)
    max_val = t.max(axis=-1, keepdims=True)
    range_val = max_val - min_val
    range_val[range_val == 0] = 1
    scale = t.dtype.type(max_quant) / range_val
    quantized = np.clip(np.round((t - min_val) * scale), 0, max_quant)
    return quantized / scale + min_val


def official_keep_mask(q, k, heavy_const, group_factor, label_bits, sorted_channel=None):
    """The decode branch's h2_mask, inverted: bool (B, Hq, N) of the kept tokens."""
    B, Hq, _, D = q.shape
    k = np.repeat(k, Hq // k.shape[1], axis=1)  # repeat_kv
    N = k.shape[2]
    if sorted_channel is not None:
        r = D // group_factor  # outlier_num
        idx = np.asarray(sorted_channel)
        gq = np.take_along_axis(q, idx[None, :, None, :], axis=3)[..., :r]
        gk = np.take_along_axis(k, idx[None, :, None, :], axis=3)[..., :r]
        if label_bits < 16:
            gq = official_pseudo_quantize(gq, label_bits)
            gk = official_pseudo_quantize(gk, label_bits)
        w = np.einsum("bhqd,bhnd->bhqn", gq.astype(np.float64), gk.astype(np.float64)) / np.sqrt(r)
    else:
        gq = q.reshape(B, Hq, 1, D // group_factor, group_factor).sum(-1) / group_factor
        gk = k.reshape(B, Hq, N, D // group_factor, group_factor).sum(-1) / group_factor
        w = np.einsum("bhqd,bhnd->bhqn", gq.astype(np.float64), gk.astype(np.float64)) / np.sqrt(D // group_factor)
    order = np.argsort(-w, axis=-1, kind="stable")  # descending, ties to the lower index
    keep = np.ones(w.shape, bool)
    np.put_along_axis(keep, order[..., heavy_const:], False, axis=-1)
    return keep[:, :, 0]


def kept(idx: spattn.TokenIndices, N: int) -> np.ndarray:
    ind = idx.indices[:, :, 0]
    out = np.zeros(ind.shape[:2] + (N,), bool)
    for b in range(ind.shape[0]):
        for h in range(ind.shape[1]):
            sel = ind[b, h][ind[b, h] >= 0]
            assert np.all(np.diff(sel) > 0)
            out[b, h, sel] = True
    return out


def ranking(H, D, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(D) for _ in range(H)])


# B, Hq, Hkv, N, D, heavy_const, group_factor, label_bits, table
CASES = [
    (1, 4, 2, 300, 64, 32, 2, 4, True),
    (2, 4, 1, 517, 128, 100, 8, 4, True),
    (1, 2, 2, 1000, 80, 256, 2, 16, True),
    (1, 4, 4, 333, 128, 50, 4, 2, True),
    (1, 4, 2, 300, 64, 32, 2, 4, False),   # no table: grouped means
    (1, 2, 1, 777, 80, 128, 4, 4, False),
    (1, 2, 2, 100, 64, 256, 2, 4, True),   # kv_len <= heavy_const: every token
    (1, 2, 2, 1, 64, 1, 2, 4, True),
]
IDS = ["B{}Hq{}Hkv{}N{}D{}h{}g{}b{}{}".format(*c[:8], "T" if c[8] else "M") for c in CASES]


@pytest.mark.parametrize("chunks", [None, (50, 1, 1)], ids=["one", "chunks+tokens"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_selection_equals_the_official_forward(case, chunks):
    B, Hq, Hkv, N, D, heavy, g, bits, with_table = case
    q, k, v = make_qkv(B, Hq, Hkv, 1, N, D, seed=1)
    table = ranking(Hq, D, 2) if with_table else None
    m = spattn.methods.get("doublesparse", heavy_const=heavy, group_factor=g, label_bits=bits, channels=table)
    cache = spattn.KVCache(initial_capacity=8)
    pos = 0
    for n in (chunks or (N,)):
        n = min(n, N - pos)
        cache.append(5, k[:, :, pos:pos + n], v[:, :, pos:pos + n])
        pos += n
    while pos < N:
        cache.append(5, k[:, :, pos:pos + 1], v[:, :, pos:pos + 1])
        pos += 1
    idx = m.select(q, cache, layer=5)
    np.testing.assert_array_equal(kept(idx, N), official_keep_mask(q, k, heavy, g, bits, table))
    assert idx.indices.shape[-1] == min(N, heavy)
    out, lse = m(q, cache, layer=5, return_lse=True)
    ref_out, ref_lse = ref_attention(q, k, v, allowed=kept(idx, N)[:, :, None, :])
    assert_matches(out, lse, ref_out, ref_lse)
    np.testing.assert_array_equal(m.estimate(q, k).indices, idx.indices)  # arrays: labels built for the call


def test_pseudo_quantize_is_the_official_one():
    x = np.random.default_rng(3).standard_normal((3, 5, 7, 16)).astype(np.float32)
    x[0, 0, 0] = 2.5  # a constant vector: range 0 counts as 1
    for bits in (1, 2, 4, 8):
        np.testing.assert_array_equal(pseudo_quantize(x, bits), official_pseudo_quantize(x, bits))
    assert len(np.unique(pseudo_quantize(x, 2)[1, 1, 1])) <= 4


def test_labels_after_many_appends_equal_labels_from_scratch():
    q, k, v = make_qkv(2, 4, 2, 1, 400, 64, seed=4)
    for table in (ranking(4, 64, 5), ranking(2, 64, 6), None):
        cache = spattn.KVCache(initial_capacity=4)
        cache.append(2, k[:, :, :3], v[:, :, :3])
        m = spattn.methods.get("doublesparse", channels=table)
        labels, tab = m.labels(cache, 2, 4)  # registered late: labels the 3 rows held
        pos = 3
        for n in [1] * 50 + [97, 1, 1, 200] + [1] * 48:
            cache.append(2, k[:, :, pos:pos + n], v[:, :, pos:pos + n])
            pos += n
        assert pos == 400 and labels.kv_len == 400
        fresh = DoubleSparseLabels(tab, 2, 4)
        fresh.update(k, 0, 400)
        np.testing.assert_array_equal(labels.labels[:, :, :400], fresh.labels)
        assert labels.labels.shape[1] == (2 if table is None or table.shape[0] == 2 else 4)


def test_kv_head_tables_are_shared_by_their_query_heads():
    q, k, v = make_qkv(1, 4, 2, 1, 300, 64, seed=7)
    per_kv = ranking(2, 64, 8)
    a = spattn.methods.get("doublesparse", heavy_const=40, channels=per_kv).estimate(q, k)
    b = spattn.methods.get("doublesparse", heavy_const=40, channels=np.repeat(per_kv, 2, axis=0)).estimate(q, k)
    np.testing.assert_array_equal(a.indices, b.indices)


def test_dense_layers_prefill_and_per_layer_tables():
    q, k, v = make_qkv(1, 4, 2, 1, 400, 64, seed=9)
    tables = {i: ranking(4, 64, 10 + i) for i in range(4)}
    m = spattn.methods.get("doublesparse", heavy_const=64, channels=tables)
    cache = spattn.KVCache()
    for layer in range(4):
        cache.append(layer, k, v)
    ref, _ = ref_attention(q, k, v)
    for layer in (0, 1):
        np.testing.assert_allclose(m(q, cache, layer=layer), ref, atol=2e-5, rtol=1e-5)
    for layer in (2, 3):
        np.testing.assert_array_equal(kept(m.select(q, cache, layer=layer), 400),
                                      official_keep_mask(q, k, 64, 2, 4, tables[layer]))
    with pytest.raises(ValueError, match="per-layer dict"):
        m.estimate(q, k)
    cache.append(7, k, v)
    with pytest.raises(ValueError, match="no table for layer 7"):
        m.select(q, cache, layer=7)
    qp, _, _ = make_qkv(1, 4, 2, 20, 400, 64, seed=11)
    ref_p, _ = ref_attention(qp, k, v, causal=True)
    np.testing.assert_allclose(m(qp, cache, layer=3, causal=True), ref_p, atol=2e-5, rtol=1e-5)
    plain = spattn.methods.get("doublesparse")
    mask = plain.estimate(qp, k, causal=True)
    assert mask.group_size == 20 and (mask.indices >= 0).all()


def test_defaults_are_the_official_ones():
    assert spattn.methods.get("doublesparse").params == {
        "heavy_const": 256, "group_factor": 2, "label_bits": 4, "dense_layers": 2, "channels": None,
        "statistical_topk": False, "layer_plan": None}


def test_errors_name_the_parameter_or_argument():
    q, k, v = make_qkv(1, 4, 2, 1, 50, 64, seed=12)
    with pytest.raises(ValueError, match="doublesparse: label_bits must be <= 16"):
        spattn.methods.get("doublesparse", label_bits=17)
    with pytest.raises(ValueError, match="doublesparse: heavy_const must be >= 1"):
        spattn.methods.get("doublesparse", heavy_const=0)
    with pytest.raises(ValueError, match=r"doublesparse: group_factor \(3\) must divide the head dim D=64"):
        spattn.methods.get("doublesparse", group_factor=3).estimate(q, k)
    with pytest.raises(TypeError, match="doublesparse: channels must be an integer array"):
        spattn.methods.get("doublesparse", channels=np.zeros((4, 64)))
    with pytest.raises(ValueError, match="doublesparse: channels must have shape"):
        spattn.methods.get("doublesparse", channels=np.zeros(64, int))
    with pytest.raises(ValueError, match=r"channels must have shape \(Hq=4 or Hkv=2, >= r=32\)"):
        spattn.methods.get("doublesparse", channels=np.zeros((3, 64), int)).estimate(q, k)
    with pytest.raises(ValueError, match=r"channels must lie in \[0, D=64\)"):
        spattn.methods.get("doublesparse", channels=np.full((4, 64), 64)).estimate(q, k)
    with pytest.raises(ValueError, match="labels must have shape"):
        _core.estimate_doublesparse(np.zeros((1, 4, 1, 8), np.float32), np.zeros((1, 3, 10, 8), np.float32), 10,
                                    _core.DoubleSparseParams())
    with pytest.raises(ValueError, match="kv_len must lie in"):
        _core.estimate_doublesparse(np.zeros((1, 4, 1, 8), np.float32), np.zeros((1, 2, 10, 8), np.float32), 11,
                                    _core.DoubleSparseParams())
    cache = spattn.KVCache()
    cache.append(2, k, v)
    with pytest.raises(ValueError, match="q must have shape"):
        spattn.methods.get("doublesparse")(q[..., :32], cache, layer=2)


def official_calibration(blocks, kind, Hq, Hkv):
    """config/offline_calibration.py: the hooks' statistics over (B, N, H * D) projection outputs
    (q, k) or the (B, Hq, N, D) product reshaped as is (qk), the accumulation into output_dict
    (and its qk quirk), then the descending sort."""
    out = {}
    for blk in blocks:
        if kind == "qk":
            q, k = blk
            out_ = q * np.repeat(k, Hq // Hkv, axis=1)  # (B, Hq, N, D), the heads axis never moved back
            y = np.abs(out_.reshape(-1, Hq, q.shape[3])).mean(0)
            name = "attn"
            if name not in out:  # the official test of the wrong key: always true
                out[name + ".qk_proj"] = y
            else:
                out[name + ".qk_proj"] += y
            continue
        B, H, N, D = blk.shape
        y = np.abs(blk.transpose(0, 2, 1, 3).reshape(B, N, H * D).reshape(-1, H, D)).mean(0)
        out["proj"] = y if "proj" not in out else out["proj"] + y
    (stat,) = out.values()
    return np.argsort(-stat, axis=-1, kind="stable")


@pytest.mark.parametrize("kind", ["q", "k", "qk"])
def test_calibration_equals_the_official_statistics(kind):
    rng = np.random.default_rng(13)
    scales = rng.uniform(0.1, 3.0, 64)  # outlier channels
    def block(H):
        return (rng.standard_normal((2, H, 50, 64)) * scales).astype(np.float64)
    if kind == "qk":
        blocks = [(block(4), block(2)) for _ in range(3)]
    else:
        blocks = [block(4 if kind == "q" else 2) for _ in range(3)]
    table = calibrate_channels(blocks, kind)
    np.testing.assert_array_equal(table, official_calibration(blocks, kind, 4, 2))
    assert table.shape == ((2, 64) if kind == "k" else (4, 64))
    if kind == "qk":  # only the last block counts
        np.testing.assert_array_equal(table, calibrate_channels(blocks[-1:], "qk"))
    q, k, _ = make_qkv(1, 4, 2, 1, 300, 64, seed=14)
    spattn.methods.get("doublesparse", heavy_const=32, channels=table).estimate(q, k).check_against(1, 4, 1, 300)


def test_calibration_errors():
    with pytest.raises(ValueError, match="kind must be"):
        calibrate_channels([np.ones((1, 1, 2, 4))], "v")
    with pytest.raises(ValueError, match="at least one"):
        calibrate_channels([], "q")
    with pytest.raises(ValueError, match=r"blocks\[1\] has 2 heads"):
        calibrate_channels([np.ones((1, 1, 2, 4)), np.ones((1, 2, 2, 4))], "q")
    with pytest.raises(TypeError, match=r"blocks\[0\] must be a \(q, k\) pair"):
        calibrate_channels([np.ones((1, 1, 2, 4))], "qk")


def test_channel_tables_round_trip_through_npz(tmp_path):
    from spattn.methods.doublesparse import load_channels, save_channels
    rng = np.random.default_rng(0)
    table = np.stack([rng.permutation(64) for _ in range(4)])
    save_channels(tmp_path / "one.npz", table, kind="qk")
    np.testing.assert_array_equal(load_channels(tmp_path / "one.npz"), table)
    per_layer = {2: table, 5: table[:, ::-1].copy()}
    save_channels(tmp_path / "layers.npz", per_layer)
    back = load_channels(tmp_path / "layers.npz")
    assert sorted(back) == [2, 5] and all(np.array_equal(back[i], per_layer[i]) for i in back)
    m = spattn.methods.get("doublesparse", channels=back)
    assert sorted(m.params["channels"]) == [2, 5]
    spattn.training.save_npz(tmp_path / "other.npz", {"x": np.zeros(2)}, {"method": "sea"})
    with pytest.raises(ValueError, match="not a Double Sparsity"):
        load_channels(tmp_path / "other.npz")
