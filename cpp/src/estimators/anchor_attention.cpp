// AnchorAttention's estimator (see the header for the rule and the official functions it follows):
// the anchors through the tile engine (an online-softmax pass over R(i) without values, whose
// running maximum is the anchor), the pooled logits of each big block's sub-blocks against the
// candidate keys through the SIMD row-major product, then the difference-aware stripe test.
#include "spattn/estimators/anchor_attention.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "../kernels/engine.hpp"

namespace spattn {

void AnchorAttentionParams::validate() const {
  require_min("anchor_attention", "block_size", block_size, 1);
  require_min("anchor_attention", "step", step, 1);
  if ((long long)block_size * step > INT_MAX)
    param_error("anchor_attention", "block_size * step", "be <= 2**31 - 1", (long long)block_size * step);
  if (!std::isfinite(theta)) param_error("anchor_attention", "theta", "be finite", theta);
}

namespace {

// Step 1: a_i = max over R(i) = [0, min(G, i + 1)) and [g G, i] of the scaled logits, per query
// head, as the running maximum of an online-softmax pass without values. Work items stack the
// query heads of a GQA group over `bq` query rows that lie in one big block.
struct AnchorVariant {
  const AttnArgs& a;  // statistics arguments (no values)
  const detail::TransposedK& kt;
  long long G;
  int bq, nqt;
  float* anchors;
  using Local = int;

  long long items() const { return (long long)a.shape.B * a.shape.Hkv * nqt; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a.shape, it, bq, nqt); }
  Local local() const { return 0; }
  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    const int kend = detail::key_end(a, w);
    const long long g = w.i0 / G;
    const int init_end = int(std::min<long long>(G, kend));
    detail::run_key_span(t, w.rows(), kt, w.b, w.hk, nullptr, 0, 0, init_end, true, w.i0);
    if (g >= 1) detail::run_key_span(t, w.rows(), kt, w.b, w.hk, nullptr, 0, int(g * G), kend, true, w.i0);
  }
  void finish(const detail::TileScratch& t, const detail::WorkItem& w, Local&) const {
    for (int h = 0; h < w.stack; ++h)
      for (int r = 0; r < w.n(); ++r) anchors[a.shape.row_index(w.b, w.h0 + h, w.i0 + r)] = t.m[h * w.n() + r];
  }
};

// Query rows per head of an anchor work item: a multiple of block_size dividing G, near 64 rows.
int anchor_rows(const AnchorAttentionParams& p) {
  int f = 1;
  for (int d = 1; d <= p.step; ++d)
    if (p.step % d == 0 && (long long)p.block_size * d <= 64) f = d;
  return p.block_size * f;
}

void compute_anchors(const AttnArgs& qk, const AnchorAttentionParams& p, float* anchors) {
  const AttnShape& s = qk.shape;
  const int bq = anchor_rows(p);
  const int rows = s.group() * std::min(bq, s.Nq);
  const AttnArgs sa = detail::statistics_args(qk);
  const detail::TransposedK kt(sa, detail::use_transposed_k(rows));
  const AnchorVariant var{sa, kt, p.big_block(), bq, ceil_div(s.Nq, bq), anchors};
  detail::run_tiles(sa, var, rows, 0);
}

// Keys per chunk of the pooled-logit product (bounds its scratch).
constexpr int kKeyChunk = 1024;

}  // namespace

