// PBS-Attn estimator against naive double loops written from the official behaviour
// (xinghaow99/pbs-attn last_block_attn_sorting, permuted_block_selection, select_blocks,
// first_token_mask, the naive torch kernel's causal rule on original positions; repeat_kv GQA):
// the in-segment permutation by the last block's mean softmax, the pooled softmax over candidate
// blocks (earlier segments only) cut at the cumulative threshold, token 0's permuted block and
// the own segment always in, and the output = attention over those keys.
#include <algorithm>
#include <numeric>

#include "spattn/estimators/pbs_attn.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

struct Naive {
  std::vector<double> importance;  // (H, complete)
  std::vector<int> perm;           // (H, L)
  std::vector<uint8_t> mask;       // (H, nb, nb)
};

// Permutation of every head (importance in double, ties to the lower index). L > S.
Naive naive_perm(const Problem& p, int bs, int S) {
  const int L = p.s.Nq, D = p.s.D, H = p.s.Hq, G = p.s.group(), c = L / S * S;
  Naive n;
  n.importance.assign(size_t(H) * c, 0.0);
  n.perm.resize(size_t(H) * L);
  for (int h = 0; h < H; ++h) {
    const float* q = p.q.data() + size_t(h) * L * D;
    const float* k = p.k.data() + size_t(h / G) * L * D;
    double* imp = n.importance.data() + size_t(h) * c;
    std::vector<double> s(c);
    for (int i = L - bs; i < L; ++i) {
      for (int j = 0; j < c; ++j) {
        double acc = 0.0;
        for (int d = 0; d < D; ++d) acc += double(q[size_t(i) * D + d]) * k[size_t(j) * D + d];
        s[j] = acc / std::sqrt(double(D));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double z = 0.0;
      for (double x : s) z += std::exp(x - mx);
      for (int j = 0; j < c; ++j) imp[j] += std::exp(s[j] - mx) / z / bs;
    }
    int* perm = n.perm.data() + size_t(h) * L;
    std::iota(perm, perm + L, 0);
    for (int s0 = 0; s0 < c; s0 += S)
      std::stable_sort(perm + s0, perm + s0 + S, [&](int x, int y) { return imp[x] > imp[y]; });
  }
  return n;
}

// The official block mask for a given permutation.
void naive_mask(const Problem& p, Naive& n, int bs, int S, const std::vector<double>& tau, bool force) {
  const int L = p.s.Nq, D = p.s.D, H = p.s.Hq, G = p.s.group(), nb = (L + bs - 1) / bs, spb = S / bs;
  n.mask.assign(size_t(H) * nb * nb, 0);
  for (int h = 0; h < H; ++h) {
    const float* q = p.q.data() + size_t(h) * L * D;
    const float* k = p.k.data() + size_t(h / G) * L * D;
    const int* perm = n.perm.data() + size_t(h) * L;
    std::vector<double> qp(size_t(nb) * D, 0.0), kp(size_t(nb) * D, 0.0);
    for (int i = 0; i < L; ++i)
      for (int d = 0; d < D; ++d) {
        qp[size_t(i / bs) * D + d] += double(q[size_t(i) * D + d]) / bs;
        kp[size_t(i / bs) * D + d] += double(k[size_t(perm[i]) * D + d]) / bs;
      }
    const double t = tau[tau.size() == 1 ? 0 : h];
    for (int qb = 0; qb < nb; ++qb) {
      uint8_t* row = n.mask.data() + (size_t(h) * nb + qb) * nb;
      std::vector<double> a(nb, 0.0);
      std::vector<int> cand;
      for (int kb = 0; kb < nb; ++kb)
        if (kb <= qb && kb / spb != qb / spb) cand.push_back(kb);
      if (!cand.empty()) {
        double mx = -1e300;
        for (int kb : cand) {
          double acc = 0.0;
          for (int d = 0; d < D; ++d) acc += qp[size_t(qb) * D + d] * kp[size_t(kb) * D + d];
          a[kb] = acc / std::sqrt(double(D));
          mx = std::max(mx, a[kb]);
        }
        double z = 0.0;
        for (int kb : cand) z += std::exp(a[kb] - mx);
        std::vector<double> pr(nb, 0.0);
        for (int kb : cand) pr[kb] = std::exp(a[kb] - mx) / z;
        std::vector<int> order(nb);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return pr[x] > pr[y]; });
        if (t >= 1.0) {
          for (int kb : cand) row[kb] = 1;
        } else {
          double cum = 0.0;
          for (int m = 0; m < nb; ++m) {
            row[order[m]] = 1;
            cum += pr[order[m]];
            if (cum >= t) break;
            if (m == nb - 1) std::fill(row, row + nb, 0);  // never reached: nothing selected
          }
        }
      }
      if (force) row[int(std::find(perm, perm + L, 0) - perm) / bs] = 1;
      for (int kb = 0; kb < nb; ++kb)
        if (kb / spb == qb / spb) row[kb] = 1;
    }
  }
}

