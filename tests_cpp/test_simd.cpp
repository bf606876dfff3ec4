// The SIMD layer at every level this CPU supports, against naive double loops on sizes that break
// the register blocks (rows 1..13, columns and head dims not multiples of 8 or 16), and the
// exp / max edge cases the softmax relies on (NaN propagates, exp(-inf) = 0).
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "simd/simd.hpp"
#include "test_helpers.hpp"

namespace {

using spattn::simd::Kernels;

std::vector<float> randn(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(gen);
  return x;
}

std::vector<const Kernels*> levels() {
  std::vector<const Kernels*> out;
  for (auto l : spattn::simd::available()) {
    const Kernels* k = l == spattn::simd::Level::AVX512 ? spattn::simd::avx512_kernels()
                       : l == spattn::simd::Level::AVX2 ? spattn::simd::avx2_kernels()
                                                         : spattn::simd::generic_kernels();
    out.push_back(k);
  }
  return out;
}

}  // namespace

TEST(Simd, GenericIsAlwaysAvailableAndTheChoiceIsOneOfThem) {
  const auto avail = spattn::simd::available();
  ASSERT_FALSE(avail.empty());
  EXPECT_EQ(avail.back(), spattn::simd::Level::Generic);
  bool found = false;
  for (auto l : avail) found |= l == spattn::simd::kernels().level;
  EXPECT_TRUE(found);
}

TEST(Simd, TileProductsMatchNaiveLoops) {
  for (const Kernels* k : levels()) {
    for (int rows : {1, 5, 6, 7, 13})
      for (int cols : {1, 9, 16, 17, 70})
        for (int d : {1, 8, 80, 130}) {
          const int ldkt = (cols + 15) / 16 * 16 + 16, lds = cols + 3;
          const auto q = randn(size_t(rows) * d, 1), kt = randn(size_t(d) * ldkt, 2);
          std::vector<float> s(size_t(rows) * lds, 7.f);
          k->qk(q.data(), rows, d, kt.data(), ldkt, cols, s.data(), lds);
          for (int r = 0; r < rows; ++r)
            for (int c = 0; c < lds; ++c) {
              if (c >= cols) {
                ASSERT_EQ(s[size_t(r) * lds + c], 7.f) << "wrote past the tile";
                continue;
              }
              double ref = 0;
              for (int p = 0; p < d; ++p) ref += double(q[size_t(r) * d + p]) * kt[size_t(p) * ldkt + c];
              ASSERT_NEAR(s[size_t(r) * lds + c], ref, 1e-4 * (1 + std::sqrt(double(d))))
                  << spattn::simd::name(k->level) << " rows " << rows << " cols " << cols << " d " << d;
            }
          if (rows <= 13) {  // row-major K: the decode product
            const int ldk = d + 3;
            const auto kr = randn(size_t(cols) * ldk, 6);
            std::vector<float> s2(size_t(rows) * lds, 7.f);
            k->qk_rowmajor(q.data(), rows, d, kr.data(), ldk, cols, s2.data(), lds);
            for (int r = 0; r < rows; ++r)
              for (int c = 0; c < lds; ++c) {
                if (c >= cols) {
                  ASSERT_EQ(s2[size_t(r) * lds + c], 7.f);
                  continue;
                }
                double ref = 0;
                for (int p = 0; p < d; ++p) ref += double(q[size_t(r) * d + p]) * kr[size_t(c) * ldk + p];
                ASSERT_NEAR(s2[size_t(r) * lds + c], ref, 1e-4 * (1 + std::sqrt(double(d))))
                    << spattn::simd::name(k->level) << " rowmajor rows " << rows << " cols " << cols << " d " << d;
              }
          }
          for (int dv : {1, 13, 64, 80}) {
            const int ldv = dv + 5;
            const auto p = randn(size_t(rows) * lds, 3), v = randn(size_t(cols) * ldv, 4);
            auto o = randn(size_t(rows) * dv, 5);
            const auto o0 = o;
            k->pv(p.data(), rows, lds, v.data(), ldv, cols, dv, o.data());
            for (int r = 0; r < rows; ++r)
              for (int c = 0; c < dv; ++c) {
                double ref = o0[size_t(r) * dv + c];
                for (int j = 0; j < cols; ++j) ref += double(p[size_t(r) * lds + j]) * v[size_t(j) * ldv + c];
                ASSERT_NEAR(o[size_t(r) * dv + c], ref, 1e-4 * (1 + std::sqrt(double(cols))))
                    << spattn::simd::name(k->level) << " pv rows " << rows << " cols " << cols << " dv " << dv;
              }
          }
        }
  }
}

TEST(Simd, ExpAndMaxFollowTheSoftmaxRules) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const Kernels* k : levels()) {
    for (int n : {1, 7, 8, 16, 33}) {
      auto x = randn(n, 9);
      for (auto& v : x) v *= 20.f;
      std::vector<float> y = x;
      const float mx = k->max(x.data(), n);
      double want_max = -inf;
      for (float v : x) want_max = std::max(want_max, double(v));
      EXPECT_EQ(mx, float(want_max)) << spattn::simd::name(k->level);
      const float sum = k->exp_shift_sum(y.data(), n, mx);
      double want_sum = 0;
      for (int i = 0; i < n; ++i) {
        const double e = std::exp(double(x[i]) - mx);
        want_sum += e;
        // float32 x - shift carries |x - shift| * 2^-24 of absolute error into the exponent
        const double arg = std::abs(double(x[i]) - mx);
        EXPECT_NEAR(y[i], e, 2e-7 * (1 + arg) * e + 1e-37) << spattn::simd::name(k->level) << " i " << i;
      }
      EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
    }
    std::vector<float> e{0.f, -inf, -100.f, -87.f, 1.f, std::nanf(""), -1.f, 0.5f, 2.f};
    std::vector<float> y = e;
    EXPECT_TRUE(std::isnan(k->max(e.data(), int(e.size()))));
    k->exp_shift_sum(y.data(), int(y.size()), 0.f);
    EXPECT_EQ(y[0], 1.f);
    EXPECT_EQ(y[1], 0.f);  // exp(-inf) = 0: masked or empty entries add nothing
    EXPECT_EQ(y[2], 0.f);  // below the normal range: 0
    EXPECT_NEAR(y[3], std::exp(-87.0), 1e-44);
    EXPECT_TRUE(std::isnan(y[5]));  // NaN propagates
    EXPECT_NEAR(y[8], std::exp(2.0), 1e-6);
  }
}
