// Routing Transformer attention inside clusters (Roy et al., TACL 2021), as
// lucidrains/routing-transformer 3f6c461 `KmeansAttention.forward` computes it at inference:
// per cluster, softmax(q . [mem_k; k] * scale) [mem_v; v] over its gathered queries and keys, the
// causal rule on original positions (memory keys always visible), the shared-QK self match set to
// -5e4; then `scatter_mean`: out_i = sum of the cluster outputs of query i / (their count + 1e-5).
// Each cluster is one work item of the tile engine (gathered query rows, memory keys as a row-major
// segment, the cluster's keys gathered in ascending position); the scatter is a second pass over
// (b, h) in cluster order (the reference's scatter_add order), so results do not depend on threads.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "engine.hpp"
#include "spattn/kernels.hpp"

namespace spattn {

void RoutingClustersView::check_against(const AttnShape& s) const {
  const auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (B != s.B || H != s.Hq)
    fail("routing clusters have (B, H) = (" + std::to_string(B) + ", " + std::to_string(H) + "), q has (" +
         std::to_string(s.B) + ", " + std::to_string(s.Hq) + ")");
  if (C < 1) fail("routing clusters: C must be >= 1, got " + std::to_string(C));
  if (wq < 0 || wq > s.Nq || wk < 0 || wk > s.Nk)
    fail("routing clusters: wq must lie in [0, Nq=" + std::to_string(s.Nq) + "] and wk in [0, Nk=" +
         std::to_string(s.Nk) + "], got wq=" + std::to_string(wq) + ", wk=" + std::to_string(wk));
  if (M < 0 || (M > 0 && (mem_k == nullptr || mem_v == nullptr)))
    fail("routing clusters: memory keys need mem_k and mem_v");
  if (shared_qk && s.Nq != s.Nk)
    fail("routing clusters: shared_qk needs Nq == Nk, got Nq=" + std::to_string(s.Nq) + ", Nk=" + std::to_string(s.Nk));
  std::vector<int> stamp(size_t(std::max(s.Nq, s.Nk)) + 1, -1);
  int tick = 0;
  const auto check_rows = [&](const int32_t* idx, int w, int n, const char* what) {
    for (long long row = 0; row < (long long)B * H * C; ++row, ++tick) {
      for (int j = 0; j < w; ++j) {
        const int32_t p = idx[size_t(row) * w + j];
        if (p < 0 || p >= n)
          fail(std::string("routing clusters: ") + what + " positions must lie in [0, " + std::to_string(n) +
               "), got " + std::to_string(p));
        if (stamp[size_t(p)] == tick)
          fail(std::string("routing clusters: ") + what + " positions must be distinct within a cluster, " +
               std::to_string(p) + " repeats");
        stamp[size_t(p)] = tick;
      }
    }
  };
  check_rows(q_idx, wq, s.Nq, "query");
  check_rows(k_idx, wk, s.Nk, "key");
}

namespace {

struct RoutingVariant {
  const AttnArgs& a;
  const RoutingClustersView& rc;
  float* clusters_out;  // (B, H, C, wq, Dv)
  struct Local {
    detail::GatheredKeys gk;
    std::vector<int32_t> keys;
    std::vector<int> mem_pos;
  };

