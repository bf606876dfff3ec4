// pybind11 module spattn._core: conversion and shape checks only, no algorithm lives here.
// Arrays arrive C-contiguous float32 (forcecast); compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include <omp.h>

#include <cstring>
#include <functional>
#include <string>

#include "spattn/estimators.hpp"
#include "spattn/kernels.hpp"
#include "spattn/statistics.hpp"

namespace py = pybind11;
using namespace spattn;

using FArr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArr = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using BArr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void need_ndim(const py::array& a, int nd, const char* name) {
  if (a.ndim() != nd)
    throw py::value_error(std::string(name) + " must have " + std::to_string(nd) +
                          " dimensions, got shape " + shape_str(a));
}

AttnShape qkv_shape(const FArr& q, const FArr& k, const FArr* v) {
  need_ndim(q, 4, "q");
  need_ndim(k, 4, "k");
  AttnShape s;
  s.B = int(q.shape(0)); s.Hq = int(q.shape(1)); s.Nq = int(q.shape(2)); s.D = int(q.shape(3));
  s.Hkv = int(k.shape(1)); s.Nk = int(k.shape(2)); s.Dv = 0;
  if (k.shape(0) != s.B || k.shape(3) != s.D || s.Hkv < 1 || s.Hq % s.Hkv != 0)
    throw py::value_error("k must have shape (B, Hkv, Nk, D) with B and D of q and Hq % Hkv == 0; q " +
                          shape_str(q) + ", k " + shape_str(k));
  if (v != nullptr) {
    need_ndim(*v, 4, "v");
    if (v->shape(0) != s.B || v->shape(1) != s.Hkv || v->shape(2) != s.Nk)
      throw py::value_error("v must have shape (B, Hkv, Nk, Dv) matching k " + shape_str(k) +
                            ", got " + shape_str(*v));
    s.Dv = int(v->shape(3));
  }
  if (s.D < 1) throw py::value_error("head dim D must be >= 1");
  return s;
}

AttnArgs make_args(const FArr& q, const FArr& k, const FArr* v, const AttnShape& s, bool causal,
                   double scale) {
  AttnArgs a;
  a.q = q.data(); a.k = k.data(); a.v = v ? v->data() : nullptr;
  a.shape = s; a.causal = causal; a.scale = float(scale);
  return a;
}

py::tuple run_attention(const FArr& q, const FArr& k, const FArr& v, bool causal, double scale,
                        const std::function<void(AttnArgs&)>& kernel) {
  const AttnShape s = qkv_shape(q, k, &v);
  FArr out({s.B, s.Hq, s.Nq, s.Dv});
  FArr lse({s.B, s.Hq, s.Nq});
  AttnArgs a = make_args(q, k, &v, s, causal, scale);
  a.out = out.mutable_data();
  a.lse = lse.mutable_data();
  {
    py::gil_scoped_release nogil;
    kernel(a);
  }
  return py::make_tuple(out, lse);
}

BlockMaskView mask_view(const BArr& blocks, int block_q, int block_k) {
  need_ndim(blocks, 4, "mask.blocks");
  return {blocks.data(), int(blocks.shape(0)), int(blocks.shape(1)), int(blocks.shape(2)),
          int(blocks.shape(3)), block_q, block_k};
}

TokenIndicesView index_view(const IArr& idx, int group_size) {
  need_ndim(idx, 4, "indices");
  return {idx.data(), int(idx.shape(0)), int(idx.shape(1)), int(idx.shape(2)), int(idx.shape(3)),
          group_size};
}

