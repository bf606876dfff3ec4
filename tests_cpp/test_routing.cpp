// Routing Transformer: the cluster kernel (routing_attention) against a naive double loop written
// from lucidrains/routing-transformer `KmeansAttention.forward` (per cluster softmax over memory
// keys + gathered keys, causal on original positions, shared-QK self logit -5e4, scatter_mean with
// eps 1e-5), the routing (top-W per cluster by cosine similarity, ties to the lower position) and
// one `kmeans_iter` step against naive loops.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "spattn/estimators/routing.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct Clusters {
  int C, wq, wk, M;
  std::vector<int32_t> qi, ki;
  std::vector<float> mk, mv;
};

Clusters random_clusters(const Problem& p, int C, int wq, int wk, int M, bool shared, unsigned seed) {
  std::mt19937 gen(seed);
  Clusters c{C, wq, wk, M, {}, {}, {}, {}};
  std::vector<int32_t> pq(static_cast<size_t>(p.s.Nq)), pk(static_cast<size_t>(p.s.Nk));
  for (int bhc = 0; bhc < p.s.B * p.s.Hq * C; ++bhc) {
    std::iota(pq.begin(), pq.end(), 0);
    std::shuffle(pq.begin(), pq.end(), gen);
    c.qi.insert(c.qi.end(), pq.begin(), pq.begin() + wq);
    if (shared) {
      c.ki.insert(c.ki.end(), pq.begin(), pq.begin() + wk);
    } else {
      std::iota(pk.begin(), pk.end(), 0);
      std::shuffle(pk.begin(), pk.end(), gen);
      c.ki.insert(c.ki.end(), pk.begin(), pk.begin() + wk);
    }
  }
  std::normal_distribution<float> nd(0.f, 1.f);
  c.mk.resize(size_t(p.s.Hq) * C * M * p.s.D);
  c.mv.resize(size_t(p.s.Hq) * C * M * p.s.Dv);
  for (auto& x : c.mk) x = nd(gen);
  for (auto& x : c.mv) x = nd(gen);
  return c;
}

std::vector<double> naive(const Problem& p, const Clusters& c, bool shared) {
  const auto& s = p.s;
  const double scale = 1.0 / std::sqrt(double(s.D));
  std::vector<double> out(size_t(s.B) * s.Hq * s.Nq * s.Dv, 0.0), cnt(size_t(s.B) * s.Hq * s.Nq, 0.0);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.Hq; ++h)
      for (int cl = 0; cl < c.C; ++cl) {
        const size_t row = (size_t(b) * s.Hq + h) * c.C + cl;
        const int hk = h / s.group();
        for (int r = 0; r < c.wq; ++r) {
          const int i = c.qi[row * c.wq + r];
          const float* q = p.q.data() + s.q_index(b, h, i);
          std::vector<double> logit;
          std::vector<const float*> vals;
          for (int m = 0; m < c.M; ++m) {
            const float* k = c.mk.data() + ((size_t(h) * c.C + cl) * c.M + m) * s.D;
            double acc = 0;
            for (int d = 0; d < s.D; ++d) acc += double(q[d]) * k[d];
            logit.push_back(acc * scale);
            vals.push_back(c.mv.data() + ((size_t(h) * c.C + cl) * c.M + m) * s.Dv);
          }
          for (int e = 0; e < c.wk; ++e) {
            const int j = c.ki[row * c.wk + e];
            if (p.causal && j > i + s.causal_offset()) continue;
            const float* k = p.k.data() + s.k_index(b, hk, j);
            double acc = 0;
            for (int d = 0; d < s.D; ++d) acc += double(q[d]) * k[d];
            logit.push_back(shared && j == i ? -5e4 : acc * scale);
            vals.push_back(p.v.data() + s.v_index(b, hk, j));
          }
          const size_t o = (size_t(b) * s.Hq + h) * s.Nq + i;
          cnt[o] += 1;
          if (logit.empty()) continue;
          const double mx = *std::max_element(logit.begin(), logit.end());
          double tot = 0;
          for (double& l : logit) tot += (l = std::exp(l - mx));
          for (size_t e = 0; e < logit.size(); ++e)
            for (int d = 0; d < s.Dv; ++d) out[o * s.Dv + d] += logit[e] / tot * vals[e][d];
        }
      }
  for (size_t o = 0; o < cnt.size(); ++o)
    for (int d = 0; d < s.Dv; ++d) out[o * s.Dv + d] /= cnt[o] + 1e-5;
  return out;
}

struct Case {
  int B, Hq, Hkv, Nq, Nk, D, Dv, C, wq, wk, M;
  bool causal, shared;
};

class RoutingKernel : public ::testing::TestWithParam<Case> {};

