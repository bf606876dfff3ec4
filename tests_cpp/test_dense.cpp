// Dense kernel against the naive double reference on shapes that break tiling.
#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

struct DenseCase { int B, Hq, Hkv, Nq, Nk, D, Dv; bool causal; };

class DenseTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseTest, MatchesDoubleReference) {
  const DenseCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.Dv, c.causal);
  spattn::dense_attention(p.args());
  p.expect_matches_reference(nullptr);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseTest, ::testing::Values(
    DenseCase{1, 1, 1, 1, 1, 64, 64, false},
    DenseCase{1, 2, 1, 63, 63, 64, 64, true},
    DenseCase{2, 4, 2, 127, 300, 80, 80, true},    // causal Nq < Nk, GQA 2
    DenseCase{1, 4, 1, 300, 300, 128, 128, true},  // GQA 4
    DenseCase{1, 4, 4, 1, 517, 128, 64, true},     // decode, Dv != D
    DenseCase{1, 2, 2, 200, 77, 64, 64, true},     // Nq > Nk: first rows empty
    DenseCase{1, 2, 1, 257, 513, 80, 80, false},
    // split-KV (few rows, long keys): decode, a few chunked-prefill rows, empty rows inside chunks
    DenseCase{1, 8, 2, 1, 5000, 64, 64, true},
    DenseCase{2, 4, 1, 3, 4133, 80, 48, true},
    DenseCase{1, 2, 2, 9, 2100, 128, 128, false},
    DenseCase{1, 2, 1, 4, 2050, 64, 64, true}),
    [](const ::testing::TestParamInfo<DenseCase>& i) {
      const DenseCase& c = i.param;
      return "B" + std::to_string(c.B) + "Hq" + std::to_string(c.Hq) + "Hkv" + std::to_string(c.Hkv) + "Nq" +
             std::to_string(c.Nq) + "Nk" + std::to_string(c.Nk) + "D" + std::to_string(c.D) + "Dv" +
             std::to_string(c.Dv) + (c.causal ? "causal" : "full");
    });

TEST(Dense, EmptyRowsGiveZeroOutputAndNegInfLse) {
  Problem p(1, 1, 1, 10, 4, 64, 64, true);  // rows 0..5 see no key
  spattn::dense_attention(p.args());
  for (int i = 0; i < 6; ++i) {
    EXPECT_TRUE(std::isinf(p.lse[i]) && p.lse[i] < 0);
    for (int c = 0; c < 64; ++c) EXPECT_EQ(p.out[i * 64 + c], 0.f);
  }
  EXPECT_TRUE(std::isfinite(p.lse[6]));
}

TEST(Dense, RejectsBadGroupRatio) {
  Problem p(1, 3, 2, 4, 4, 64, 64, false);
  EXPECT_THROW(spattn::dense_attention(p.args()), std::invalid_argument);
}
