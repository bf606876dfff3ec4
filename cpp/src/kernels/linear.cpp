// Gated linear attention (chunked recurrence) and Sparse State Expansion; see spattn/linear.hpp.
#include "spattn/linear.hpp"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace spattn {

namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Largest |b| (cumulative log-decay) a chunk may reach: exp(+-kMaxExp) stays far inside double.
constexpr double kMaxExp = 600.0;

void gla_chunk(const float* q, const float* k, const float* g, const float* v, long long c0, long long C, int dk,
               int dv, long long ldq, long long ldk, long long ldg, long long ldv, double scale, MatD& S, float* out,
               long long ldo) {
  MatD b(C, dk);
  for (int d = 0; d < dk; ++d) {
    double acc = 0.0;
    for (long long t = 0; t < C; ++t) {
      acc += double(g[(c0 + t) * ldg + d]);
      b(t, d) = acc;
    }
  }
  if (C > 1 && -b.row(C - 1).minCoeff() > kMaxExp) {  // decays too strong for one chunk: split it
    const long long h = C / 2;
    gla_chunk(q, k, g, v, c0, h, dk, dv, ldq, ldk, ldg, ldv, scale, S, out, ldo);
    gla_chunk(q, k, g, v, c0 + h, C - h, dk, dv, ldq, ldk, ldg, ldv, scale, S, out, ldo);
    return;
  }
  MatD Qt(C, dk), Kt(C, dk), Kl(C, dk), V(C, dv);
  for (long long t = 0; t < C; ++t) {
    for (int d = 0; d < dk; ++d) {
      const double bt = b(t, d), bl = b(C - 1, d);
      Qt(t, d) = scale * double(q[(c0 + t) * ldq + d]) * std::exp(bt);
      const double kk = double(k[(c0 + t) * ldk + d]);
      Kt(t, d) = kk * std::exp(-bt);
      Kl(t, d) = kk * std::exp(bl - bt);
    }
    for (int e = 0; e < dv; ++e) V(t, e) = double(v[(c0 + t) * ldv + e]);
  }
  MatD A = Qt * Kt.transpose();
  for (long long t = 0; t < C; ++t)
    for (long long s = t + 1; s < C; ++s) A(t, s) = 0.0;
  const MatD O = Qt * S + A * V;
  for (long long t = 0; t < C; ++t)
    for (int e = 0; e < dv; ++e) out[(c0 + t) * ldo + e] = float(O(t, e));
  for (int d = 0; d < dk; ++d) S.row(d) *= std::exp(b(C - 1, d));
  S.noalias() += Kl.transpose() * V;
}

}  // namespace

void gla_recurrence(const float* q, const float* k, const float* g, const float* v, long long T, int dk, int dv,
                    long long ldq, long long ldk, long long ldg, long long ldv, float scale, double* state,
                    float* out, long long ldo, int chunk) {
  if (T <= 0) return;
  MatD S = Eigen::Map<MatD>(state, dk, dv);
  for (long long c0 = 0; c0 < T; c0 += chunk)
    gla_chunk(q, k, g, v, c0, std::min<long long>(chunk, T - c0), dk, dv, ldq, ldk, ldg, ldv, double(scale), S, out,
              ldo);
  Eigen::Map<MatD>(state, dk, dv) = S;
}

void SSEArgs::validate() const {
  const auto pos = [](const char* name, long long x) {
    if (x < 1) throw std::invalid_argument(std::string(name) + " must be >= 1, got " + std::to_string(x));
  };
  pos("B", B), pos("H", H), pos("dk", dk), pos("dv", dv), pos("N", N);
  if (L < 0) throw std::invalid_argument("L must be >= 0, got " + std::to_string(L));
  if (top_k < 1 || top_k > N)
    throw std::invalid_argument("top_k must lie in [1, N=" + std::to_string(N) + "], got " + std::to_string(top_k));
  if (!q1 || !k1 || !g1 || !q2 || !k2 || !g2 || !v || !router || !out)
    throw std::invalid_argument("sse_attention: q1, k1, g1, q2, k2, g2, v, router and out are required");
}

