// SVG2: cluster_block_attention against the naive double loop restricted to the clustered pattern
// (query i of head h sees key j iff map[h][q_label(i)][k_label(j)], kv head h / G, causal per
// element), on random labels (empty clusters, clusters larger than a work item) and on the
// estimator's own labels; the pair counts; the k-means against a naive Lloyd loop written from the
// official batch_kmeans_Euclid (batch-wide stop, labels of the last assignment, empty clusters kept).
#include <algorithm>
#include <random>

#include "spattn/estimators/svg2.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct Pattern {
  int Cq, Ck;
  std::vector<int32_t> ql, kl;
  std::vector<uint8_t> map;
  spattn::ClusteredView view(const spattn::AttnShape& s) const {
    return {ql.data(), kl.data(), map.data(), s.B, s.Hq, s.Hkv, s.Nq, s.Nk, Cq, Ck};
  }
};

Pattern random_pattern(const spattn::AttnShape& s, int Cq, int Ck, double p, unsigned seed) {
  std::mt19937 gen(seed);
  Pattern pt{Cq, Ck, {}, {}, {}};
  std::uniform_int_distribution<int> qd(0, Cq - 1), kd(0, Ck - 1);
  // skewed labels: the first cluster takes about a third of the tokens (larger than a 128-row item)
  std::bernoulli_distribution big(0.35), sel(p);
  pt.ql.resize(size_t(s.B) * s.Hq * s.Nq);
  for (auto& x : pt.ql) x = big(gen) ? 0 : qd(gen);
  pt.kl.resize(size_t(s.B) * s.Hkv * s.Nk);
  for (auto& x : pt.kl) x = kd(gen);
  pt.map.resize(size_t(s.B) * s.Hq * Cq * Ck);
  for (auto& x : pt.map) x = sel(gen);
  return pt;
}

spattn::reference::Allowed allowed_by(const Pattern& pt, const spattn::AttnShape& s) {
  return [&pt, s](int b, int h, int i, int j) {
    const int qi = pt.ql[(size_t(b) * s.Hq + h) * s.Nq + i];
    const int kj = pt.kl[(size_t(b) * s.Hkv + h / s.group()) * s.Nk + j];
    return pt.map[((size_t(b) * s.Hq + h) * pt.Cq + qi) * pt.Ck + kj] != 0;
  };
}

void check_kernel(int B, int Hq, int Hkv, int Nq, int Nk, int D, bool causal, int Cq, int Ck, double p, unsigned seed) {
  Problem pr(B, Hq, Hkv, Nq, Nk, D, D, causal, seed);
  const Pattern pt = random_pattern(pr.s, Cq, Ck, p, seed + 1);
  spattn::cluster_block_attention(pr.args(), pt.view(pr.s));
  pr.expect_matches_reference(allowed_by(pt, pr.s));
  // pairs: visible selected (query, key) pairs per (b, h)
  const std::vector<double> pairs = spattn::cluster_block_pairs(pt.view(pr.s), causal);
  const auto allowed = allowed_by(pt, pr.s);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < Hq; ++h) {
      double n = 0;
      for (int i = 0; i < Nq; ++i)
        for (int j = 0; j < Nk; ++j) n += allowed(b, h, i, j) && (!causal || j <= i + Nk - Nq);
      EXPECT_EQ(pairs[size_t(b) * Hq + h], n);
    }
}

}  // namespace

TEST(Svg2, ClusterKernelMatchesNaiveLoop) {
  check_kernel(1, 2, 2, 300, 300, 64, false, 7, 13, 0.4, 1);
  check_kernel(2, 4, 2, 257, 257, 80, false, 9, 30, 0.3, 2);
  check_kernel(1, 4, 1, 333, 333, 128, true, 11, 17, 0.5, 3);
  check_kernel(1, 2, 1, 100, 301, 64, true, 5, 40, 0.5, 4);   // chunked, Nq < Nk
  check_kernel(1, 4, 2, 1, 517, 64, true, 1, 23, 0.6, 5);     // decode
  check_kernel(1, 2, 2, 220, 90, 32, true, 6, 8, 0.7, 6);     // Nq > Nk: early rows see nothing
  check_kernel(1, 1, 1, 64, 64, 16, false, 64, 64, 0.1, 7);   // many empty clusters
}

