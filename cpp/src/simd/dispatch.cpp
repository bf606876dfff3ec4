// Runtime choice of the SIMD kernels (see simd.hpp): CPU detection once, SPATTN_SIMD override.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "simd.hpp"

namespace spattn::simd {

namespace {

bool cpu_has(Level l) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (l) {
    case Level::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
    case Level::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Level::Generic:
      return true;
  }
  return false;
#else
  return l == Level::Generic;
#endif
}

const Kernels* table(Level l) {
  switch (l) {
    case Level::AVX512: return avx512_kernels();
    case Level::AVX2: return avx2_kernels();
    case Level::Generic: return generic_kernels();
  }
  return nullptr;
}

struct Choice {
  const Kernels* k = nullptr;
  std::string note;
};

Choice decide() {
  Choice c;
  const std::vector<Level> avail = available();
  Level pick = avail.front();
  const char* env = std::getenv("SPATTN_SIMD");
  if (env != nullptr && *env != '\0') {
    Level want = Level::Generic;
    bool known = true;
    if (!std::strcmp(env, "avx512")) want = Level::AVX512;
    else if (!std::strcmp(env, "avx2")) want = Level::AVX2;
    else if (!std::strcmp(env, "generic")) want = Level::Generic;
    else known = false;
    if (!known) {
      c.note = std::string("SPATTN_SIMD=") + env + " is not one of avx512, avx2, generic: ignored";
    } else {
      pick = Level::Generic;
      for (Level l : avail)
        if (int(l) <= int(want)) { pick = l; break; }
      c.note = std::string("SPATTN_SIMD=") + env + (pick == want ? "" : ": not supported by this CPU or build");
    }
  } else {
    c.note = "best level of this CPU";
  }
  c.k = table(pick);
  return c;
}

const Choice& choice() {
  static const Choice c = decide();
  return c;
}

}  // namespace

std::vector<Level> available() {
  std::vector<Level> out;
  for (Level l : {Level::AVX512, Level::AVX2, Level::Generic})
    if (table(l) != nullptr && cpu_has(l)) out.push_back(l);
  return out;
}

const char* name(Level level) {
  switch (level) {
    case Level::AVX512: return "avx512";
    case Level::AVX2: return "avx2";
    case Level::Generic: return "generic";
  }
  return "?";
}

const Kernels& kernels() { return *choice().k; }

std::string choice_note() { return choice().note; }

std::vector<QkI4Variant> qk_i4_variants() {
  std::vector<QkI4Variant> out;
  for (Level l : available()) {
    if (l == Level::AVX512) {
      if (avx512_vnni()) out.push_back({"avx512-vnni", table(l)->qk_i4});
      out.push_back({"avx512", avx512_qk_i4_madd()});
    } else {
      out.push_back({name(l), table(l)->qk_i4});
    }
  }
  return out;
}

}  // namespace spattn::simd
