// The chunked GLA recurrence and SSE against the token-by-token loop of fla's
// naive_recurrent_gla (S = diag(exp(g)) S + k v^T, o = scale q^T S), run per partition on the
// routed subsequence as SSEGLA's varlen path does.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "spattn/linear.hpp"

namespace {

std::vector<float> randn(size_t n, std::mt19937& rng, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> x(n);
  for (float& y : x) y = d(rng);
  return x;
}

// Token-by-token reference, rows contiguous.
void naive_gla(const float* q, const float* k, const float* g, const float* v, int T, int dk, int dv, double scale,
               std::vector<double>& S, double* out) {
  for (int t = 0; t < T; ++t) {
    for (int d = 0; d < dk; ++d)
      for (int e = 0; e < dv; ++e)
        S[size_t(d) * dv + e] = S[size_t(d) * dv + e] * std::exp(double(g[t * dk + d])) + double(k[t * dk + d]) * v[t * dv + e];
    for (int e = 0; e < dv; ++e) {
      double acc = 0.0;
      for (int d = 0; d < dk; ++d) acc += scale * q[t * dk + d] * S[size_t(d) * dv + e];
      out[size_t(t) * dv + e] = acc;
    }
  }
}

TEST(Linear, ChunkedGlaMatchesTheStepLoopAcrossChunksAndStrongDecays) {
  std::mt19937 rng(7);
  for (int T : {1, 5, 64, 150}) {
    for (float decay : {0.05f, 30.0f}) {  // 30: cumulative decays beyond the exponent range -> split chunks
      const int dk = 12, dv = 7;
      auto q = randn(size_t(T) * dk, rng), k = randn(size_t(T) * dk, rng), v = randn(size_t(T) * dv, rng);
      auto g = randn(size_t(T) * dk, rng);
      for (float& x : g) x = -std::abs(x) * decay;
      std::vector<double> S0(size_t(dk) * dv), S1(size_t(dk) * dv);
      for (size_t i = 0; i < S0.size(); ++i) S0[i] = S1[i] = 0.01 * double(i % 5);
      std::vector<double> ref(size_t(T) * dv);
      naive_gla(q.data(), k.data(), g.data(), v.data(), T, dk, dv, 0.3, S0, ref.data());
      std::vector<float> out(size_t(T) * dv);
      spattn::gla_recurrence(q.data(), k.data(), g.data(), v.data(), T, dk, dv, dk, dk, dk, dv, 0.3f, S1.data(),
                             out.data(), dv, 16);
      for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 1e-4 * (1 + std::abs(ref[i]))) << T << " " << i;
      for (size_t i = 0; i < S0.size(); ++i) EXPECT_NEAR(S1[i], S0[i], 1e-6 * (1 + std::abs(S0[i])));
    }
  }
}

TEST(Linear, SseSumsTheSharedStateAndTheRoutedPartitions) {
  std::mt19937 rng(3);
  const int B = 2, H = 2, L = 41, dk = 8, dv = 6, N = 4, K = 2;
  const size_t nk = size_t(B) * H * L * dk, nv = size_t(B) * H * L * dv;
  auto q1 = randn(nk, rng), k1 = randn(nk, rng), q2 = randn(nk, rng), k2 = randn(nk, rng), v = randn(nv, rng);
  auto g1 = randn(nk, rng), g2 = randn(nk, rng), e = randn(size_t(B) * L * N, rng);
  for (float& x : g1) x = -std::abs(x) * 0.1f;
  for (float& x : g2) x = -std::abs(x) * 0.1f;
  std::vector<float> out(nv);
  spattn::SSEArgs a;
  a.B = B, a.H = H, a.L = L, a.dk = dk, a.dv = dv, a.N = N, a.top_k = K, a.scale = 0.5f;
  a.q1 = q1.data(), a.k1 = k1.data(), a.g1 = g1.data(), a.q2 = q2.data(), a.k2 = k2.data(), a.g2 = g2.data();
  a.v = v.data(), a.router = e.data(), a.out = out.data();
  spattn::sse_attention(a);
  std::vector<float> prob(size_t(B) * L * N);
  std::vector<int> top(size_t(B) * L * K);
  spattn::sse_route(e.data(), B, L, N, K, prob.data(), top.data());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const size_t row = (size_t(b) * H + h) * L;
      std::vector<double> S(size_t(dk) * dv, 0.0), ref(size_t(L) * dv);
      naive_gla(q1.data() + row * dk, k1.data() + row * dk, g1.data() + row * dk, v.data() + row * dv, L, dk, dv, 0.5, S,
                ref.data());
      for (int n = 0; n < N; ++n) {
        std::vector<int> m;
        for (int t = 0; t < L; ++t)
          for (int j = 0; j < K; ++j)
            if (top[(size_t(b) * L + t) * K + j] == n) m.push_back(t);
        std::vector<float> q, k, g, vv;
        for (int t : m) {
          const float p = prob[(size_t(b) * L + t) * N + n];
          for (int d = 0; d < dk; ++d) {
            q.push_back(q2[(row + t) * dk + d] * p);
            k.push_back(k2[(row + t) * dk + d] * p);
            g.push_back(g2[(row + t) * dk + d]);
          }
          for (int c = 0; c < dv; ++c) vv.push_back(v[(row + t) * dv + c]);
        }
        std::vector<double> Sn(size_t(dk) * dv, 0.0), o(m.size() * dv);
        naive_gla(q.data(), k.data(), g.data(), vv.data(), int(m.size()), dk, dv, 0.5, Sn, o.data());
        for (size_t i = 0; i < m.size(); ++i)
          for (int c = 0; c < dv; ++c) ref[size_t(m[i]) * dv + c] += o[i * dv + c];
      }
      for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(out[row * dv + i], ref[i], 1e-4 * (1 + std::abs(ref[i])));
    }
  a.top_k = 5;
  EXPECT_THROW(spattn::sse_attention(a), std::invalid_argument);
}

}  // namespace