// Naive official batch_kmeans_Euclid over `heads` point sets (float distances as the kernel).
void naive_kmeans(const std::vector<float>& x, int heads, int n, int d, std::vector<float>& cent, int c, int iters,
                  std::vector<int32_t>& labels, std::vector<int32_t>& sizes, int* ran) {
  labels.assign(size_t(heads) * n, 0);
  sizes.assign(size_t(heads) * c, 0);
  for (int it = 1; it <= iters; ++it) {
    *ran = it;
    std::vector<float> next = cent;
    double worst = 0.0;
    for (int h = 0; h < heads; ++h) {
      std::vector<double> sum(size_t(c) * d, 0.0);
      std::fill(sizes.begin() + size_t(h) * c, sizes.begin() + size_t(h + 1) * c, 0);
      for (int i = 0; i < n; ++i) {
        double best = 1e300;
        int arg = 0;
        for (int j = 0; j < c; ++j) {
          double dist = 0.0;
          for (int p = 0; p < d; ++p) {
            const double t = double(x[(size_t(h) * n + i) * d + p]) - cent[(size_t(h) * c + j) * d + p];
            dist += t * t;
          }
          if (dist < best) best = dist, arg = j;
        }
        labels[size_t(h) * n + i] = arg;
        ++sizes[size_t(h) * c + arg];
        for (int p = 0; p < d; ++p) sum[size_t(arg) * d + p] += x[(size_t(h) * n + i) * d + p];
      }
      for (int j = 0; j < c; ++j) {
        double sq = 0.0;
        for (int p = 0; p < d; ++p) {
          const size_t e = (size_t(h) * c + j) * d + p;
          if (sizes[size_t(h) * c + j] > 0) next[e] = float(sum[size_t(j) * d + p] / sizes[size_t(h) * c + j]);
          sq += (double(next[e]) - cent[e]) * (double(next[e]) - cent[e]);
        }
        worst = std::max(worst, std::sqrt(sq));
      }
    }
    if (worst < 1e-4) return;
    cent = next;
  }
}

TEST(Svg2, KmeansFollowsTheOfficialLoop) {
  // well separated blobs: no near ties between the float and double distances
  const int heads = 3, n = 211, d = 16, c = 6;
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> centers(size_t(heads) * 5 * d), x(size_t(heads) * n * d);
  for (auto& v : centers) v = 6 * nd(gen);
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < n; ++i)
      for (int p = 0; p < d; ++p) x[(size_t(h) * n + i) * d + p] = centers[(size_t(h) * 5 + i % 5) * d + p] + nd(gen);
  for (int iters : {1, 2, 50}) {
    std::vector<float> init(size_t(heads) * c * d);
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < c; ++j)  // distinct tokens; cluster 5 starts on a point of blob 0 (may end empty)
        std::copy_n(x.data() + (size_t(h) * n + (j * 37 + h) % n) * d, d, init.data() + (size_t(h) * c + j) * d);
    std::vector<float> mine = init, ref = init;
    std::vector<int32_t> lab(size_t(heads) * n), siz(size_t(heads) * c), rlab, rsiz;
    const int ran = spattn::svg2_kmeans(x.data(), heads, (long long)n * d, n, d, mine.data(), c, iters, 1e-4,
                                        lab.data(), siz.data());
    int rran = 0;
    naive_kmeans(x, heads, n, d, ref, c, iters, rlab, rsiz, &rran);
    EXPECT_EQ(ran, rran) << iters;
    EXPECT_EQ(lab, rlab) << iters;
    EXPECT_EQ(siz, rsiz) << iters;
    for (size_t e = 0; e < ref.size(); ++e) ASSERT_NEAR(mine[e], ref[e], 1e-4) << iters;
  }
}

TEST(Svg2, EstimateRunsOnItsKernel) {
  Problem pr(1, 4, 2, 400, 400, 64, 64, false, 21);
  spattn::Svg2Params prm;
  prm.num_q_centroids = 12;
  prm.num_k_centroids = 30;
  const spattn::Svg2Estimate e = spattn::estimate_svg2(pr.args(), prm);
  EXPECT_EQ(e.Cq, 12);
  EXPECT_EQ(e.Ck, 30);
  for (int h = 0; h < 4; ++h)
    for (int i = 0; i < 12; ++i) {  // top-1 and int(0.1 * 30) = 3 clusters at least
      int kept = 0;
      for (int j = 0; j < 30; ++j) kept += e.map[(size_t(h) * 12 + i) * 30 + j];
      EXPECT_GE(kept, 3);
    }
  Pattern pt{e.Cq, e.Ck, e.q_labels, e.k_labels, e.map};
  spattn::cluster_block_attention(pr.args(), pt.view(pr.s));
  pr.expect_matches_reference(allowed_by(pt, pr.s));
  prm.top_p_kmeans = 0.f;
  EXPECT_THROW(spattn::estimate_svg2(pr.args(), prm), std::invalid_argument);
}

TEST(Svg2, RejectsLabelsOutOfRange) {
  Problem pr(1, 2, 1, 50, 60, 16, 16, false, 3);
  Pattern pt = random_pattern(pr.s, 4, 5, 0.5, 4);
  pt.kl[7] = 5;
  EXPECT_THROW(spattn::cluster_block_attention(pr.args(), pt.view(pr.s)), std::invalid_argument);
  pt.kl[7] = 0;
  pt.ql[3] = -1;
  EXPECT_THROW(spattn::cluster_block_attention(pr.args(), pt.view(pr.s)), std::invalid_argument);
}
