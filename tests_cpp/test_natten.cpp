// Neighbourhood attention (spattn::neighborhood_attention) against the naive double loop with
// NATTEN's reference mask written out per axis as csrc/include/natten/cuda/reference/mask.hpp
// states it (get_win_start's shift form max(L - left, 0) + (L + right >= n) (n - right - L - 1),
// get_win_end, is_neighbor; qkv_fix_dilation for the group length), and the token indices of the
// same pattern checked against that rule.
#include <array>
#include <limits>
#include <vector>

#include "spattn/neighborhood.hpp"
#include "test_helpers.hpp"

using spattn::NeighborhoodSpec;
using spattn::testing::Problem;

namespace {

// Neighbour rule along one axis (NATTEN reference form), for coordinates xq, xk.
bool natten_neighbor_1d(int xq, int xk, int n, int kernel, int stride, int dilation, bool causal) {
  const int g = xq % dilation;
  if (xk % dilation != g) return false;
  const int len = n / dilation + 1 - (g + (dilation - n % dilation)) / dilation;  // qkv_fix_dilation
  const int uq = xq / dilation, uk = xk / dilation;
  const int left = kernel / 2, right = kernel / 2 + kernel % 2 - 1;
  int start, end;
  if (causal) {
    const int leader = std::min((uq / stride) * stride + stride - 1, len - 1);
    start = std::max(leader - left - right, 0);
    end = std::min(uq + 1, len);
  } else {
    const int leader = std::min((uq / stride) * stride + stride / 2, len - 1);
    start = std::max(leader - left, 0) + (leader + right >= len) * (len - right - leader - 1);
    end = start + kernel;
  }
  return uk >= start && uk < end;
}

bool natten_neighbor(const NeighborhoodSpec& sp, int i, int j) {
  int ri = i, rj = j;
  bool ok = true;
  for (int ax = sp.rank - 1; ax >= 0; --ax) {
    const int n = sp.extent[ax];
    ok = ok && natten_neighbor_1d(ri % n, rj % n, n, sp.kernel[ax], sp.stride[ax], sp.dilation[ax], sp.causal[ax]);
    ri /= n;
    rj /= n;
  }
  return ok;
}

NeighborhoodSpec spec(std::vector<int> n, std::vector<int> k, std::vector<int> s, std::vector<int> d,
                      std::vector<bool> c) {
  NeighborhoodSpec sp;
  sp.rank = int(n.size());
  for (int i = 0; i < sp.rank; ++i) {
    sp.extent[i] = n[i];
    sp.kernel[i] = k[i];
    sp.stride[i] = s[i];
    sp.dilation[i] = d[i];
    sp.causal[i] = c[i];
  }
  return sp;
}

void check(const NeighborhoodSpec& sp, int B, int Hq, int Hkv, int D, int Dv, unsigned seed) {
  const int N = int(sp.tokens());
  Problem p(B, Hq, Hkv, N, N, D, Dv, false, seed);
  spattn::neighborhood_attention(p.args(), sp);
  p.expect_matches_reference([&](int, int, int i, int j) { return natten_neighbor(sp, i, j); });
  int K = 0;
  const std::vector<int32_t> idx = spattn::neighborhood_token_indices(sp, &K);
  for (int i = 0; i < N; ++i) {
    std::vector<int32_t> want;
    for (int j = 0; j < N; ++j)
      if (natten_neighbor(sp, i, j)) want.push_back(j);
    want.resize(size_t(K), -1);
    ASSERT_EQ(std::vector<int32_t>(idx.begin() + size_t(i) * K, idx.begin() + size_t(i + 1) * K), want) << i;
  }
}

}  // namespace

