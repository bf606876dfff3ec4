// SALE: the int4 tile product at every SIMD variant this CPU runs (VNNI, AVX-512 without VNNI,
// AVX2, generic) equals a scalar int loop exactly, on sizes that break the register blocks; the
// estimator keeps the sink and local blocks, runs dense below dense_len and for tau < 1e-5, and
// a larger tau keeps a subset of the blocks (the threshold only rises). The mask itself is checked
// against a numpy transcription of the official kernel in tests_py/test_sale.py.
#include <random>
#include <vector>

#include "simd/simd.hpp"
#include "spattn/estimators/sale.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

TEST(Sale, Int4TileProductIsExactAtEveryVariant) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> val(-8, 7);
  const auto variants = spattn::simd::qk_i4_variants();
  ASSERT_FALSE(variants.empty());
  for (const auto& var : variants)
    for (int rows : {1, 3, 4, 5, 64})
      for (int cols : {1, 15, 16, 17, 32, 33})
        for (int dq : {4, 64, 80, 128}) {
          const int ldk = (cols + 15) / 16 * 16, lds = cols + 3;
          std::vector<int8_t> Q(size_t(rows) * dq), K(size_t(cols) * dq), Kp(size_t(dq) * ldk, 0);
          std::vector<uint8_t> Qu(Q.size());
          for (auto& x : Q) x = int8_t(val(gen));
          for (auto& x : K) x = int8_t(val(gen));
          if (rows > 1) std::fill(Q.begin(), Q.begin() + dq, int8_t(-8));  // extremes: no saturation
          if (cols > 1) std::fill(K.begin(), K.begin() + dq, int8_t(-8));
          for (int j = 0; j < cols; ++j)
            for (int c = 0; c < dq; ++c) Kp[(size_t(c / 4) * ldk + j) * 4 + c % 4] = K[size_t(j) * dq + c];
          for (size_t i = 0; i < Q.size(); ++i) Qu[i] = uint8_t(Q[i] + 8);
          std::vector<int32_t> S(size_t(rows) * lds, 12345);
          var.fn(Qu.data(), rows, dq, Kp.data(), ldk, cols, S.data(), lds);
          for (int i = 0; i < rows; ++i)
            for (int j = 0; j < lds; ++j) {
              if (j >= cols) {
                ASSERT_EQ(S[size_t(i) * lds + j], 12345) << var.name << " wrote past the tile";
                continue;
              }
              int32_t want = 0;
              for (int c = 0; c < dq; ++c) want += int32_t(Q[size_t(i) * dq + c]) * K[size_t(j) * dq + c];
              ASSERT_EQ(S[size_t(i) * lds + j], want) << var.name << " rows " << rows << " cols " << cols << " dq " << dq;
            }
        }
}

TEST(Sale, SinkLocalDenseRulesAndMonotoneInTau) {
  Problem p(1, 4, 2, 1100, 1100, 64, 0, true, 3);
  spattn::SaleParams prm;
  prm.dense_len = 0;
  prm.thresholds = {0.004f, 0.05f, 0.3f, 0.f};
  auto m = spattn::estimate_sale(p.args(), prm);
  prm.thresholds = {0.05f, 0.3f, 1.f, 0.f};
  auto m2 = spattn::estimate_sale(p.args(), prm);
  ASSERT_EQ(m.block_q, 64);
  ASSERT_EQ(m.block_k, 32);
  for (int h = 0; h < 4; ++h)
    for (int qb = 0; qb < m.nqb; ++qb) {
      const int n_max = std::min(m.nkb, (qb + 1) * 2);
      const uint8_t* row = m.row(0, h, qb);
      const uint8_t* row2 = m2.row(0, h, qb);
      EXPECT_TRUE(row[0]);
      for (int j = std::max(0, n_max - 4); j < n_max; ++j) EXPECT_TRUE(row[j]) << "local block " << j;
      for (int j = n_max; j < m.nkb; ++j) EXPECT_FALSE(row[j]) << "above the diagonal";
      for (int j = 0; j < m.nkb; ++j) {
        EXPECT_LE(row2[j], row[j]) << "larger tau keeps a subset";
        if (h == 3) EXPECT_EQ(row[j], j < n_max) << "tau 0: dense";
      }
    }
  // below dense_len every causal block is kept
  Problem small(1, 2, 1, 700, 700, 80, 0, true, 4);
  auto d = spattn::estimate_sale(small.args(), spattn::SaleParams{});
  for (int qb = 0; qb < d.nqb; ++qb)
    for (int j = 0; j < d.nkb; ++j) EXPECT_EQ(d.row(0, 1, qb)[j], j < std::min(d.nkb, (qb + 1) * 2));
}

TEST(Sale, RejectsNonCausalAndChunked) {
  Problem p(1, 2, 1, 300, 300, 64, 0, false);
  EXPECT_THROW(spattn::estimate_sale(p.args(), spattn::SaleParams{}), std::invalid_argument);
  Problem c(1, 2, 1, 200, 300, 64, 0, true);
  EXPECT_THROW(spattn::estimate_sale(c.args(), spattn::SaleParams{}), std::invalid_argument);
}
