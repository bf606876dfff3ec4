// spattn tensor conventions: raw views over C-contiguous float32 buffers.
//
// q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv), out (B, Hq, Nq, Dv),
// lse (B, Hq, Nq). Query head h reads kv head h / (Hq / Hkv). Causal masks are
// bottom-right aligned: query row i sees key j iff j <= i + (Nk - Nq).
// The views own nothing; callers (bindings, tests) keep the buffers alive.
// K and V may be the filled prefix of larger buffers (a decode KV cache, shape
// (B, Hkv, kv_capacity, D)): kv_capacity rows are allocated per kv head and rows [0, Nk) are
// read in place. kv_capacity = 0 means Nk (packed K/V, every call but the cache's).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace spattn {

struct AttnShape {
  int B = 1, Hq = 1, Hkv = 1, Nq = 0, Nk = 0, D = 0, Dv = 0;
  int kv_capacity = 0;  // rows between consecutive kv heads of k and v; 0: Nk

  // Rows allocated per kv head in k / v (the head stride in rows).
  int kv_rows() const { return kv_capacity > 0 ? kv_capacity : Nk; }

  int group() const { return Hq / Hkv; }
  // Offset of the causal diagonal: row i sees key j iff j <= i + causal_offset().
  int causal_offset() const { return Nk - Nq; }

  size_t q_index(int b, int h, int i) const {
    return ((size_t(b) * Hq + h) * Nq + i) * size_t(D);
  }
  size_t k_index(int b, int hk, int j) const {
    return ((size_t(b) * Hkv + hk) * kv_rows() + j) * size_t(D);
  }
  size_t v_index(int b, int hk, int j) const {
    return ((size_t(b) * Hkv + hk) * kv_rows() + j) * size_t(Dv);
  }
  size_t out_index(int b, int h, int i) const {
    return ((size_t(b) * Hq + h) * Nq + i) * size_t(Dv);
  }
  size_t row_index(int b, int h, int i) const { return (size_t(b) * Hq + h) * Nq + i; }

  void validate() const {
    if (B < 1 || Hq < 1 || Hkv < 1 || Nq < 0 || Nk < 0 || D < 1 || Dv < 0)
      throw std::invalid_argument("spattn: invalid attention shape");
    if (kv_capacity < 0 || (kv_capacity > 0 && kv_capacity < Nk))
      throw std::invalid_argument("spattn: kv_capacity (" + std::to_string(kv_capacity) +
                                  ") must be 0 or >= Nk (" + std::to_string(Nk) + ")");
    if (Hq % Hkv != 0)
      throw std::invalid_argument("spattn: Hq (" + std::to_string(Hq) +
                                  ") must be a multiple of Hkv (" + std::to_string(Hkv) + ")");
  }
};

// Inputs and outputs of one attention call. `v` may be null when Dv == 0 (statistics-only
// passes); `lse` may be null when the caller does not want it.
// How K and V are stored: float32 (k, v), or half precision (k_half, v_half hold IEEE fp16 or
// bfloat16 bits; dense attention only, which widens each tile as it reads it).
enum class KVStorage : int { F32 = 0, F16 = 1, BF16 = 2 };

struct AttnArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  KVStorage kv = KVStorage::F32;
  const uint16_t* k_half = nullptr;
  const uint16_t* v_half = nullptr;
  AttnShape shape;
  float scale = 0.f;  // <= 0 means 1/sqrt(D)
  bool causal = false;
  float* out = nullptr;
  float* lse = nullptr;

  float effective_scale() const { return scale > 0.f ? scale : 1.f / std::sqrt(float(shape.D)); }
};

}  // namespace spattn