TEST_P(RoutingKernel, MatchesNaiveLoop) {
  const Case k = GetParam();
  Problem p(k.B, k.Hq, k.Hkv, k.Nq, k.Nk, k.D, k.Dv, k.causal, 11);
  const Clusters c = random_clusters(p, k.C, k.wq, k.wk, k.M, k.shared, 5);
  spattn::RoutingClustersView rc;
  rc.q_idx = c.qi.data(); rc.k_idx = c.ki.data();
  rc.B = k.B; rc.H = k.Hq; rc.C = k.C; rc.wq = k.wq; rc.wk = k.wk;
  rc.M = k.M; rc.mem_k = c.mk.data(); rc.mem_v = c.mv.data();
  rc.shared_qk = k.shared;
  spattn::AttnArgs a = p.args();
  a.lse = nullptr;
  spattn::routing_attention(a, rc);
  const std::vector<double> ref = naive(p, c, k.shared);
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(p.out[i], ref[i], spattn::testing::kTol) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, RoutingKernel, ::testing::Values(
    Case{1, 4, 2, 97, 97, 64, 64, 5, 19, 19, 0, false, false},
    Case{1, 4, 2, 97, 97, 64, 64, 5, 19, 19, 0, true, false},   // rows with no visible key: 0, counted
    Case{2, 2, 1, 61, 61, 80, 48, 3, 40, 40, 2, true, false},   // memory keys, GQA, Dv != D
    Case{1, 2, 2, 37, 301, 128, 128, 4, 30, 280, 1, true, false},  // chunked, keys over one tile
    Case{1, 4, 2, 1, 83, 64, 64, 6, 1, 10, 1, true, false},     // decode
    Case{1, 2, 2, 70, 70, 64, 64, 4, 33, 33, 0, true, true},    // shared_qk self logit
    Case{1, 2, 2, 70, 70, 64, 64, 4, 33, 33, 0, false, true}));

TEST(RoutingRoute, TopWPerClusterByCosineSimilarityTiesLow) {
  Problem p(1, 2, 1, 45, 53, 16, 16, false, 3);
  for (int j = 0; j < 16; ++j) p.q[size_t(7) * 16 + j] = p.q[size_t(3) * 16 + j] * 2.f;  // tie: rows 3 and 7 (head 0)
  const int C = 3;
  std::vector<float> mu(size_t(2) * C * 16);
  std::mt19937 gen(2);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto& x : mu) x = nd(gen);
  spattn::RoutingParams par;
  par.window_size = 12;
  const spattn::RoutingAssignment r = spattn::route_routing(p.args(), mu.data(), C, par);
  ASSERT_EQ(r.wq, 12);
  ASSERT_EQ(r.wk, 12);
  for (int h = 0; h < 2; ++h)
    for (int c = 0; c < C; ++c)
      for (int pass = 0; pass < 2; ++pass) {
        const int n = pass == 0 ? 45 : 53;
        const float* x = pass == 0 ? p.q.data() + size_t(h) * 45 * 16 : p.k.data();
        std::vector<double> sim(static_cast<size_t>(n));
        for (int t = 0; t < n; ++t) {
          double ss = 0, dot = 0;
          for (int d = 0; d < 16; ++d) ss += double(x[t * 16 + d]) * x[t * 16 + d];
          for (int d = 0; d < 16; ++d) dot += x[t * 16 + d] / std::sqrt(ss) * mu[(size_t(h) * C + c) * 16 + d];
          sim[size_t(t)] = float(dot);  // compare at float resolution: exact ties stay ties
        }
        std::vector<int> order(static_cast<size_t>(n));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sim[size_t(a)] > sim[size_t(b)]; });
        const int32_t* got = (pass == 0 ? r.q_idx.data() : r.k_idx.data()) + (size_t(h) * C + c) * 12;
        for (int e = 0; e < 12; ++e) EXPECT_EQ(got[e], order[size_t(e)]) << "h " << h << " c " << c << " pass " << pass;
      }
}

TEST(RoutingKmeans, OneLloydStepAsKmeansIter) {
  const int H = 2, n = 80, D = 8, C = 5;
  std::mt19937 gen(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(H) * n * D), mu(size_t(H) * C * D);
  for (auto& e : x) e = nd(gen);
  for (auto& e : mu) e = nd(gen);
  for (int d = 0; d < D; ++d) mu[size_t(4) * D + d] = -100.f;  // (h 0, c 4) wins no token: keeps its centroid
  for (int normalize = 0; normalize < 2; ++normalize) {
    std::vector<int32_t> buckets(size_t(H) * n);
    const std::vector<float> got = spattn::routing_kmeans_step(x.data(), H, n, D, mu.data(), C, normalize, buckets.data());
    for (int h = 0; h < H; ++h) {
      std::vector<double> sums(size_t(C) * D, 0.0);
      std::vector<int> cnt(static_cast<size_t>(C), 0);
      for (int t = 0; t < n; ++t) {
        const float* xt = x.data() + (size_t(h) * n + t) * D;
        double nrm = 0;
        for (int d = 0; d < D; ++d) nrm += double(xt[d]) * xt[d];
        nrm = normalize ? std::max(std::sqrt(nrm), 1e-12) : 1.0;
        int best = 0;
        double bs = -1e300;
        for (int c = 0; c < C; ++c) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += xt[d] / nrm * mu[(size_t(h) * C + c) * D + d];
          if (dot > bs) bs = dot, best = c;
        }
        EXPECT_EQ(buckets[size_t(h) * n + t], best);
        ++cnt[size_t(best)];
        for (int d = 0; d < D; ++d) sums[size_t(best) * D + d] += xt[d] / nrm;
      }
      for (int c = 0; c < C; ++c) {
        double ss = 0;
        for (int d = 0; d < D; ++d) ss += sums[size_t(c) * D + d] * sums[size_t(c) * D + d];
        for (int d = 0; d < D; ++d) {
          const size_t o = (size_t(h) * C + c) * D + d;
          const double want = cnt[size_t(c)] == 0 ? mu[o] : sums[size_t(c) * D + d] / std::sqrt(ss);
          EXPECT_NEAR(got[o], want, 1e-5) << "h " << h << " c " << c;
        }
      }
    }
  }
}

}  // namespace