void sse_route(const float* router, int B, int L, int N, int top_k, float* prob, int* topk) {
#pragma omp parallel for schedule(static)
  for (long long bt = 0; bt < (long long)B * L; ++bt) {
    const float* e = router + bt * N;
    float* p = prob + bt * N;
    float m = e[0];
    for (int n = 1; n < N; ++n) m = std::max(m, e[n]);
    double sum = 0.0;
    for (int n = 0; n < N; ++n) sum += std::exp(double(e[n]) - m);
    for (int n = 0; n < N; ++n) p[n] = float(std::exp(double(e[n]) - m) / sum);
    std::vector<int> order(static_cast<size_t>(N));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return p[x] > p[y]; });
    std::copy_n(order.begin(), top_k, topk + bt * top_k);
  }
}

void sse_attention(const SSEArgs& a) {
  a.validate();
  const int B = a.B, H = a.H, L = a.L, dk = a.dk, dv = a.dv, N = a.N, K = a.top_k;
  std::vector<float> prob(static_cast<size_t>(B) * L * N);
  std::vector<int> topk(static_cast<size_t>(B) * L * K);
  if (L > 0) sse_route(a.router, B, L, N, K, prob.data(), topk.data());
  // Per (batch, partition): the routed positions in order.
  std::vector<std::vector<int>> members(static_cast<size_t>(B) * N);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < L; ++t)
      for (int j = 0; j < K; ++j) members[size_t(b) * N + topk[(size_t(b) * L + t) * K + j]].push_back(t);
  const size_t hk = size_t(dk) * dv;
  std::vector<float> part(static_cast<size_t>(B) * N * H * L * dv, 0.0f);  // each partition's output rows
  const long long work = (long long)B * H * (1 + N);
#pragma omp parallel for schedule(dynamic, 1)
  for (long long w = 0; w < work; ++w) {
    const int b = int(w / (H * (1 + N))), h = int((w / (1 + N)) % H), n = int(w % (1 + N)) - 1;
    const size_t row = (size_t(b) * H + h) * L;
    std::vector<double> S(hk, 0.0);
    double* st = a.state ? a.state + ((size_t(b) * (1 + N) + (n + 1)) * H + h) * hk : nullptr;
    if (st) std::copy_n(st, hk, S.data());
    if (n < 0) {
      gla_recurrence(a.q1 + row * dk, a.k1 + row * dk, a.g1 + row * dk, a.v + row * dv, L, dk, dv, dk, dk, dk, dv,
                     a.scale, S.data(), a.out + row * dv, dv);
    } else {
      const std::vector<int>& m = members[size_t(b) * N + n];
      const long long T = (long long)m.size();
      std::vector<float> q(size_t(T) * dk), k(size_t(T) * dk), g(size_t(T) * dk), v(size_t(T) * dv),
          o(size_t(T) * dv);
      for (long long i = 0; i < T; ++i) {
        const size_t src = row + size_t(m[size_t(i)]);
        const float p = prob[(size_t(b) * L + m[size_t(i)]) * N + n];
        for (int d = 0; d < dk; ++d) {
          q[size_t(i) * dk + d] = a.q2[src * dk + d] * (a.emulq ? p : 1.0f);
          k[size_t(i) * dk + d] = a.k2[src * dk + d] * (a.emulk ? p : 1.0f);
          g[size_t(i) * dk + d] = a.g2[src * dk + d];
        }
        std::copy_n(a.v + src * dv, dv, v.data() + size_t(i) * dv);
      }
      gla_recurrence(q.data(), k.data(), g.data(), v.data(), T, dk, dv, dk, dk, dk, dv, a.scale, S.data(), o.data(),
                     dv);
      float* dst = part.data() + ((size_t(b) * N + n) * H + h) * size_t(L) * dv;
      for (long long i = 0; i < T; ++i) std::copy_n(o.data() + size_t(i) * dv, dv, dst + size_t(m[size_t(i)]) * dv);
    }
    if (st) std::copy_n(S.data(), hk, st);
  }
  // o = shared + sum of the partitions' rows (rows a partition did not hold are zero).
#pragma omp parallel for schedule(static)
  for (long long bh = 0; bh < (long long)B * H; ++bh) {
    const int b = int(bh / H), h = int(bh % H);
    float* o = a.out + size_t(bh) * L * dv;
    for (int n = 0; n < N; ++n) {
      const float* src = part.data() + ((size_t(b) * N + n) * H + h) * size_t(L) * dv;
      for (size_t i = 0; i < size_t(L) * dv; ++i) o[i] += src[i];
    }
  }
}

}  // namespace spattn