AnchorAttentionEstimate estimate_anchor_attention(const AttnArgs& qk, const AnchorAttentionParams& p) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (!qk.causal) throw std::invalid_argument("anchor_attention: defined for causal attention only");
  if (s.Nq != s.Nk)
    throw std::invalid_argument("anchor_attention: prefill only (Nq == Nk), got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  const int N = s.Nq, D = s.D, Gq = s.group(), b = p.block_size;
  const long long G = p.big_block();
  AnchorAttentionEstimate e;
  e.groups = N == 0 ? 0 : int((N + G - 1) / G);
  e.group_size = int(std::max<long long>(1, std::min<long long>(G, N)));
  e.anchors.assign(size_t(s.B) * s.Hq * N, 0.f);
  const size_t rows_out = size_t(s.B) * s.Hq * e.groups;
  e.counts.assign(rows_out, 0);
  if (N == 0) return e;
  compute_anchors(qk, p, e.anchors.data());

  // Step 2, per (batch, kv head, big block): pooled queries and anchors of the group's heads, the
  // pooled logits against the candidates in chunks, a key kept for head h when some sub-block r of
  // h passes scale qbar_r . k_j + theta >= abar_r.
  const float scale = qk.effective_scale();
  const float theta = p.theta;
  std::vector<std::vector<int32_t>> found(rows_out);
  const long long items = (long long)s.B * s.Hkv * e.groups;
  const simd::Kernels& kern = simd::kernels();
#pragma omp parallel
  {
    std::vector<float> qbar, abar, S;
    std::vector<double> sum;
#pragma omp for schedule(dynamic, 1)
    for (long long it = 0; it < items; ++it) {
      const int g = int(it % e.groups);
      const int hk = int((it / e.groups) % s.Hkv);
      const int bb = int(it / ((long long)e.groups * s.Hkv));
      const long long c0 = p.official_candidates ? b : G;
      const long long c1 = std::min<long long>(N, p.official_candidates ? g * G - b : g * G);
      if (c1 <= c0) continue;
      const int q0 = int(g * G), q1 = int(std::min<long long>(N, (g + 1) * G));
      const int nsub = ceil_div(q1 - q0, b);
      const int R = Gq * nsub;  // pooled rows: sub-block r of stacked head h at h * nsub + r
      qbar.assign(size_t(R) * D, 0.f);
      abar.assign(size_t(R), 0.f);
      for (int h = 0; h < Gq; ++h) {
        const int hq = hk * Gq + h;
        const float* qh = qk.q + s.q_index(bb, hq, 0);
        const float* ah = e.anchors.data() + s.row_index(bb, hq, 0);
        for (int r = 0; r < nsub; ++r) {
          const int i0 = q0 + r * b, i1 = std::min(q1, i0 + b);
          sum.assign(static_cast<size_t>(D), 0.0);
          double asum = 0.0;
          for (int i = i0; i < i1; ++i) {
            const float* row = qh + size_t(i) * D;
            for (int d = 0; d < D; ++d) sum[size_t(d)] += row[d];
            asum += ah[i];
          }
          float* out = qbar.data() + (size_t(h) * nsub + r) * D;
          for (int d = 0; d < D; ++d) out[d] = float(sum[size_t(d)] / (i1 - i0));
          abar[size_t(h) * nsub + r] = float(asum / (i1 - i0));
        }
      }
      const float* kh = qk.k + s.k_index(bb, hk, 0);
      for (long long j0 = c0; j0 < c1; j0 += kKeyChunk) {
        const int len = int(std::min<long long>(kKeyChunk, c1 - j0));
        S.resize(size_t(R) * len);
        kern.qk_rowmajor(qbar.data(), R, D, kh + size_t(j0) * D, D, len, S.data(), len);
        for (int h = 0; h < Gq; ++h) {
          std::vector<int32_t>& list = found[(size_t(bb) * s.Hq + hk * Gq + h) * e.groups + g];
          for (int c = 0; c < len; ++c) {
            bool keep = false;
            for (int r = 0; r < nsub && !keep; ++r)
              keep = S[(size_t(h) * nsub + r) * len + c] * scale + theta >= abar[size_t(h) * nsub + r];
            if (keep) list.push_back(int32_t(j0 + c));
          }
        }
      }
    }
  }

  // Stripes as the official (true_coords, true_counts), and the attended key sets:
  // [0, min(G, N)), the stripes not already in it, and the own big block [g G, min((g + 1) G, N)).
  const int init_end = int(std::min<long long>(G, N));
  std::vector<int> len(rows_out);
  for (size_t row = 0; row < rows_out; ++row) {
    const int g = int(row % e.groups);
    const std::vector<int32_t>& st = found[row];
    e.counts[row] = int32_t(st.size());
    e.S = std::max(e.S, int(st.size()));
    const long long above = st.end() - std::lower_bound(st.begin(), st.end(), init_end);
    const int own = g == 0 ? 0 : int(std::min<long long>(N, (g + 1) * G) - g * G);
    len[row] = int(init_end + above + own);
    e.K = std::max(e.K, len[row]);
  }
  e.stripes.assign(rows_out * size_t(e.S), -1);
  e.indices.assign(rows_out * size_t(e.K), -1);
#pragma omp parallel for schedule(static)
  for (long long row = 0; row < (long long)rows_out; ++row) {
    const int g = int(row % e.groups);
    const std::vector<int32_t>& st = found[size_t(row)];
    std::copy(st.begin(), st.end(), e.stripes.begin() + size_t(row) * e.S);
    int32_t* out = e.indices.data() + size_t(row) * e.K;
    int n = 0;
    for (int j = 0; j < init_end; ++j) out[n++] = j;
    for (int32_t j : st)
      if (j >= init_end) out[n++] = j;
    if (g >= 1)
      for (long long j = g * G; j < std::min<long long>(N, (g + 1) * G); ++j) out[n++] = int32_t(j);
  }
  return e;
}

}  // namespace spattn
