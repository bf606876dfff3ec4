// HiP estimator against a naive double loop of the official v1.0 tree search (DeepAuto-AI/hip-attention,
// hip_attention_mask / _masking_iteration_compute / _masking_iteration_topk / safe_indices /
// calc_prob_return_context) with dense_queries_exp = 0 and no lower resolution: nodes split by
// floor(j b' / b), "first" representative key block, max of q.k over the strided rows and bk keys
// (pairs in the shifted causal region ignored), the k-th value threshold with the cumsum slots, the
// "biased" column collisions, then sink and window. Compared as sorted key lists per query block.
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "spattn/estimators/hip.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

long long cdiv(long long a, long long b) { return (a + b - 1) / b; }

std::vector<int> naive_block(const Problem& p, const spattn::HipParams& prm, int h, int g) {
  const int Nq = p.s.Nq, Nk = p.s.Nk, D = p.s.D, bq = prm.block_size_q, bk = prm.block_size_k, s = prm.scale_up;
  const int hk = h / (p.s.Hq / p.s.Hkv), off = Nk - Nq, b0 = g * bq;
  const long long MASK_K = cdiv(prm.mask_k, bk), N_PATCHES = cdiv(cdiv(prm.mask_k, s), bk);
  const long long tsrc = p.causal ? std::min<long long>(b0 + std::max(bq, bk) + off, Nk) : Nk;
  const int W = prm.sliding_window_size;
  const long long shift = std::max(0, W - bq - bk);
  int P = 1;
  while (P < std::max<int>(int(cdiv(bq, prm.reduce_stride)), 16)) P *= 2;
  std::vector<int> rows;
  for (int r = 0; r < P; ++r)
    if ((P == bq || r * prm.reduce_stride < bq) && b0 + r * prm.reduce_stride < Nq) rows.push_back(b0 + r * prm.reduce_stride);
  long long w = std::min<long long>(tsrc, (long long)std::nearbyint(double(prm.mask_k) * s / s));
  std::vector<long long> nodes;
  for (long long j = 0; j < cdiv(w, bk); ++j) nodes.push_back(j);
  for (long long wn = std::min(w * s, tsrc); wn != w; w = wn, wn = std::min(w * s, tsrc)) {
    const long long bo = cdiv(w, bk), bn = cdiv(wn, bk), bt = cdiv(tsrc, bk);
    std::vector<long long> px;
    for (long long j : nodes)
      for (long long c = j * bn / bo; c < (j + 1) * bn / bo; ++c) px.push_back(c);
    const long long kn = std::min(bt, std::max(N_PATCHES, MASK_K >= bt ? bn : MASK_K * bn / bt));
    if (kn >= (long long)px.size()) {
      nodes = px;
      continue;
    }
    std::vector<std::pair<int, double>> rank;  // (live, score)
    for (long long c : px) {
      const long long t = std::max(0LL, std::min(tsrc - 1, c * tsrc / bn)) / bk * bk;
      double live = -INFINITY, any = -INFINITY;
      bool is_live = false;
      for (int i : rows)
        for (long long j = t; j < std::min<long long>(t + bk, Nk); ++j) {
          double dot = 0.0;
          for (int d = 0; d < D; ++d)
            dot += double(p.q[(size_t(h) * Nq + i) * D + d]) * double(p.k[(size_t(hk) * Nk + j) * D + d]);
          any = std::max(any, dot);
          if (!(p.causal && i + off < j + shift)) {
            is_live = true;
            live = std::max(live, dot);
          }
        }
      rank.emplace_back(is_live ? 1 : 0, is_live ? live : any);
    }
    std::vector<std::pair<int, double>> sorted = rank;
    std::sort(sorted.rbegin(), sorted.rend());
    const auto thr = sorted[size_t(kn - 1)];
    std::vector<long long> keep;
    int last = -1;
    for (size_t i = 0; i < rank.size(); ++i) {
      if (rank[i] < thr) continue;
      if ((long long)keep.size() < kn - 1) keep.push_back(px[i]);
      else if (last < 0 || rank[i] > rank[size_t(last)]) last = int(i);
    }
    keep.push_back(px[size_t(last)]);
    nodes = keep;
  }
  const long long sink = W > 0 ? (prm.num_sink ? *prm.num_sink : cdiv(32, bk)) * bk : 0;
  std::set<int> keys;
  long long col_last = -1;
  for (long long j : nodes) {
    const long long col = std::max(col_last + 1, cdiv(j * tsrc, bk * cdiv(tsrc, bk)));
    col_last = col;
    for (long long t = col * bk; t < col * bk + bk; ++t)
      if (t >= sink && t < Nk) keys.insert(int(t));
  }
  for (long long t = 0; t < std::min<long long>(sink, Nk); ++t) keys.insert(int(t));
  const long long end = b0 + bq + off;
  for (long long t = std::max(0LL, end - W); W > 0 && t < std::min<long long>(end, Nk); ++t) keys.insert(int(t));
  return std::vector<int>(keys.begin(), keys.end());
}

void check(int Hq, int Hkv, int Nq, int Nk, int D, bool causal, spattn::HipParams prm) {
  Problem p(1, Hq, Hkv, Nq, Nk, D, D, causal, unsigned(Nq + Nk));
  prm.dense_queries_exp = 0;
  const auto e = spattn::estimate_hip(p.args(), prm);
  ASSERT_EQ(e.group_size, prm.block_size_q);
  ASSERT_EQ(e.groups, (Nq + prm.block_size_q - 1) / prm.block_size_q);
  for (int h = 0; h < Hq; ++h)
    for (int g = 0; g < e.groups; ++g) {
      const int32_t* row = e.indices.data() + (size_t(h) * e.groups + g) * e.K;
      std::vector<int> got;
      for (int c = 0; c < e.K; ++c)
        if (row[c] >= 0) got.push_back(row[c]);
      EXPECT_EQ(got, naive_block(p, prm, h, g)) << "head " << h << " block " << g;
    }
}

}  // namespace

TEST(Hip, CausalGqaOddLength) {
  spattn::HipParams prm;
  prm.mask_k = 64;
  check(4, 2, 301, 301, 64, true, prm);
}

TEST(Hip, ChunkedStrideOneBlockK4D80) {
  spattn::HipParams prm;
  prm.mask_k = 48; prm.block_size_q = 16; prm.block_size_k = 4; prm.reduce_stride = 1; prm.num_sink = 2;
  check(2, 1, 150, 333, 80, true, prm);
}

TEST(Hip, NonCausalScaleUp3D128) {
  spattn::HipParams prm;
  prm.mask_k = 40; prm.scale_up = 3; prm.sliding_window_size = 24;
  check(2, 2, 257, 257, 128, false, prm);
}

TEST(Hip, DecodeRunsThePromptSearch) {
  spattn::HipParams prm;
  prm.mask_k = 32; prm.block_size_q = 1;
  check(4, 2, 1, 299, 64, true, prm);
}

TEST(Hip, RejectsLongerQueries) {
  Problem p2(1, 2, 1, 50, 40, 64, 64, false);
  EXPECT_THROW(spattn::estimate_hip(p2.args(), spattn::HipParams{}), std::invalid_argument);
  spattn::HipParams bad;
  bad.scale_up = 1;
  EXPECT_THROW(bad.validate(), std::invalid_argument);
}
