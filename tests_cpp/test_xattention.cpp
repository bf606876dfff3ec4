// XAttention estimator against a naive double loop written from the official behaviour
// (mit-han-lab/x-attention xattn_estimate + find_blocks_chunked, as the spec states it):
// antidiagonal strided scores of zero-padded rows, causal on reshaped rows, softmax (non-causal
// over the keys zero-padded to the chunk), block sums; per block row the greedy with column 0 and
// the diagonal forced and credited first, except in the first chunk where only the diagonal is
// forced and credited one slot late; column 0 always set.
#include <algorithm>
#include <numeric>

#include "spattn/estimators/xattention.hpp"
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

// The official mask, loops in double. L = Nq = Nk.
std::vector<uint8_t> naive_mask(const Problem& p, int S, double tau, int bs, bool causal) {
  const int L = p.s.Nq, D = p.s.D, H = p.s.Hq, G = p.s.group();
  const int C = spattn::xattention_chunk_size(L);
  const int nr = (L + S - 1) / S, nb = (L + bs - 1) / bs, rb = bs / S;
  const int nk_r = causal ? nr : int((L + C - 1) / C * C / S);  // non-causal: zero keys up to the chunk
  const int nkw = (nk_r + rb - 1) / rb;
  std::vector<uint8_t> out(size_t(H) * nb * nb, 0);
  for (int h = 0; h < H; ++h) {
    const float* q = p.q.data() + size_t(h) * L * D;
    const float* k = p.k.data() + size_t(h / G) * L * D;
    std::vector<double> W(size_t(nb) * nkw, 0.0), a(nk_r);
    for (int i = 0; i < nr; ++i) {
      for (int j = 0; j < nk_r; ++j) {
        double acc = 0.0;
        for (int t = 0; t < S; ++t) {
          const int qi = i * S + S - 1 - t, kj = j * S + t;
          if (qi >= L || kj >= L) continue;
          for (int d = 0; d < D; ++d) acc += double(q[size_t(qi) * D + d]) * k[size_t(kj) * D + d];
        }
        a[j] = acc / std::sqrt(double(D)) / S;
      }
      const int vis = causal ? i + 1 : nk_r;
      const double mx = *std::max_element(a.begin(), a.begin() + vis);
      double z = 0.0;
      for (int j = 0; j < vis; ++j) z += std::exp(a[j] - mx);
      for (int j = 0; j < vis; ++j) W[size_t(i / rb) * nkw + j / rb] += std::exp(a[j] - mx) / z;
    }
    for (int r = 0; r < nb; ++r) {
      const double* w = W.data() + size_t(r) * nkw;
      const double required = tau * std::accumulate(w, w + nkw, 0.0);
      uint8_t* row = out.data() + (size_t(h) * nb + r) * nb;
      const bool first_chunk = r < C / bs;
      std::vector<int> forced;
      if (causal) forced = first_chunk ? std::vector<int>{r} : std::vector<int>{0, r};
      std::vector<int> others;
      for (int c = 0; c < (causal ? r + 1 : nkw); ++c)
        if (std::find(forced.begin(), forced.end(), c) == forced.end()) others.push_back(c);
      std::stable_sort(others.begin(), others.end(), [&](int x, int y) { return w[x] > w[y]; });
      double F = 0.0;
      for (int c : forced) F += w[c], row[c] = 1;
      for (size_t m = 0; m < others.size(); ++m) {
        double before = 0.0;  // mass credited before the m-th other block
        if (!causal) {
          for (size_t l = 0; l < m; ++l) before += w[others[l]];
        } else if (!first_chunk) {
          before = F;
          for (size_t l = 0; l < m; ++l) before += w[others[l]];
        } else if (m >= 1) {  // first chunk: the diagonal is credited one slot late
          before = F;
          for (size_t l = 0; l + 1 < m; ++l) before += w[others[l]];
        }
        if (before < required && others[m] < nb) row[others[m]] = 1;
      }
      row[0] = 1;
    }
  }
  return out;
}

}  // namespace

TEST(XAttention, ChunkSizeRule) {
  EXPECT_EQ(spattn::xattention_chunk_size(1), 2048);
  EXPECT_EQ(spattn::xattention_chunk_size(1000), 2048);
  EXPECT_EQ(spattn::xattention_chunk_size(8192), 8192);
  EXPECT_EQ(spattn::xattention_chunk_size(8193), 16384);
  EXPECT_EQ(spattn::xattention_chunk_size(16384), 16384);
  EXPECT_EQ(spattn::xattention_chunk_size(16385), 8192);
  EXPECT_EQ(spattn::xattention_chunk_size(32768), 8192);
  EXPECT_EQ(spattn::xattention_chunk_size(65536), 4096);
  EXPECT_EQ(spattn::xattention_chunk_size(131072), 2048);
  EXPECT_EQ(spattn::xattention_chunk_size(1 << 20), 2048);
}

