// InfLLM-V2's block selection (see spattn/estimators/infllmv2.hpp for the rule and its sources).
// The stage-1 scores run on the tile engine: per work item (batch, kv head, a tile of query rows,
// the group's query heads stacked) an OnlineSoftmax pass over k2 gives each row's compressed lse,
// then a ProbabilitySweep over k1 hands exp(q.k1 scale - lse) to a reducer that sums the group's
// heads into the item's (rows x C1) score buffer; pooling, forcing and top-k follow in finish().
// Visibility of compressed token j (kernel w, stride s) to a query at position t: t >= s j + w - 1
// (the official reference masks j < (t - s + 1) // s, the same rule for w = 2 s, the default).
// Memory: per thread (rows x C1) scores; no Nq x Nk buffer.
#include "spattn/estimators/infllmv2.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../kernels/engine.hpp"
#include "spattn/selection.hpp"

namespace spattn {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

long long floor_div(long long a, long long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Largest compressed index visible at position t (-1: none).
int last_visible(long long t, int kernel, int stride) {
  return int(std::max<long long>(-1, floor_div(t - kernel + 1, stride)));
}

struct GroupSum {
  float* score;  // (n rows, C1)
  int n, C1;
  void operator()(int r, const float* p, const int* pos, int cnt) {
    float* row = score + size_t(r % n) * C1;
    for (int c = 0; c < cnt; ++c) row[pos[c]] += p[c];
  }
};

struct Stage1Variant {
  const AttnArgs& a1;  // q against k1 (Nk = C1)
  const detail::TransposedK& kt1;
  const detail::TransposedK& kt2;
  const InfLLMv2Params& p;
  int C1 = 0, C2 = 0, Nk = 0, nq_tile = 1, ntiles = 1, K = 0, nblocks = 0;
  int32_t* out = nullptr;  // (B, Hkv, Nq, K)

  struct Local {
    std::vector<float> score, row_lse, block;
  };
  long long items() const { return (long long)a1.shape.B * a1.shape.Hkv * ntiles; }
  detail::WorkItem item(long long it) const { return detail::grouped_item(a1.shape, it, nq_tile, ntiles); }
  Local local() const { return {}; }

  long long position(int i) const { return (long long)i + Nk - a1.shape.Nq; }

  void keys(detail::TileScratch& t, const detail::WorkItem& w, Local& l) const {
    const int n = w.n(), rows = w.rows();
    l.score.assign(size_t(n) * C1, 0.f);
    l.row_lse.assign(size_t(rows), detail::kNegInf);
    // pass 1: compressed lse over the visible k2 tokens
    int min_lim = std::numeric_limits<int>::max();
    for (int r = 0; r < rows; ++r) {
      t.qlim[r] = last_visible(position(w.i0 + r % n), 4 * p.kernel_size, 4 * p.kernel_stride);
      min_lim = std::min(min_lim, t.qlim[r]);
    }
    detail::run_key_span(t, rows, kt2, w.b, w.hk, nullptr, 0, 0, C2, true, min_lim);
    for (int r = 0; r < rows; ++r) l.row_lse[r] = t.l[r] == 0.f ? detail::kNegInf : t.m[r] + std::log(t.l[r]);
    // pass 2: exp(s - lse) over the visible k1 tokens, summed over the group's heads
    min_lim = std::numeric_limits<int>::max();
    for (int r = 0; r < rows; ++r) {
      t.qlim[r] = last_visible(position(w.i0 + r % n), p.kernel_size, p.kernel_stride);
      min_lim = std::min(min_lim, t.qlim[r]);
    }
    GroupSum reduce{l.score.data(), n, C1};
    const detail::ProbabilitySweep<GroupSum> step{l.row_lse.data(), reduce};
    detail::run_key_span(t, rows, kt1, w.b, w.hk, nullptr, 0, 0, C1, true, min_lim, step);
    // rows without a visible k2 token: lse = -inf and exp(s + inf) = +inf on their visible k1
    // tokens, as the reference computes (the sweep skips such rows)
    for (int r = 0; r < rows; ++r) {
      if (l.row_lse[r] != detail::kNegInf) continue;
      const int lim = std::min(t.qlim[r], C1 - 1);
      float* row = l.score.data() + size_t(r % n) * C1;
      for (int j = 0; j <= lim; ++j) row[j] += kInf;
    }
  }

  void finish(const detail::TileScratch&, const detail::WorkItem& w, Local& l) const {
    const AttnShape& s = a1.shape;
    const int r = p.block_size / p.kernel_stride, local_blocks = p.local_blocks();
    l.block.resize(size_t(nblocks));
    for (int i = w.i0; i < w.i1; ++i) {
      float* sc = l.score.data() + size_t(i - w.i0) * C1;
      for (int j = 0; j < C1; ++j)
        if (std::isnan(sc[j])) sc[j] = 0.f;
      const long long qb = floor_div(position(i), p.block_size);
      for (int b = 0; b < nblocks; ++b) {
        if (b < p.init_blocks || (qb >= b && qb <= (long long)b + local_blocks)) {
          l.block[b] = kInf;
          continue;
        }
        const int j0 = std::max(0, b * r - 1), j1 = std::min(C1, b * r + r);
        float mx = detail::kNegInf;
        if (j1 > j0) {
          mx = sc[j0];
          for (int j = j0 + 1; j < j1; ++j) mx = std::max(mx, sc[j]);
        }
        l.block[b] = mx;
      }
      std::vector<int> top = topk_select(l.block.data(), nblocks, K);
      std::sort(top.begin(), top.end());
      int32_t* o = out + ((size_t(w.b) * s.Hkv + w.hk) * s.Nq + i) * size_t(K);
      for (int c = 0; c < K; ++c) o[c] = top[c] > qb ? -1 : top[c];
    }
  }
};

}  // namespace

void InfLLMv2Params::validate() const {
  require_min("infllmv2", "kernel_size", kernel_size, 1);
  require_min("infllmv2", "kernel_stride", kernel_stride, 1);
  require_min("infllmv2", "block_size", block_size, 1);
  require_min("infllmv2", "init_blocks", init_blocks, 0);
  require_min("infllmv2", "window_size", window_size, 0);
  require_min("infllmv2", "topk", topk, 0);
  require_min("infllmv2", "dense_len", dense_len, 0);
  if (block_size % kernel_stride != 0)
    throw std::invalid_argument("infllmv2: block_size must be a multiple of kernel_stride (max pooling over " +
                                std::string("block_size / kernel_stride compressed tokens), got block_size=") +
                                std::to_string(block_size) + ", kernel_stride=" + std::to_string(kernel_stride));
  if ((long long)kernel_size * 4 > std::numeric_limits<int>::max() / 2 ||
      (long long)kernel_stride * 4 > std::numeric_limits<int>::max() / 2)
    throw std::invalid_argument("infllmv2: kernel_size and kernel_stride must be below 2^28");
}

std::vector<float> mean_pooled_keys(const AttnArgs& qk, int kernel, int stride, int* C_out) {
  const AttnShape& s = qk.shape;
  const int C = s.Nk >= kernel ? (s.Nk - kernel) / stride + 1 : 0;
  *C_out = C;
  std::vector<float> out(size_t(s.B) * s.Hkv * C * s.D);
  const float inv = 1.f / float(kernel);
#pragma omp parallel for schedule(static)
  for (long long u = 0; u < (long long)s.B * s.Hkv * C; ++u) {
    const int j = int(u % C), bh = int(u / C);
    const float* k = qk.k + s.k_index(bh / s.Hkv, bh % s.Hkv, j * stride);
    float* o = out.data() + size_t(u) * s.D;
    std::vector<double> acc(static_cast<size_t>(s.D), 0.0);
    for (int r = 0; r < kernel; ++r)
      for (int d = 0; d < s.D; ++d) acc[d] += k[size_t(r) * s.D + d];
    for (int d = 0; d < s.D; ++d) o[d] = float(acc[d]) * inv;
  }
  return out;
}

std::vector<int32_t> estimate_infllmv2(const AttnArgs& qk, const InfLLMv2Params& p, int* K_out) {
  p.validate();
  const AttnShape& s = qk.shape;
  s.validate();
  if (!qk.causal) throw std::invalid_argument("infllmv2: the method is defined for causal attention only");
  const int nblocks = ceil_div(s.Nk, p.block_size);
  if (s.Nk < p.dense_len) {  // dense: every block up to the query's own
    *K_out = nblocks;
    std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * nblocks, -1);
    for (size_t row = 0; row < size_t(s.B) * s.Hkv * s.Nq; ++row) {
      const long long t = (long long)(row % size_t(s.Nq)) + s.Nk - s.Nq;
      const long long qb = floor_div(t, p.block_size);
      for (int b = 0; b < nblocks && b <= qb; ++b) out[row * nblocks + b] = b;
    }
    return out;
  }
  const int K = int(std::min<long long>((long long)p.topk + p.local_blocks(), nblocks));
  *K_out = K;
  std::vector<int32_t> out(size_t(s.B) * s.Hkv * s.Nq * K, -1);
  if (s.Nq == 0 || K == 0) return out;
  int C1 = 0, C2 = 0;
  const std::vector<float> k1 = mean_pooled_keys(qk, p.kernel_size, p.kernel_stride, &C1);
  const std::vector<float> k2 = mean_pooled_keys(qk, 4 * p.kernel_size, 4 * p.kernel_stride, &C2);
  AttnArgs a1 = detail::statistics_args(qk), a2 = detail::statistics_args(qk);
  a1.k = k1.data();
  a1.shape.Nk = C1;
  a1.shape.kv_capacity = 0;
  a2.k = k2.data();
  a2.shape.Nk = C2;
  a2.shape.kv_capacity = 0;
  const int G = s.group();
  const int nq_tile = std::max(1, std::min(s.Nq, detail::kRowsTarget / 4 / G));
  const bool transposed = detail::use_transposed_k(G * nq_tile);
  const detail::TransposedK kt1(a1, transposed), kt2(a2, transposed);
  Stage1Variant var{a1, kt1, kt2, p};
  var.C1 = C1;
  var.C2 = C2;
  var.Nk = s.Nk;
  var.nq_tile = nq_tile;
  var.ntiles = ceil_div(s.Nq, nq_tile);
  var.K = K;
  var.nblocks = nblocks;
  var.out = out.data();
  detail::run_tiles(a1, var, G * nq_tile, 0);
  return out;
}

}  // namespace spattn