// Our permutation equals the naive one up to swaps of keys whose double importances agree to
// float32 rounding (1e-5 relative).
void expect_same_perm(const std::vector<int32_t>& got, const Naive& n, int H, int L, int S) {
  const int c = L / S * S;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < L; ++i) {
      const int a = got[size_t(h) * L + i], b = n.perm[size_t(h) * L + i];
      if (a == b) continue;
      ASSERT_LT(i, c) << "tail keys keep their order";
      ASSERT_EQ(a / S, b / S) << "keys stay in their segment";
      const double ia = n.importance[size_t(h) * c + a], ib = n.importance[size_t(h) * c + b];
      ASSERT_LE(std::abs(ia - ib), 1e-5 * std::max(ia, ib)) << "head " << h << " position " << i;
    }
}

struct Case {
  int B, Hq, Hkv, L, D, bs, S;
  std::vector<double> tau;
};

void check_case(const Case& c, bool force = true) {
  Problem p(c.B, c.Hq, c.Hkv, c.L, c.L, c.D, c.D, true, unsigned(c.L + c.bs));
  spattn::PbsAttnParams prm;
  prm.block_size = c.bs;
  prm.segment_size = c.S;
  prm.threshold.assign(c.tau.begin(), c.tau.end());
  prm.force_select_first_block = force;
  const auto e = spattn::estimate_pbs_attn(p.args(), prm);
  ASSERT_FALSE(e.dense);
  const int L = c.L, nb = (L + c.bs - 1) / c.bs, H = c.B * c.Hq;
  // B > 1: check batch by batch as separate problems (the naive code indexes one batch).
  for (int b = 0; b < c.B; ++b) {
    Problem one = p;
    one.s.B = 1;
    one.q.assign(p.q.begin() + size_t(b) * c.Hq * L * c.D, p.q.begin() + size_t(b + 1) * c.Hq * L * c.D);
    one.k.assign(p.k.begin() + size_t(b) * c.Hkv * L * c.D, p.k.begin() + size_t(b + 1) * c.Hkv * L * c.D);
    Naive n = naive_perm(one, c.bs, c.S);
    const std::vector<int32_t> got(e.perm.begin() + size_t(b) * c.Hq * L, e.perm.begin() + size_t(b + 1) * c.Hq * L);
    expect_same_perm(got, n, c.Hq, L, c.S);
    n.perm.assign(got.begin(), got.end());  // near ties: select on our order
    naive_mask(one, n, c.bs, c.S, c.tau, force);
    for (size_t i = 0; i < n.mask.size(); ++i)
      ASSERT_EQ(e.blocks.blocks[size_t(b) * c.Hq * nb * nb + i], n.mask[i])
          << "L " << L << " batch " << b << " flat block " << i;
  }
  // Indices: sorted original positions of the selected permuted blocks' keys <= the block's last query.
  int K = 0;
  const std::vector<int32_t> idx = spattn::permuted_block_token_indices(e.view(L), &K);
  for (int bh = 0; bh < H; ++bh)
    for (int g = 0; g < nb; ++g) {
      std::vector<int32_t> want;
      for (int kb = 0; kb < nb; ++kb)
        if (e.blocks.blocks[(size_t(bh) * nb + g) * nb + kb])
          for (int pos = kb * c.bs; pos < std::min(L, (kb + 1) * c.bs); ++pos)
            if (e.perm[size_t(bh) * L + pos] <= std::min(L, (g + 1) * c.bs) - 1)
              want.push_back(e.perm[size_t(bh) * L + pos]);
      std::sort(want.begin(), want.end());
      const int32_t* row = idx.data() + (size_t(bh) * nb + g) * K;
      for (int j = 0; j < K; ++j)
        ASSERT_EQ(row[j], j < int(want.size()) ? want[j] : -1) << "head " << bh << " group " << g;
    }
  // Output: attention over the selected permuted blocks, causal on original positions.
  spattn::permuted_block_attention(p.args(), e.view(L));
  std::vector<uint8_t> allowed(size_t(H) * L * L, 0);
  for (int bh = 0; bh < H; ++bh)
    for (int i = 0; i < L; ++i)
      for (int kb = 0; kb < nb; ++kb)
        if (e.blocks.blocks[(size_t(bh) * nb + i / c.bs) * nb + kb])
          for (int pos = kb * c.bs; pos < std::min(L, (kb + 1) * c.bs); ++pos)
            allowed[(size_t(bh) * L + i) * L + e.perm[size_t(bh) * L + pos]] = 1;
  p.expect_matches_reference([&](int b, int h, int i, int j) {
    return allowed[((size_t(b) * c.Hq + h) * L + i) * L + j] != 0;
  });
}

}  // namespace

