// Scalar half-precision (IEEE fp16 or bfloat16) to float conversion, included inside each ISA
// file's anonymous namespace (see the ODR note in simd.hpp): the portable path and the tails of
// the vector loops. Both conversions are exact (every fp16 and bf16 value is a float).

inline float half_bits_to_float(uint16_t h, bool bf16) {
  uint32_t bits;
  if (bf16) {
    bits = uint32_t(h) << 16;
  } else {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1fu) {
      bits = sign | 0x7f800000u | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
      bits = sign | ((exp + 112u) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
      bits = sign;  // +-0
    } else {  // subnormal: normalise the mantissa
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      bits = sign | (uint32_t(112 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void half_to_float_scalar(const uint16_t* src, long n, float* dst, bool bf16) {
  for (long i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i], bf16);
}
