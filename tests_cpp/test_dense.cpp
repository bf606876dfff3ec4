// Dense kernel against the naive double reference on shapes that break tiling.
#include <cstring>

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

// Half-precision K/V: the result equals the float path on the widened values, bit for bit (same
// tiles, exact widening), for fp16 and bf16, decode (tile-wise widening, split-KV) and prefill
// shapes (widened once). The widening is checked against an independent formula.
namespace {

double fp16_value(uint16_t h) {  // IEEE binary16 by its definition
  const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;
  if (exp == 0x1f) v = man ? std::nan("") : INFINITY;
  else if (exp == 0) v = std::ldexp(man / 1024.0, -14);
  else v = std::ldexp(1.0 + man / 1024.0, exp - 15);
  return sign ? -v : v;
}

struct HalfCase { int B, Hq, Hkv, Nq, Nk, D, Dv; bool causal, bf16; };
class HalfKVTest : public ::testing::TestWithParam<HalfCase> {};

TEST_P(HalfKVTest, EqualsFloatPathOnWidenedValues) {
  const HalfCase c = GetParam();
  Problem p(c.B, c.Hq, c.Hkv, c.Nq, c.Nk, c.D, c.Dv, c.causal, 7);
  std::mt19937 gen(11);
  auto make = [&](std::vector<float>& f, std::vector<uint16_t>& bits) {
    bits.resize(f.size());
    for (size_t i = 0; i < f.size(); ++i) {
      if (c.bf16) {
        uint32_t u;
        std::memcpy(&u, &f[i], 4);
        bits[i] = uint16_t(u >> 16);
        u = uint32_t(bits[i]) << 16;
        std::memcpy(&f[i], &u, 4);
      } else {  // random finite fp16 incl. subnormals
        uint16_t h = uint16_t(gen() & 0xffff);
        if (((h >> 10) & 0x1f) == 0x1f) h &= 0xbfff;
        if (((h >> 10) & 0x1f) > 17) h = uint16_t((h & 0x83ff) | (15 << 10));  // keep |x| < 8
        bits[i] = h;
        f[i] = float(fp16_value(h));
      }
    }
  };
  std::vector<uint16_t> kb, vb;
  make(p.k, kb);
  make(p.v, vb);
  spattn::dense_attention(p.args());
  const std::vector<float> out_f = p.out, lse_f = p.lse;
  spattn::AttnArgs a = p.args();
  a.k = a.v = nullptr;
  a.kv = c.bf16 ? spattn::KVStorage::BF16 : spattn::KVStorage::F16;
  a.k_half = kb.data();
  a.v_half = vb.data();
  std::fill(p.out.begin(), p.out.end(), 123.f);
  spattn::dense_attention(a);
  for (size_t i = 0; i < out_f.size(); ++i) ASSERT_EQ(std::memcmp(&p.out[i], &out_f[i], 4), 0) << "element " << i;
  for (size_t i = 0; i < lse_f.size(); ++i) ASSERT_EQ(std::memcmp(&p.lse[i], &lse_f[i], 4), 0) << "row " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, HalfKVTest, ::testing::Values(
    HalfCase{1, 8, 2, 1, 5000, 64, 64, true, false},    // decode, split-KV, fp16
    HalfCase{2, 9, 3, 1, 3001, 80, 80, true, true},     // decode, GQA 3, bf16
    HalfCase{1, 4, 4, 3, 777, 128, 64, false, false},   // a few rows, Dv != D
    HalfCase{1, 2, 1, 4, 2050, 64, 64, true, true},     // chunked rows, split
    HalfCase{1, 4, 2, 300, 300, 64, 64, true, false},   // prefill: widened once
    HalfCase{1, 2, 2, 127, 300, 128, 128, true, true},  // causal Nq < Nk, prefill shape
    HalfCase{1, 2, 1, 1, 0, 64, 64, true, false}));     // no keys

TEST(HalfKV, WideningIsExactForEverySpecialValue) {
  // One key: the output row is the value row itself, so out = widen(v) exactly.
  const uint16_t specials[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0xbc00, 0x7bff, 0xfbff,
                               0x7c00, 0xfc00, 0x3555, 0x0200, 0x8001, 0x1234, 0x4e00};
  const int Dv = int(sizeof specials / sizeof specials[0]);
  for (bool bf16 : {false, true}) {
    std::vector<float> q(16, 0.5f), out(Dv, 123.f), lse(1);
    std::vector<uint16_t> k(16, bf16 ? 0x3f80 : 0x3c00), v(specials, specials + Dv);
    spattn::AttnArgs a;
    a.shape.B = 1; a.shape.Hq = 1; a.shape.Hkv = 1; a.shape.Nq = 1; a.shape.Nk = 1; a.shape.D = 16; a.shape.Dv = Dv;
    a.q = q.data(); a.out = out.data(); a.lse = lse.data();
    a.kv = bf16 ? spattn::KVStorage::BF16 : spattn::KVStorage::F16;
    a.k_half = k.data(); a.v_half = v.data();
    spattn::dense_attention(a);
    for (int i = 0; i < Dv; ++i) {
      double want;
      if (bf16) {
        uint32_t u = uint32_t(specials[i]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        want = f;
      } else {
        want = fp16_value(specials[i]);
      }
      if (std::isnan(want)) EXPECT_TRUE(std::isnan(out[i])) << i;
      else EXPECT_EQ(double(out[i]), want) << "bits " << std::hex << specials[i] << (bf16 ? " bf16" : " fp16");
    }
  }
}

}  // namespace