py::array_t<bool> to_numpy(const BlockMask& m) {
  py::array_t<bool> out({m.B, m.H, m.nqb, m.nkb});
  std::memcpy(out.mutable_data(), m.blocks.data(), m.blocks.size());
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "spattn C++ core (kernels and estimators); use the spattn package, not this module.";

  m.def("dense_attention", [](const FArr& q, const FArr& k, const FArr& v, bool causal, double scale) {
    return run_attention(q, k, v, causal, scale, [](AttnArgs& a) { dense_attention(a); });
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("scale"));

  m.def("block_sparse_attention", [](const FArr& q, const FArr& k, const FArr& v, const BArr& blocks,
                                     int block_q, int block_k, bool causal, double scale) {
    const BlockMaskView mv = mask_view(blocks, block_q, block_k);
    return run_attention(q, k, v, causal, scale, [&](AttnArgs& a) { block_sparse_attention(a, mv); });
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("blocks"), py::arg("block_q"),
     py::arg("block_k"), py::arg("causal"), py::arg("scale"));

  m.def("token_sparse_attention", [](const FArr& q, const FArr& k, const FArr& v, const IArr& idx,
                                     int group_size, bool causal, double scale) {
    const TokenIndicesView iv = index_view(idx, group_size);
    return run_attention(q, k, v, causal, scale, [&](AttnArgs& a) { token_sparse_attention(a, iv); });
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("indices"), py::arg("group_size"),
     py::arg("causal"), py::arg("scale"));

  m.def("merge_states", [](const FArr& oa, const FArr& la, const FArr& ob, const FArr& lb) {
    if (oa.ndim() < 1 || oa.ndim() != ob.ndim() || la.ndim() != oa.ndim() - 1)
      throw py::value_error("merge_states: out arrays must share their ndim and lse drop the last axis");
    for (py::ssize_t i = 0; i < oa.ndim(); ++i)
      if (oa.shape(i) != ob.shape(i)) throw py::value_error("merge_states: out_a and out_b shapes differ");
    for (py::ssize_t i = 0; i + 1 < oa.ndim(); ++i)
      if (la.shape(i) != oa.shape(i) || lb.shape(i) != oa.shape(i))
        throw py::value_error("merge_states: lse shapes must equal out shapes without the last axis");
    const long long rows = la.size();
    const int dv = int(oa.shape(oa.ndim() - 1));
    std::vector<py::ssize_t> oshape(oa.shape(), oa.shape() + oa.ndim());
    std::vector<py::ssize_t> lshape(la.shape(), la.shape() + la.ndim());
    FArr out(oshape), lse(lshape);
    float* o = out.mutable_data();
    float* l = lse.mutable_data();
    {
      py::gil_scoped_release nogil;
      merge_states(oa.data(), la.data(), ob.data(), lb.data(), rows, dv, o, l);
    }
    return py::make_tuple(out, lse);
  }, py::arg("out_a"), py::arg("lse_a"), py::arg("out_b"), py::arg("lse_b"));

  m.def("block_attention_map", [](const FArr& q, const FArr& k, int block_q, int block_k,
                                  bool causal, double scale, const std::string& pool) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    if (block_q < 1 || block_k < 1) throw py::value_error("block sizes must be >= 1");
    if (pool != "sum" && pool != "max") throw py::value_error("pool must be 'sum' or 'max'");
    FArr map({s.B, s.Hq, ceil_div(s.Nq, block_q), ceil_div(s.Nk, block_k)});
    FArr lse({s.B, s.Hq, s.Nq});
    AttnArgs a = make_args(q, k, nullptr, s, causal, scale);
    a.lse = lse.mutable_data();
    float* mp = map.mutable_data();
    {
      py::gil_scoped_release nogil;
      block_attention_map(a, block_q, block_k, pool == "sum" ? BlockPool::Sum : BlockPool::Max, mp);
    }
    return py::make_tuple(map, lse);
  }, py::arg("q"), py::arg("k"), py::arg("block_q"), py::arg("block_k"), py::arg("causal"),
     py::arg("scale"), py::arg("pool"));

  m.def("token_attention_mass", [](const FArr& q, const FArr& k, const IArr& idx, int group_size,
                                   bool causal, double scale) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    const TokenIndicesView iv = index_view(idx, group_size);
    FArr mass({s.B, s.Hq, s.Nq});
    AttnArgs a = make_args(q, k, nullptr, s, causal, scale);
    float* mp = mass.mutable_data();
    {
      py::gil_scoped_release nogil;
      token_attention_mass(a, iv, mp);
    }
    return mass;
  }, py::arg("q"), py::arg("k"), py::arg("indices"), py::arg("group_size"), py::arg("causal"),
     py::arg("scale"));

  m.def("estimate_streaming", [](int B, int Hq, int Hkv, int Nq, int Nk, bool causal, int block_size,
                                 int sink_tokens, int local_tokens) {
    AttnShape s;
    s.B = B; s.Hq = Hq; s.Hkv = Hkv; s.Nq = Nq; s.Nk = Nk; s.D = 1;
    StreamingParams p;
    p.block_size = block_size; p.sink_tokens = sink_tokens; p.local_tokens = local_tokens;
    return to_numpy(estimate_streaming(s, causal, p));
  }, py::arg("B"), py::arg("Hq"), py::arg("Hkv"), py::arg("Nq"), py::arg("Nk"), py::arg("causal"),
     py::arg("block_size"), py::arg("sink_tokens"), py::arg("local_tokens"));

  m.def("estimate_oracle_topk", [](const FArr& q, const FArr& k, bool causal, double scale,
                                   int block_size, double gamma) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    AttnArgs a = make_args(q, k, nullptr, s, causal, scale);
    OracleParams p;
    p.block_size = block_size; p.gamma = float(gamma);
    BlockMask m;
    {
      py::gil_scoped_release nogil;
      m = estimate_oracle_topk(a, p);
    }
    return to_numpy(m);
  }, py::arg("q"), py::arg("k"), py::arg("causal"), py::arg("scale"), py::arg("block_size"),
     py::arg("gamma"));

  m.def("estimate_flexprefill", [](const FArr& q, const FArr& k, bool causal, double gamma, double tau,
                                   int min_budget, int max_budget, int block_size) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    AttnArgs a = make_args(q, k, nullptr, s, causal, 0.0);
    FlexPrefillParams p;
    p.gamma = float(gamma); p.tau = float(tau); p.min_budget = min_budget;
    p.max_budget = max_budget; p.block_size = block_size;
    BlockMask m;
    FlexPrefillInfo info;
    {
      py::gil_scoped_release nogil;
      m = estimate_flexprefill(a, p, &info);
    }
    py::array_t<int8_t> pattern({s.B, s.Hq});
    py::array_t<float> js({s.B, s.Hq});
    py::array_t<int32_t> nv({s.B, s.Hq}), ns({s.B, s.Hq});
    std::memcpy(pattern.mutable_data(), info.pattern.data(), info.pattern.size());
    std::memcpy(js.mutable_data(), info.js.data(), info.js.size() * sizeof(float));
    std::memcpy(nv.mutable_data(), info.n_vertical.data(), info.n_vertical.size() * sizeof(int));
    std::memcpy(ns.mutable_data(), info.n_slash.data(), info.n_slash.size() * sizeof(int));
    return py::make_tuple(to_numpy(m), pattern, js, nv, ns);
  }, py::arg("q"), py::arg("k"), py::arg("causal"), py::arg("gamma"), py::arg("tau"),
     py::arg("min_budget"), py::arg("max_budget"), py::arg("block_size"));

  m.def("seer_gate_scores", [](const FArr& q, const FArr& k, std::optional<FArr> wq, const FArr& wk,
                               const std::vector<std::string>& q_pool, const std::vector<std::string>& k_pool,
                               int hidden, double rope_theta, int block_size) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    auto kinds = [](const std::vector<std::string>& names) {
      std::vector<PoolKind> out;
      for (const auto& n : names) {
        if (n == "max") out.push_back(PoolKind::Max);
        else if (n == "min") out.push_back(PoolKind::Min);
        else if (n == "avg") out.push_back(PoolKind::Avg);
        else throw py::value_error("pooling kinds must be 'max', 'min' or 'avg', got '" + n + "'");
      }
      return out;
    };
    SeerGate g;
    g.hidden = hidden; g.q_pool = kinds(q_pool); g.k_pool = kinds(k_pool);
    need_ndim(wk, 3, "wk");
    if (wk.shape(1) != py::ssize_t(g.k_pool.size()) * s.D || wk.shape(2) != hidden)
      throw py::value_error("wk must have shape (heads, len(k_pool) * D, hidden), got " + shape_str(wk));
    g.wk = wk.data(); g.wk_heads = int(wk.shape(0));
    if (wq) {
      need_ndim(*wq, 3, "wq");
      if (wq->shape(0) != s.Hq || wq->shape(1) != py::ssize_t(g.q_pool.size()) * s.D || wq->shape(2) != hidden)
        throw py::value_error("wq must have shape (Hq, len(q_pool) * D, hidden), got " + shape_str(*wq));
      g.wq = wq->data();
    }
    g.rope_theta = float(rope_theta);
    const int nb = ceil_div(s.Nq, block_size);
    FArr scores({s.B, s.Hq, nb, nb});
    AttnArgs a = make_args(q, k, nullptr, s, true, 0.0);
    float* sp = scores.mutable_data();
    {
      py::gil_scoped_release nogil;
      seer_gate_scores(a, g, block_size, sp);
    }
    return scores;
  }, py::arg("q"), py::arg("k"), py::arg("wq"), py::arg("wk"), py::arg("q_pool"), py::arg("k_pool"),
     py::arg("hidden"), py::arg("rope_theta"), py::arg("block_size"));

  m.def("seer_select", [](const FArr& scores, int n, int block_size, const std::string& mode, double threshold,
                          double nz_ratio, int topk, bool last_block_dense) {
    need_ndim(scores, 4, "scores");
    SeerParams p;
    p.block_size = block_size; p.threshold = float(threshold); p.nz_ratio = float(nz_ratio); p.topk = topk;
    p.last_block_dense = last_block_dense;
    if (mode == "threshold") p.mode = SeerSelect::Threshold;
    else if (mode == "nz_ratio") p.mode = SeerSelect::NzRatio;
    else if (mode == "topk") p.mode = SeerSelect::TopK;
    else throw py::value_error("mode must be 'threshold', 'nz_ratio' or 'topk'");
    const int nb = ceil_div(n, block_size);
    if (scores.shape(2) != nb || scores.shape(3) != nb) throw py::value_error("scores do not match n / block_size");
    return to_numpy(seer_select(scores.data(), int(scores.shape(0)), int(scores.shape(1)), n, p));
  }, py::arg("scores"), py::arg("n"), py::arg("block_size"), py::arg("mode"), py::arg("threshold"),
     py::arg("nz_ratio"), py::arg("topk"), py::arg("last_block_dense"));

  m.def("seer_ground_truth", [](const FArr& q, const FArr& k, int block_size, double scale) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    if (block_size < 1) throw py::value_error("block_size must be >= 1");
    const int nb = ceil_div(s.Nq, block_size);
    FArr target({s.B, s.Hq, nb, ceil_div(s.Nk, block_size)});
    AttnArgs a = make_args(q, k, nullptr, s, true, scale);
    float* tp = target.mutable_data();
    {
      py::gil_scoped_release nogil;
      seer_ground_truth(a, block_size, tp);
    }
    return target;
  }, py::arg("q"), py::arg("k"), py::arg("block_size"), py::arg("scale"));

  m.def("sea_estimate", [](const FArr& q, const FArr& k, const FArr& features, bool causal, double scale, int width) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    need_ndim(features, 2, "features");
    if (features.shape(1) != s.D) throw py::value_error("features must have shape (m, D)");
    if (width < 1) throw py::value_error("compressed_width must be >= 1");
    SeaParams p;
    p.width = width;
    FArr est({s.B, s.Hq, s.Nq, width});
    AttnArgs a = make_args(q, k, nullptr, s, causal, scale);
    float* ep = est.mutable_data();
    {
      py::gil_scoped_release nogil;
      sea_estimate(a, features.data(), int(features.shape(0)), p, ep);
    }
    return est;
  }, py::arg("q"), py::arg("k"), py::arg("features"), py::arg("causal"), py::arg("scale"), py::arg("width"));

  m.def("sea_select", [](const FArr& est, int Hkv, int Nk, bool causal, int k) {
    need_ndim(est, 4, "est");
    AttnShape s;
    s.B = int(est.shape(0)); s.Hq = int(est.shape(1)); s.Nq = int(est.shape(2)); s.Nk = Nk; s.Hkv = Hkv; s.D = 1;
    SeaParams p;
    p.width = int(est.shape(3)); p.k = k;
    if (k < 1) throw py::value_error("k must be >= 1");
    int kmax = 0;
    std::vector<int32_t> idx;
    {
      py::gil_scoped_release nogil;
      idx = sea_select(est.data(), s, causal, p, &kmax);
    }
    py::array_t<int32_t> out({s.B, s.Hq, s.Nq, kmax});
    std::memcpy(out.mutable_data(), idx.data(), idx.size() * sizeof(int32_t));
    return out;
  }, py::arg("est"), py::arg("Hkv"), py::arg("Nk"), py::arg("causal"), py::arg("k"));

  m.def("sea_exact_compressed", [](const FArr& q, const FArr& k, bool causal, double scale, int width) {
    const AttnShape s = qkv_shape(q, k, nullptr);
    if (width < 1) throw py::value_error("compressed_width must be >= 1");
    FArr mass({s.B, s.Hq, s.Nq, width});
    FArr psq({s.B, s.Hq, s.Nq}), plogp({s.B, s.Hq, s.Nq});
    AttnArgs a = make_args(q, k, nullptr, s, causal, scale);
    float* mp = mass.mutable_data();
    float* pp = psq.mutable_data();
    float* ep = plogp.mutable_data();
    {
      py::gil_scoped_release nogil;
      compressed_attention_targets(a, width, mp, pp, ep);
    }
    return py::make_tuple(mass, psq, plogp);
  }, py::arg("q"), py::arg("k"), py::arg("causal"), py::arg("scale"), py::arg("width"));

  m.def("sea_decoder_refine", [](const FArr& est, const IArr& counts, const FArr& w1, const FArr& b1, const FArr& w2,
                                 const FArr& b2, const FArr& w3, const FArr& b3, const FArr& bias, int dilation) {
    need_ndim(est, 4, "est");
    need_ndim(counts, 2, "counts");
    need_ndim(w1, 4, "w1");
    need_ndim(w2, 4, "w2");
    need_ndim(w3, 2, "w3");
    need_ndim(bias, 2, "bias");
    SeaDecoderWeights w;
    w.C = int(w1.shape(0)); w.H = int(w1.shape(1)); w.W = int(bias.shape(1)); w.dil = dilation;
    const int B = int(est.shape(0)), T = int(est.shape(2));
    if (est.shape(1) != w.H || est.shape(3) != w.W || counts.shape(0) != T || counts.shape(1) != w.W ||
        w2.shape(0) != w.C || w2.shape(1) != w.C || w3.shape(0) != w.H || w3.shape(1) != w.C ||
        b1.size() != w.C || b2.size() != w.C || b3.size() != w.H || bias.shape(0) != w.H ||
        w1.shape(2) != 3 || w1.shape(3) != 3 || w2.shape(2) != 3 || w2.shape(3) != 3)
      throw py::value_error("sea decoder: weights, estimate and counts do not fit together");
    w.w1 = w1.data(); w.b1 = b1.data(); w.w2 = w2.data(); w.b2 = b2.data(); w.w3 = w3.data(); w.b3 = b3.data();
    w.bias = bias.data();
    FArr out({est.shape(0), est.shape(1), est.shape(2), est.shape(3)});
    float* op = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      sea_decoder_refine(est.data(), B, T, counts.data(), w, op);
    }
    return out;
  }, py::arg("est"), py::arg("counts"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("w3"),
     py::arg("b3"), py::arg("bias"), py::arg("dilation"));

  m.def("max_threads", []() { return omp_get_max_threads(); });
}
