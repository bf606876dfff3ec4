// The logit-range check run after every pass that produces a row log-sum-exp (the kernels, the
// exact statistics behind recall, the oracle mask, SeerAttention's targets and FlexPrefill).
// Logits scale * q.k are formed in float32 and each row's maximum is subtracted only after the
// scale, so a logit beyond +-3.4e38 (finite inputs, a scale near float32's maximum) cannot be
// represented: the row's sum becomes NaN. Rather than return NaN, or a mask built from NaN, the
// pass raises std::invalid_argument (ValueError in Python) naming scale.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "spattn/kernels.hpp"

namespace spattn {

namespace {

bool all_finite(const float* x, size_t n) {
  for (size_t t = 0; t < n; ++t)
    if (!std::isfinite(x[t])) return false;
  return true;
}

bool not_a_sum(float x) { return std::isnan(x) || x == std::numeric_limits<float>::infinity(); }

// K of kv head (b, hk) holds no NaN or inf, whether stored as float32 or as fp16 / bf16 bits
// (all-ones exponent).
bool k_head_finite(const AttnArgs& a, int b, int hk) {
  const AttnShape& s = a.shape;
  const size_t n = size_t(s.Nk) * s.D;
  if (a.kv == KVStorage::F32) return all_finite(a.k + s.k_index(b, hk, 0), n);
  const uint16_t exponent = a.kv == KVStorage::F16 ? 0x7C00 : 0x7F80;
  const uint16_t* kh = a.k_half + s.k_index(b, hk, 0);
  for (size_t t = 0; t < n; ++t)
    if ((kh[t] & exponent) == exponent) return false;
  return true;
}

}  // namespace

void check_logits_in_range(const AttnArgs& a, const float* lse) {
  const AttnShape& s = a.shape;
  const size_t rows = size_t(s.B) * s.Hq * s.Nq;
  size_t r = 0;
  while (r < rows && !not_a_sum(lse[r])) ++r;  // the common case: one pass over lse, nothing else
  if (r == rows) return;
  const int group = s.group();
  std::vector<signed char> k_finite(size_t(s.B) * s.Hkv, -1);  // per (b, kv head): unknown, no, yes
  for (; r < rows; ++r) {
    if (!not_a_sum(lse[r])) continue;
    const int i = int(r % size_t(s.Nq));
    const int h = int(r / size_t(s.Nq) % size_t(s.Hq));
    const int b = int(r / (size_t(s.Nq) * s.Hq));
    if (!all_finite(a.q + s.q_index(b, h, i), size_t(s.D))) continue;  // NaN/inf inputs: the NaN contract
    signed char& kf = k_finite[size_t(b) * s.Hkv + h / group];
    if (kf < 0) kf = k_head_finite(a, b, h / group) ? 1 : 0;
    if (kf == 0) continue;
    std::ostringstream os;
    os.precision(9);
    os << "scale * q.k overflows float32 (|logit| > 3.4e38) for query (b=" << b << ", h=" << h << ", i=" << i
       << ") with scale=" << a.effective_scale()
       << ": attention is computed in float32 and its logits must fit; use a smaller scale or smaller q/k";
    throw std::invalid_argument(os.str());
  }
}

}  // namespace spattn