  long long items() const { return (long long)rc.B * rc.H * rc.C; }
  // Work item of cluster c = it % C of (b, h); `part` carries c.
  detail::WorkItem item(long long it) const {
    detail::WorkItem w;
    w.part = int(it % rc.C);
    w.h0 = int((it / rc.C) % rc.H);
    w.b = int(it / ((long long)rc.C * rc.H));
    w.hk = w.h0 / a.shape.group();
    w.i0 = 0;
    w.i1 = rc.wq;
    return w;
  }
  Local local() const {
    // memory positions below every causal limit: always visible, never the self match
    return {detail::GatheredKeys(std::max(rc.wk, 1), a.shape.D, a.shape.Dv, rc.wq), std::vector<int32_t>(size_t(rc.wk)),
            std::vector<int>(size_t(rc.M), INT_MIN)};
  }
  size_t cluster(const detail::WorkItem& w) const { return (size_t(w.b) * rc.H + w.h0) * rc.C + size_t(w.part); }
  void queries(detail::TileScratch& t, const detail::WorkItem& w, Local&, float scale) const {
    t.load_query_rows(a, w.b, w.h0, rc.q_idx + cluster(w) * rc.wq, rc.wq, scale);
  }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a.shape;
    detail::OnlineSoftmax step{};
    step.self_logit = rc.shared_qk;
    step.self_value = rc.self_value;
    detail::SpanTiler<detail::OnlineSoftmax> tiler(step);
    const int rows = w.rows();
    if (rc.M > 0) {
      const size_t m0 = (size_t(w.h0) * rc.C + size_t(w.part)) * rc.M;
      const detail::KeySegment mem{nullptr, s.D, rc.mem_k + m0 * s.D, s.Dv > 0 ? rc.mem_v + m0 * s.Dv : nullptr,
                                   s.Dv, rc.M, 0, l.mem_pos.data()};
      tiler.add_segment(t, rows, mem, a.causal);
    }
    if (rc.wk > 0) {
      const int32_t* ki = rc.k_idx + cluster(w) * rc.wk;
      std::copy(ki, ki + rc.wk, l.keys.begin());
      std::sort(l.keys.begin(), l.keys.end());
      const int n = l.gk.gather(l.keys.data(), rc.wk, a.k + s.k_index(w.b, w.hk, 0), detail::value_head(a, w), s.D,
                                s.Dv);
      tiler.add_segment(t, rows, l.gk.segment(0, n, s.Dv), a.causal);
    }
    tiler.flush(t, rows);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    const int dv = a.shape.Dv;
    float* o = clusters_out + cluster(w) * rc.wq * dv;
    for (int r = 0; r < w.rows(); ++r) {
      float* orow = o + size_t(r) * dv;
      if (t.l[r] == 0.f) {  // no visible key: 0 (the row still counts in the mean)
        std::fill(orow, orow + dv, 0.f);
        continue;
      }
      const float inv = 1.f / t.l[r];
      const float* acc = t.acc.data() + size_t(r) * t.dv;
      for (int c = 0; c < dv; ++c) orow[c] = acc[c] * inv;
    }
  }
};

}  // namespace

void routing_attention(const AttnArgs& a, const RoutingClustersView& rc) {
  const AttnShape& s = a.shape;
  s.validate();
  if (a.kv != KVStorage::F32) throw std::invalid_argument("routing_attention: K/V must be float32");
  rc.check_against(s);
  const size_t dv = size_t(s.Dv);
  if (a.out != nullptr) std::fill(a.out, a.out + size_t(s.B) * s.Hq * s.Nq * dv, 0.f);
  if (a.lse != nullptr) std::fill(a.lse, a.lse + size_t(s.B) * s.Hq * s.Nq, std::numeric_limits<float>::quiet_NaN());
  if (rc.wq == 0 || a.out == nullptr || dv == 0) return;
  std::vector<float> clusters_out(size_t(rc.B) * rc.H * rc.C * rc.wq * dv);
  const RoutingVariant var{a, rc, clusters_out.data()};
  detail::run_tiles(a, var, rc.wq, s.Dv);
  // scatter_mean: sum in cluster order, then divide by (count + eps)
#pragma omp parallel
  {
    std::vector<float> count(static_cast<size_t>(s.Nq));
#pragma omp for schedule(static)
    for (long long bh = 0; bh < (long long)s.B * s.Hq; ++bh) {
      const int b = int(bh / s.Hq), h = int(bh % s.Hq);
      float* out = a.out + s.out_index(b, h, 0);
      std::fill(count.begin(), count.end(), 0.f);
      const int32_t* qi = rc.q_idx + size_t(bh) * rc.C * rc.wq;
      const float* src = clusters_out.data() + size_t(bh) * rc.C * rc.wq * dv;
      for (long long e = 0; e < (long long)rc.C * rc.wq; ++e) {
        float* o = out + size_t(qi[e]) * dv;
        const float* x = src + size_t(e) * dv;
        for (size_t c = 0; c < dv; ++c) o[c] += x[c];
        count[size_t(qi[e])] += 1.f;
      }
      for (int i = 0; i < s.Nq; ++i) {
        const float den = count[size_t(i)] + rc.eps;
        float* o = out + size_t(i) * dv;
        for (size_t c = 0; c < dv; ++c) o[c] = o[c] / den;
      }
    }
  }
}

}  // namespace spattn
