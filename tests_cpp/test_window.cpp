// Window attention (sinks + per-row window) against the naive double loop with the rule written
// out: (j < sinks or p - left <= j <= p + right) and, causal, j <= p; MInference's A-shape is
// sinks = n_init, left = n_local - 1 (official streaming_forward: j <= p and (p - j < n_local or
// j < n_init)).
#include <limits>

#include "spattn/kernels.hpp"
#include "test_helpers.hpp"

using spattn::testing::Problem;

namespace {

void check_window(int B, int Hq, int Hkv, int Nq, int Nk, int D, bool causal, long long sinks, long long left,
                  long long right, unsigned seed) {
  Problem p(B, Hq, Hkv, Nq, Nk, D, D, causal, seed);
  spattn::window_attention(p.args(), {sinks, left, right});
  const long long off = Nk - Nq;
  p.expect_matches_reference([&](int, int, int i, int j) {
    const long long pos = i + off;
    const bool win = (left < 0 || j >= pos - left) && (right < 0 || j <= pos + right);
    return j < sinks || win;
  });
}

}  // namespace

TEST(Window, AShapeMatchesOfficialRule) {
  for (int L : {1, 63, 64, 300, 517})
    check_window(1, 4, 2, L, L, 64, true, 16, 99, -1, 3 + L);  // n_init 16, n_local 100
}

TEST(Window, ChunkedDecodeAndGqa) {
  check_window(2, 6, 2, 37, 401, 80, true, 8, 63, -1, 5);
  check_window(1, 4, 1, 1, 1000, 128, true, 4, 255, -1, 6);  // decode
  check_window(1, 2, 2, 300, 300, 64, true, 0, 0, -1, 7);    // the diagonal only
}

TEST(Window, NonCausalBothSidesAndUnbounded) {
  check_window(1, 2, 1, 200, 260, 64, false, 3, 17, 9, 8);
  check_window(1, 2, 2, 129, 129, 64, false, 0, -1, 5, 9);
  check_window(1, 2, 2, 129, 129, 64, false, 0, 5, -1, 10);
  check_window(1, 2, 2, 129, 129, 64, true, 1000, 2, 0, 11);  // sinks cover everything
}

TEST(Window, RowsWithoutKeysAreEmpty) {
  // Nq > Nk causal: the first rows see no key at all.
  Problem p(1, 1, 1, 50, 20, 64, 64, true, 12);
  spattn::window_attention(p.args(), {0, 5, -1});
  EXPECT_TRUE(std::isinf(p.lse[0]) && p.lse[0] < 0);
  EXPECT_EQ(p.out[0], 0.f);
  p.expect_matches_reference([&](int, int, int i, int j) { return j >= i - 30 - 5; });
}

TEST(Window, HiddenNonFiniteValuesDoNotLeak) {
  Problem p(1, 1, 1, 300, 300, 64, 64, true, 13);
  for (int c = 0; c < 64; ++c) p.v[size_t(10) * 64 + c] = std::numeric_limits<float>::infinity();
  spattn::window_attention(p.args(), {0, 20, -1});
  for (int i = 40; i < 300; ++i)  // rows whose window starts after key 10
    for (int c = 0; c < 64; ++c) ASSERT_TRUE(std::isfinite(p.out[size_t(i) * 64 + c])) << i;
}

TEST(Window, RejectsBadSpec) {
  Problem p(1, 1, 1, 10, 10, 64, 64, true, 14);
  EXPECT_THROW(spattn::window_attention(p.args(), {-1, 3, 0}), std::invalid_argument);
  EXPECT_THROW(spattn::window_attention(p.args(), {0, -2, 0}), std::invalid_argument);
}
