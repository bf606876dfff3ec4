// Shared test fixtures: seeded random tensors and comparison against the double reference.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "spattn/reference.hpp"
#include "spattn/tensor.hpp"

namespace spattn::testing {

// Float32 kernels vs double reference on O(1) inputs.
constexpr double kTol = 2e-5;

struct Problem {
  AttnShape s;
  std::vector<float> q, k, v, out, lse;
  bool causal = false;
  const LogitBias* bias = nullptr;  // set on args() (and so seen by the reference) when not null

  Problem(int B, int Hq, int Hkv, int Nq, int Nk, int D, int Dv, bool causal_, unsigned seed = 1)
      : causal(causal_) {
    s.B = B; s.Hq = Hq; s.Hkv = Hkv; s.Nq = Nq; s.Nk = Nk; s.D = D; s.Dv = Dv;
    std::mt19937 gen(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    q.resize(size_t(B) * Hq * Nq * D);
    k.resize(size_t(B) * Hkv * Nk * D);
    v.resize(size_t(B) * Hkv * Nk * Dv);
    for (auto& x : q) x = nd(gen);
    for (auto& x : k) x = nd(gen);
    for (auto& x : v) x = nd(gen);
    out.assign(size_t(B) * Hq * Nq * Dv, 123.f);
    lse.assign(size_t(B) * Hq * Nq, 123.f);
  }
  AttnArgs args() {
    AttnArgs a;
    a.q = q.data(); a.k = k.data(); a.v = v.data(); a.shape = s; a.causal = causal;
    a.out = out.data(); a.lse = lse.data(); a.bias = bias;
    return a;
  }
  // Compare out/lse with the reference under an extra visibility predicate.
  void expect_matches_reference(const reference::Allowed& allowed) {
    std::vector<double> ro, rl;
    reference::attention(args(), allowed, ro, rl);
    for (size_t i = 0; i < rl.size(); ++i) {
      if (std::isinf(rl[i])) {
        ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "row " << i << " lse " << lse[i];
      } else {
        ASSERT_NEAR(lse[i], rl[i], kTol * (1 + std::abs(rl[i]))) << "row " << i;
      }
    }
    for (size_t i = 0; i < ro.size(); ++i) ASSERT_NEAR(out[i], ro[i], kTol) << "element " << i;
  }
};

}  // namespace spattn::testing
