// Dense causal attention timing straight from C++ (no Python): B=1, Hq=8, Hkv=2, Nk and D from the
// command line and optionally Nq (default Nq = Nk: prefill, GFLOP/s of useful work; Nq = 1: decode,
// GB/s of K/V read). Best of 3 runs. Used for thread-scaling runs on machines without the Python
// stack, e.g.
//   g++ -O3 -DNDEBUG -fopenmp -DEIGEN_DONT_PARALLELIZE -I cpp/include -I cpp/src -I /usr/include/eigen3 \
//       -c cpp/src/simd/avx512.cpp -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c -o avx512.o
//   g++ -O3 -DNDEBUG -fopenmp -DEIGEN_DONT_PARALLELIZE -I cpp/include -I cpp/src -I /usr/include/eigen3 \
//       -c cpp/src/simd/avx2.cpp -mavx2 -mfma -mf16c -o avx2.o
//   g++ -O3 -DNDEBUG -fopenmp -DEIGEN_DONT_PARALLELIZE -I cpp/include -I cpp/src -I /usr/include/eigen3 \
//       cpp/bench/dense_threads.cpp cpp/src/*.cpp cpp/src/kernels/*.cpp cpp/src/estimators/*.cpp \
//       cpp/src/statistics/*.cpp cpp/src/learned/*.cpp cpp/src/simd/generic.cpp cpp/src/simd/dispatch.cpp \
//       avx512.o avx2.o -o dense_threads
//   for t in 1 2 4 8 16; do OMP_NUM_THREADS=$t ./dense_threads 16384 128; OMP_NUM_THREADS=$t ./dense_threads 131072 128 1; done
// Add -DSPATTN_NO_SPLIT_KV to the last line to time decode without split-KV. A fourth argument
// "bf16" stores K and V in bfloat16 (read as stored, widened tile by tile; bytes counted as stored).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <random>
#include <vector>

#include "spattn/kernels.hpp"

int main(int argc, char** argv) {
  const int Nk = argc > 1 ? atoi(argv[1]) : 16384, D = argc > 2 ? atoi(argv[2]) : 128;
  const int Nq = argc > 3 ? atoi(argv[3]) : Nk;
  spattn::AttnShape s; s.B = 1; s.Hq = 8; s.Hkv = 2; s.Nq = Nq; s.Nk = Nk; s.D = D; s.Dv = D;
  std::vector<float> q(size_t(8) * Nq * D), k(size_t(2) * Nk * D), v(size_t(2) * Nk * D), o(q.size()), l(size_t(8) * Nq);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(g);
  for (auto& x : k) x = nd(g);
  for (auto& x : v) x = nd(g);
  spattn::AttnArgs a;
  a.q = q.data(); a.k = k.data(); a.v = v.data(); a.shape = s; a.causal = true; a.out = o.data(); a.lse = l.data();
  const bool half = argc > 4 && std::string(argv[4]) == "bf16";
  std::vector<uint16_t> kh, vh;
  if (half) {
    for (auto* src : {&k, &v}) {
      auto& dst = src == &k ? kh : vh;
      dst.resize(src->size());
      for (size_t i = 0; i < src->size(); ++i) {
        uint32_t u;
        std::memcpy(&u, &(*src)[i], 4);
        dst[i] = uint16_t(u >> 16);
      }
    }
    a.k = a.v = nullptr;
    a.kv = spattn::KVStorage::BF16;
    a.k_half = kh.data();
    a.v_half = vh.data();
  }
  double best = 1e9;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    spattn::dense_attention(a);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (Nq == 1) {
    const double bytes = double(k.size() + v.size()) * (half ? 2 : 4);
    printf("threads=%d decode Nk=%d D=%d K/V %s %.3f ms %.1f GB/s of K/V\n", omp_get_max_threads(), Nk, D,
           half ? "bf16" : "f32", best * 1e3, bytes / best / 1e9);
  } else {
    const double visible = double(Nq) * Nk - double(Nq) * (Nq - 1) / 2;  // Nq == Nk: N(N+1)/2
    printf("threads=%d prefill N=%d D=%d %.3f s %.1f GFLOP/s\n", omp_get_max_threads(), Nk, D, best,
           4.0 * D * 8 * visible / best / 1e9);
  }
}