TEST(XAttention, MatchesNaiveOfficialSelection) {
  struct Case { int Hq, Hkv, L, D, S; float tau; };
  for (const Case c : {Case{4, 2, 1000, 64, 8, 0.9f}, Case{2, 1, 777, 80, 16, 0.5f}, Case{3, 3, 300, 128, 4, 0.95f}})
    for (bool causal : {true, false}) {
      Problem p(1, c.Hq, c.Hkv, c.L, c.L, c.D, 0, causal, c.L);
      spattn::XAttentionParams prm;
      prm.stride = c.S;
      prm.threshold = {c.tau};
      const auto m = spattn::estimate_xattention(p.args(), prm);
      const auto want = naive_mask(p, c.S, double(c.tau), 128, causal);
      ASSERT_EQ(m.blocks.size(), want.size());
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(m.blocks[i], want[i]) << "L " << c.L << " causal " << causal << " flat block " << i;
    }
}

TEST(XAttention, LaterChunksForceColumnZeroAndDiagonal) {
  // Nk > 16384: chunk 8192, so block rows >= 64 use the forced {0, diagonal} rule.
  const int L = 16384 + 130;
  Problem p(1, 2, 1, L, L, 32, 0, true, 3);
  spattn::XAttentionParams prm;
  prm.stride = 16;
  const auto m = spattn::estimate_xattention(p.args(), prm);
  const auto want = naive_mask(p, 16, 0.9, 128, true);
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(m.blocks[i], want[i]) << "flat block " << i;
  prm.threshold = {1e-3f};  // only the forced blocks past the first chunk
  const auto tiny = spattn::estimate_xattention(p.args(), prm);
  for (int r = 64; r < tiny.nqb; ++r) {
    int count = 0;
    for (int c = 0; c < tiny.nkb; ++c) count += tiny.blocks[size_t(r) * tiny.nkb + c];
    EXPECT_EQ(count, 2) << "row " << r;
    EXPECT_TRUE(tiny.blocks[size_t(r) * tiny.nkb] && tiny.blocks[size_t(r) * tiny.nkb + r]);
  }
}

TEST(XAttention, PerHeadThresholdsAndPostFlags) {
  Problem p(1, 4, 2, 600, 600, 64, 0, true, 5);
  spattn::XAttentionParams prm;
  prm.threshold = {0.2f, 0.5f, 0.9f, 1.0f};
  prm.keep_sink = true;
  const auto m = spattn::estimate_xattention(p.args(), prm);
  for (int h = 0; h < 4; ++h) {
    const double tau[] = {0.2, 0.5, 0.9, 1.0};  // the decimal values the float32 thresholds stand for
    auto want = naive_mask(p, 8, tau[h], 128, true);
    for (int c = 0; c < m.nkb; ++c) want[(size_t(h) * m.nqb) * m.nkb + c] = 1;  // keep_sink: the first row
    for (size_t i = size_t(h) * m.nqb * m.nkb; i < size_t(h + 1) * m.nqb * m.nkb; ++i)
      ASSERT_EQ(m.blocks[i], want[i]) << "head " << h << " flat block " << i;
  }
  prm.threshold = {0.5f, 0.5f};
  EXPECT_THROW(spattn::estimate_xattention(p.args(), prm), std::invalid_argument);
}

TEST(XAttention, ChunkedRowsAreThoseOfTheFullPrefill) {
  Problem full(1, 2, 1, 900, 900, 64, 0, true, 6);
  const auto fm = spattn::estimate_xattention(full.args(), {});
  Problem part = full;
  part.s.Nq = 900 - 256;
  part.q.clear();
  for (int h = 0; h < 2; ++h)
    part.q.insert(part.q.end(), full.q.begin() + (size_t(h) * 900 + 256) * 64,
                  full.q.begin() + size_t(h + 1) * 900 * 64);
  const auto pm = spattn::estimate_xattention(part.args(), {});
  ASSERT_EQ(pm.nqb, fm.nqb - 2);
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < pm.nqb; ++r)
      for (int c = 0; c < pm.nkb; ++c)
        EXPECT_EQ(pm.blocks[(size_t(h) * pm.nqb + r) * pm.nkb + c],
                  fm.blocks[(size_t(h) * fm.nqb + r + 2) * fm.nkb + c]);
  Problem odd(1, 2, 1, 100, 900, 64, 0, true, 6);
  EXPECT_THROW(spattn::estimate_xattention(odd.args(), {}), std::invalid_argument);
}

TEST(XAttention, OutputIsAttentionRestrictedToTheMask) {
  for (bool causal : {true, false}) {
    Problem p(1, 4, 2, 333, 333, 64, 64, causal, 7);
    spattn::XAttentionParams prm;
    prm.block_size = 64;
    prm.threshold = {0.5f};
    const auto m = spattn::estimate_xattention(p.args(), prm);
    spattn::block_sparse_attention(p.args(), m.view());
    p.expect_matches_reference([&](int b, int h, int i, int j) {
      return m.blocks[((size_t(b) * m.H + h) * m.nqb + i / 64) * m.nkb + j / 64] != 0;
    });
  }
}

TEST(XAttention, RejectsBadParameters) {
  spattn::XAttentionParams p;
  p.stride = 3;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.block_size = 96;
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.threshold = {};
  EXPECT_THROW(p.validate(), std::invalid_argument);
  p = {};
  p.threshold = {0.5f, 1.5f};
  EXPECT_THROW(p.validate(), std::invalid_argument);
}