TEST(PbsAttn, MatchesNaiveOfficialPipeline) {
  check_case({1, 4, 2, 700, 64, 128, 256, {0.9}});
  check_case({2, 2, 1, 777, 48, 128, 256, {0.9}});
  check_case({1, 3, 3, 1000, 32, 64, 256, {0.5}});
  check_case({1, 2, 1, 1024, 32, 128, 256, {0.95}});  // no tail
  check_case({1, 2, 2, 257, 32, 128, 256, {0.9}});    // one complete segment and a one-token tail
  check_case({1, 2, 1, 1100, 32, 32, 96, {0.9}});
}

TEST(PbsAttn, ThresholdEdgesAndPerHeadValues) {
  check_case({1, 4, 2, 900, 32, 128, 256, {1e-6, 0.6, 0.999, 1.0}});
  check_case({1, 2, 1, 900, 32, 128, 256, {1.0}});
  check_case({1, 2, 1, 900, 32, 128, 256, {0.9}}, /*force=*/false);
  Problem p(1, 4, 2, 600, 600, 32, 0, true, 5);
  spattn::PbsAttnParams prm;
  prm.threshold = {0.5f, 0.5f};
  EXPECT_THROW(spattn::estimate_pbs_attn(p.args(), prm), std::invalid_argument);
}

TEST(PbsAttn, FirstTokenBlockFollowsThePermutation) {
  // Token 0's key points against every last query: it sorts last in segment 0 (permuted block 1).
  Problem p(1, 2, 1, 900, 900, 32, 32, true, 9);
  std::vector<float> u(32);
  for (int d = 0; d < 32; ++d) u[d] = d % 2 ? 0.25f : -0.25f;
  for (int h = 0; h < 2; ++h)
    for (int i = 900 - 128; i < 900; ++i)
      for (int d = 0; d < 32; ++d) p.q[(size_t(h) * 900 + i) * 32 + d] += 4 * u[d] / std::sqrt(32 * 0.0625f);
  for (int d = 0; d < 32; ++d) p.k[d] = -30 * u[d] / std::sqrt(32 * 0.0625f);
  spattn::PbsAttnParams prm;
  prm.threshold = {0.3f};
  const auto e = spattn::estimate_pbs_attn(p.args(), prm);
  const int nb = 8;
  int K = 0;
  const std::vector<int32_t> idx = spattn::permuted_block_token_indices(e.view(900), &K);
  for (int h = 0; h < 2; ++h) {
    EXPECT_EQ(e.perm[size_t(h) * 900 + 255], 0);
    for (int g = 0; g < nb; ++g) {
      EXPECT_TRUE(e.blocks.blocks[(size_t(h) * nb + g) * nb + 1]) << "head " << h << " group " << g;
      EXPECT_EQ(idx[(size_t(h) * nb + g) * K], 0);  // token 0 listed first in every group
    }
  }
  check_case({1, 2, 1, 900, 32, 128, 256, {0.3}});
}

TEST(PbsAttn, ShortSequencesRunDense) {
  for (int L : {1, 100, 256}) {
    Problem p(1, 2, 1, L, L, 32, 32, true, L);
    const auto e = spattn::estimate_pbs_attn(p.args(), {});
    EXPECT_TRUE(e.dense);
    for (int i = 0; i < L; ++i) EXPECT_EQ(e.perm[i], i);
    spattn::permuted_block_attention(p.args(), e.view(L));
    p.expect_matches_reference(nullptr);
  }
}

TEST(PbsAttn, RejectsBadCallsAndParameters) {
  Problem nc(1, 2, 1, 300, 300, 32, 0, false, 1);
  EXPECT_THROW(spattn::estimate_pbs_attn(nc.args(), {}), std::invalid_argument);
  Problem chunk(1, 2, 1, 100, 300, 32, 0, true, 1);
  EXPECT_THROW(spattn::estimate_pbs_attn(chunk.args(), {}), std::invalid_argument);
  spattn::PbsAttnParams p;
  p.segment_size = 200;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.block_size = 0;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.threshold = {};
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.threshold = {0.f};
  EXPECT_THROW(p.validate(), std::invalid_argument);
}
