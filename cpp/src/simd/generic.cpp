// Portable kernels of the SIMD layer (baseline flags; see simd.hpp): Eigen's products and
// vectorised exp at whatever the build targets (SSE2 on a default x86-64 build, NEON on ARM).
#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd.hpp"

namespace spattn::simd {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using CMap = Eigen::Map<const RowMat, Eigen::Unaligned, Stride>;
using MMap = Eigen::Map<RowMat, Eigen::Unaligned, Stride>;

void gemm_qk(const float* Q, int rows, int d, const float* Kt, int ldkt, int cols, float* S, int lds) {
  MMap(S, rows, cols, Stride(lds)).noalias() = CMap(Q, rows, d, Stride(d)) * CMap(Kt, d, cols, Stride(ldkt));
}

void gemm_qk_rowmajor(const float* Q, int rows, int d, const float* K, int ldk, int cols, float* S, int lds) {
  MMap(S, rows, cols, Stride(lds)).noalias() = CMap(Q, rows, d, Stride(d)) * CMap(K, cols, d, Stride(ldk)).transpose();
}

void gemm_pv(const float* P, int rows, int ldp, const float* V, long ldv, int cols, int dv, float* O) {
  MMap(O, rows, dv, Stride(dv)).noalias() += CMap(P, rows, cols, Stride(ldp)) * CMap(V, cols, dv, Stride(ldv));
}

// Same rules as the ISA files: below -87.34 (where expf leaves the normal range) and for -inf
// the result is exactly 0 (Eigen's exp clamps there and would give about 3e-39).
float exp_shift_sum(float* x, int n, float shift) {
  Eigen::Map<Eigen::ArrayXf> a(x, n);
  a -= shift;
  a = (a < -87.336544750553f).select(Eigen::ArrayXf::Zero(n), a.exp());
  return a.sum();
}

float max_of(const float* x, int n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return x[i];
    m = x[i] > m ? x[i] : m;
  }
  return m;
}

void scale_row(float* x, int n, float alpha) { Eigen::Map<Eigen::ArrayXf>(x, n) *= alpha; }

#include "online_softmax.inl"
#include "half.inl"

void qk_i4(const uint8_t* Q, int rows, int dq, const int8_t* Kp, int ldk, int cols, int32_t* S, int lds) {
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const uint8_t* q = Q + static_cast<long>(i) * dq;
      int32_t acc = 0;
      for (int c = 0; c < dq; ++c) acc += (int32_t(q[c]) - 8) * int32_t(Kp[(static_cast<long>(c / 4) * ldk + j) * 4 + c % 4]);
      S[static_cast<long>(i) * lds + j] = acc;
    }
}

const Kernels kTable{Level::Generic, &gemm_qk, &gemm_qk_rowmajor, &gemm_pv, &exp_shift_sum, &max_of, &online_softmax,
                     &half_to_float_scalar, &qk_i4};

}  // namespace

const Kernels* generic_kernels() { return &kTable; }

}  // namespace spattn::simd