TEST(Natten, OneDimensionalKernelsStridesDilations) {
  check(spec({17}, {5}, {1}, {1}, {false}), 1, 2, 1, 64, 64, 1);
  check(spec({17}, {4}, {1}, {1}, {true}), 1, 2, 2, 64, 64, 2);
  check(spec({23}, {6}, {3}, {1}, {false}), 2, 4, 2, 80, 80, 3);
  check(spec({29}, {4}, {2}, {3}, {true}), 1, 1, 1, 128, 128, 4);
  check(spec({31}, {7}, {7}, {4}, {false}), 1, 2, 1, 64, 32, 5);
  check(spec({600}, {300}, {1}, {1}, {false}), 1, 1, 1, 64, 64, 6);  // windows across K^T tiles
  check(spec({500}, {5}, {1}, {1}, {true}), 1, 1, 1, 64, 64, 16);     // long row, small kernel: ~32-query chunks
}

TEST(Natten, TwoDimensionalPerAxisOptions) {
  check(spec({7, 9}, {3, 4}, {1, 1}, {1, 1}, {false, false}), 1, 2, 1, 64, 64, 7);
  check(spec({10, 13}, {3, 5}, {3, 2}, {2, 2}, {true, false}), 1, 4, 2, 64, 64, 8);
  check(spec({11, 12}, {4, 3}, {1, 1}, {2, 3}, {false, true}), 2, 2, 2, 80, 80, 9);
  check(spec({3, 300}, {2, 129}, {1, 64}, {1, 1}, {true, false}), 1, 1, 1, 64, 64, 10);
}

TEST(Natten, ThreeDimensional) {
  check(spec({4, 5, 6}, {3, 2, 3}, {1, 1, 1}, {1, 1, 1}, {false, false, false}), 1, 2, 1, 64, 64, 11);
  check(spec({5, 6, 7}, {2, 3, 3}, {1, 3, 2}, {2, 1, 2}, {true, false, false}), 1, 2, 2, 64, 64, 12);
  check(spec({6, 4, 9}, {2, 2, 4}, {2, 1, 3}, {3, 2, 2}, {false, true, true}), 1, 4, 1, 128, 128, 13);
}

TEST(Natten, NonCausalQueriesSeeExactlyTheKernelProduct) {
  int K = 0;
  const auto idx = spattn::neighborhood_token_indices(spec({9, 10, 11}, {3, 4, 5}, {1, 3, 2}, {2, 1, 2},
                                                           {false, false, false}), &K);
  EXPECT_EQ(K, 60);
  for (int32_t x : idx) ASSERT_GE(x, 0);
}

TEST(Natten, RejectsBadSpecAndShape) {
  Problem p(1, 1, 1, 10, 10, 64, 64, false, 14);
  EXPECT_THROW(spattn::neighborhood_attention(p.args(), spec({10}, {11}, {1}, {1}, {false})), std::invalid_argument);
  EXPECT_THROW(spattn::neighborhood_attention(p.args(), spec({10}, {4}, {1}, {3}, {false})), std::invalid_argument);
  EXPECT_THROW(spattn::neighborhood_attention(p.args(), spec({10}, {3}, {4}, {1}, {false})), std::invalid_argument);
  EXPECT_THROW(spattn::neighborhood_attention(p.args(), spec({9}, {3}, {1}, {1}, {false})), std::invalid_argument);
  Problem c(1, 1, 1, 10, 10, 64, 64, true, 15);
  EXPECT_THROW(spattn::neighborhood_attention(c.args(), spec({10}, {3}, {1}, {1}, {false})), std::invalid_argument);
}

TEST(Natten, HiddenNonFiniteValuesDoNotLeak) {
  const NeighborhoodSpec sp = spec({12, 40}, {3, 5}, {1, 1}, {1, 1}, {false, false});
  Problem p(1, 2, 1, 480, 480, 64, 64, false, 17);
  const int bad = 5 * 40 + 20;
  for (int c = 0; c < 64; ++c) p.v[size_t(bad) * 64 + c] = std::numeric_limits<float>::infinity();
  spattn::neighborhood_attention(p.args(), sp);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 480; ++i) {
      const bool sees = natten_neighbor(sp, i, bad);
      for (int c = 0; c < 64; ++c)
        ASSERT_EQ(std::isfinite(p.out[(size_t(h) * 480 + i) * 64 + c]), !sees) << h << " " << i;
    }
}
