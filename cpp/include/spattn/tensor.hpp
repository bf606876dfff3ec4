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

// Additive logit biases of one attention call, softmax(q.k scale + bias), any combination (each
// pointer null when absent). They enter the S tile of the tile engine before the online softmax;
// no Nq x Nk buffer exists beyond `pair` itself. Bias values must be finite.
//  - key  (B, key_heads, Nk): per key, key_heads = Hq (row of query head h) or Hkv (row of kv
//    head h / group) (Dynamic Mask Attention's value-derived bias, NOSA's eviction bias);
//  - pair (pair_heads, Nq, Nk): per (query, key), pair_heads = 1 (shared) or Hq, shared by the
//    batch (SwinBERT's learned M x M mask, which is that size by definition);
//  - rel  (rel_heads, 2 rel_radius + 1): per head a table indexed by the key - query offset
//    d = j - (i + Nk - Nq) (positions bottom-right aligned like the causal rule), clamped to
//    [-rel_radius, rel_radius]: bias rel[h][clamp(d) + rel_radius]; rel_heads = 1 or Hq (SMA's
//    relative position bias).
struct LogitBias {
  const float* key = nullptr;
  int key_heads = 0;
  const float* pair = nullptr;
  int pair_heads = 0;
  const float* rel = nullptr;
  int rel_heads = 0, rel_radius = 0;

  bool any() const { return key != nullptr || pair != nullptr || rel != nullptr; }
  // Throws std::invalid_argument naming the field unless the head counts fit `s`.
  void check_against(const AttnShape& s) const {
    const auto fail = [](const std::string& m) { throw std::invalid_argument("spattn: " + m); };
    if (key != nullptr && key_heads != s.Hq && key_heads != s.Hkv)
      fail("key bias heads must be Hq (" + std::to_string(s.Hq) + ") or Hkv (" + std::to_string(s.Hkv) + "), got " +
           std::to_string(key_heads));
    if (pair != nullptr && pair_heads != 1 && pair_heads != s.Hq)
      fail("pair bias heads must be 1 or Hq (" + std::to_string(s.Hq) + "), got " + std::to_string(pair_heads));
    if (rel != nullptr && ((rel_heads != 1 && rel_heads != s.Hq) || rel_radius < 0))
      fail("rel bias must have 1 or Hq (" + std::to_string(s.Hq) + ") heads and radius >= 0, got " +
           std::to_string(rel_heads) + " heads, radius " + std::to_string(rel_radius));
  }
};

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
  const LogitBias* bias = nullptr;  // additive logit biases, or null (no bias: no overhead)
  // Un-normalised ReLU^2 attention instead of softmax (SMA / SeqBoat's 'relu2'): out = sum_j
  // relu(s_j)^2 v_j over the visible keys, lse = log sum_j relu(s_j)^2 (-inf when 0). Token-sparse
  // kernel only.
  bool relu2 = false;

  float effective_scale() const { return scale > 0.f ? scale : 1.f / std::sqrt(float(shape.D)); }
};

}  // namespace spattn
