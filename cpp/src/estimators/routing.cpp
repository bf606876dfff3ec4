// Routing Transformer routing and online k-means (see the header for the reference it follows).
// Similarities x . mu are the SIMD row-major product (qk_rowmajor) on chunks of normalised rows;
// the top-W tokens of each cluster are kept in a bounded heap per cluster, so memory is
// O(C * W + chunk * C) per thread and no (tokens x clusters) matrix is stored.
#include "spattn/estimators/routing.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "../simd/simd.hpp"

namespace spattn {

void RoutingParams::validate() const {
  require_min("routing", "window_size", window_size, 1);
  require_min("routing", "num_clusters", num_clusters, 0);
  if (num_clusters > kMaxClusters) param_error("routing", "num_clusters", "be <= 65536", num_clusters);
  require_min("routing", "kmeans_init_iters", kmeans_init_iters, 0);
  if (kmeans_init_iters > kMaxInitIters) param_error("routing", "kmeans_init_iters", "be <= 1000", kmeans_init_iters);
  if (!(ema_decay >= 0.f && ema_decay <= 1.f)) param_error("routing", "ema_decay", "be in [0, 1]", ema_decay);
  if (!(commitment >= 0.f) || std::isinf(commitment))
    param_error("routing", "commitment", "be finite and >= 0", commitment);
}

namespace {

constexpr int kChunk = 64;  // token rows per similarity product

// F.normalize(x, dim=-1): x / max(||x||, 1e-12) (norm accumulated in double).
void normalize_row(const float* x, int d, float* out) {
  double ss = 0.0;
  for (int p = 0; p < d; ++p) ss += double(x[p]) * x[p];
  const float nrm = std::max(float(std::sqrt(ss)), 1e-12f);
  for (int p = 0; p < d; ++p) out[p] = x[p] / nrm;
}

// torch.topk order: NaN above every number, larger values first, ties to the lower position.
bool ranks_above(float va, int ia, float vb, int ib) {
  const bool na = std::isnan(va), nb = std::isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

struct Entry {
  float v;
  int i;
};

// One bounded heap per cluster keeping its `cap` best tokens (heap top = the worst kept).
struct ClusterHeaps {
  int C, cap;
  std::vector<Entry> data;  // (C, cap)
  std::vector<int> size;
  ClusterHeaps(int C_, int cap_) : C(C_), cap(cap_), data(size_t(C_) * cap_), size(C_, 0) {}
  static bool worse_first(const Entry& a, const Entry& b) { return ranks_above(a.v, a.i, b.v, b.i); }
  void offer(int c, float v, int i) {
    Entry* h = data.data() + size_t(c) * cap;
    int& n = size[size_t(c)];
    if (n < cap) {
      h[n++] = {v, i};
      std::push_heap(h, h + n, worse_first);
    } else if (ranks_above(v, i, h[0].v, h[0].i)) {
      std::pop_heap(h, h + n, worse_first);
      h[n - 1] = {v, i};
      std::push_heap(h, h + n, worse_first);
    }
  }
  // Positions of cluster c, best first.
  void take(int c, int32_t* out) {
    Entry* h = data.data() + size_t(c) * cap;
    const int n = size[size_t(c)];
    std::sort_heap(h, h + n, worse_first);
    for (int r = 0; r < n; ++r) out[r] = h[r].i;
  }
};

// Offer rows [0, n) of x (row stride d) to the heaps, normalised, scored against mu (C x d).
void route_rows(const float* x, int n, int d, const float* mu, int C, ClusterHeaps& heaps, std::vector<float>& xn,
                std::vector<float>& S) {
  const simd::Kernels& kern = simd::kernels();
  for (int r0 = 0; r0 < n; r0 += kChunk) {
    const int rows = std::min(kChunk, n - r0);
    for (int r = 0; r < rows; ++r) normalize_row(x + size_t(r0 + r) * d, d, xn.data() + size_t(r) * d);
    kern.qk_rowmajor(xn.data(), rows, d, mu, d, C, S.data(), C);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < C; ++c) heaps.offer(c, S[size_t(r) * C + c], r0 + r);
  }
}

}  // namespace

RoutingAssignment route_routing(const AttnArgs& qk, const float* centroids, int C, const RoutingParams& p) {
  const AttnShape& s = qk.shape;
  p.validate();
  if (C < 1) throw std::invalid_argument("routing: the number of clusters must be >= 1, got " + std::to_string(C));
  if (p.shared_qk && s.Nq != s.Nk)
    throw std::invalid_argument("routing: shared_qk needs Nq == Nk, got Nq=" + std::to_string(s.Nq) +
                                ", Nk=" + std::to_string(s.Nk));
  RoutingAssignment r;
  r.B = s.B;
  r.H = s.Hq;
  r.C = C;
  r.wq = std::min(p.window_size, s.Nq);
  r.wk = p.shared_qk ? r.wq : std::min(p.window_size, s.Nk);
  r.q_idx.assign(size_t(s.B) * s.Hq * C * r.wq, 0);
  r.k_idx.assign(size_t(s.B) * s.Hq * C * r.wk, 0);
  const int D = s.D;
#pragma omp parallel
  {
    std::vector<float> xn(size_t(kChunk) * D), S(size_t(kChunk) * C);
#pragma omp for schedule(dynamic, 1)
    for (long long bh = 0; bh < (long long)s.B * s.Hq; ++bh) {
      const int b = int(bh / s.Hq), h = int(bh % s.Hq), hk = h / s.group();
      const float* mu = centroids + size_t(h) * C * D;
      if (r.wq > 0) {
        ClusterHeaps heaps(C, r.wq);
        route_rows(qk.q + s.q_index(b, h, 0), s.Nq, D, mu, C, heaps, xn, S);
        for (int c = 0; c < C; ++c) heaps.take(c, r.q_idx.data() + (size_t(bh) * C + c) * r.wq);
      }
      if (p.shared_qk) {
        std::copy_n(r.q_idx.data() + size_t(bh) * C * r.wq, size_t(C) * r.wq, r.k_idx.data() + size_t(bh) * C * r.wk);
      } else if (r.wk > 0) {
        ClusterHeaps heaps(C, r.wk);
        route_rows(qk.k + s.k_index(b, hk, 0), s.Nk, D, mu, C, heaps, xn, S);
        for (int c = 0; c < C; ++c) heaps.take(c, r.k_idx.data() + (size_t(bh) * C + c) * r.wk);
      }
    }
  }
  return r;
}

std::vector<float> routing_kmeans_step(const float* x, int H, long long n, int D, const float* means, int C,
                                       bool normalize, int32_t* buckets) {
  if (C < 1 || D < 1 || H < 1 || n < 0)
    throw std::invalid_argument("routing: k-means needs H, C, D >= 1 and n >= 0");
  std::vector<float> out(means, means + size_t(H) * C * D);
  const simd::Kernels& kern = simd::kernels();
#pragma omp parallel
  {
    std::vector<float> xn(size_t(kChunk) * D), S(size_t(kChunk) * C);
    std::vector<double> sums(size_t(C) * D);
    std::vector<long long> count(static_cast<size_t>(C));
#pragma omp for schedule(dynamic, 1)
    for (int h = 0; h < H; ++h) {
      const float* xh = x + size_t(h) * n * D;
      const float* mu = means + size_t(h) * C * D;
      std::fill(sums.begin(), sums.end(), 0.0);
      std::fill(count.begin(), count.end(), 0LL);
      for (long long r0 = 0; r0 < n; r0 += kChunk) {
        const int rows = int(std::min<long long>(kChunk, n - r0));
        for (int r = 0; r < rows; ++r) {
          const float* src = xh + size_t(r0 + r) * D;
          if (normalize) normalize_row(src, D, xn.data() + size_t(r) * D);
          else std::copy_n(src, D, xn.data() + size_t(r) * D);
        }
        kern.qk_rowmajor(xn.data(), rows, D, mu, D, C, S.data(), C);
        for (int r = 0; r < rows; ++r) {
          const float* sr = S.data() + size_t(r) * C;
          int best = 0;  // torch.max: the first maximum; a NaN wins over numbers
          for (int c = 1; c < C; ++c)
            if (!std::isnan(sr[best]) && (std::isnan(sr[c]) || sr[c] > sr[best])) best = c;
          if (buckets != nullptr) buckets[size_t(h) * n + size_t(r0 + r)] = best;
          ++count[size_t(best)];
          const float* xr = xn.data() + size_t(r) * D;
          double* acc = sums.data() + size_t(best) * D;
          for (int p = 0; p < D; ++p) acc[p] += xr[p];
        }
      }
      for (int c = 0; c < C; ++c) {
        if (count[size_t(c)] == 0) continue;  // empty cluster keeps its centroid
        const double* acc = sums.data() + size_t(c) * D;
        double ss = 0.0;
        for (int p = 0; p < D; ++p) ss += acc[p] * acc[p];
        const double nrm = std::max(std::sqrt(ss), 1e-12);
        float* o = out.data() + (size_t(h) * C + c) * D;
        for (int p = 0; p < D; ++p) o[p] = float(acc[p] / nrm);
      }
    }
  }
  return out;
}

std::vector<int32_t> routing_token_indices(const RoutingAssignment& r, int Nq, int Nk, bool causal, int* kmax) {
  const long long heads = (long long)r.B * r.H;
  std::vector<std::vector<int32_t>> rows(size_t(heads) * Nq);
  const int off = Nk - Nq;
#pragma omp parallel
  {
    std::vector<int> start(size_t(Nq) + 1), fill(static_cast<size_t>(Nq)), member;
#pragma omp for schedule(dynamic, 1)
    for (long long bh = 0; bh < heads; ++bh) {
      // clusters of each query (CSR), then the union of their keys
      const int32_t* qi = r.q_idx.data() + size_t(bh) * r.C * r.wq;
      const int32_t* ki = r.k_idx.data() + size_t(bh) * r.C * r.wk;
      std::fill(start.begin(), start.end(), 0);
      for (long long e = 0; e < (long long)r.C * r.wq; ++e) ++start[size_t(qi[e]) + 1];
      for (int i = 0; i < Nq; ++i) start[size_t(i) + 1] += start[size_t(i)];
      member.assign(size_t(start[size_t(Nq)]), 0);
      std::copy(start.begin(), start.end() - 1, fill.begin());
      for (int c = 0; c < r.C; ++c)
        for (int j = 0; j < r.wq; ++j) member[size_t(fill[size_t(qi[size_t(c) * r.wq + j])]++)] = c;
      for (int i = 0; i < Nq; ++i) {
        std::vector<int32_t>& keys = rows[size_t(bh) * Nq + i];
        for (int e = start[size_t(i)]; e < start[size_t(i) + 1]; ++e) {
          const int32_t* kc = ki + size_t(member[size_t(e)]) * r.wk;
          for (int j = 0; j < r.wk; ++j)
            if (!causal || kc[j] <= i + off) keys.push_back(kc[j]);
        }
        std::sort(keys.begin(), keys.end());
        keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      }
    }
  }
  size_t K = 0;
  for (const auto& k : rows) K = std::max(K, k.size());
  K = std::max<size_t>(K, 1);
  *kmax = int(K);
  std::vector<int32_t> idx(rows.size() * K, -1);
  for (size_t q = 0; q < rows.size(); ++q) std::copy(rows[q].begin(), rows[q].end(), idx.begin() + q * K);
  return idx;
}

}  // namespace spattn
