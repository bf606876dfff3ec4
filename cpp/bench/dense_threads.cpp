// Dense causal attention timing straight from C++ (no Python): B=1, Hq=8, Hkv=2, N and D from
// the command line, best of 2 runs, GFLOP/s of useful work. Used for thread-scaling runs on
// machines without the Python stack, e.g.
//   g++ -O3 -DNDEBUG -march=native -fopenmp -DEIGEN_DONT_PARALLELIZE -I cpp/include -I cpp/src \
//       -I /usr/include/eigen3 cpp/bench/dense_threads.cpp cpp/src/*.cpp cpp/src/kernels/*.cpp \
//       cpp/src/estimators/*.cpp cpp/src/statistics/*.cpp cpp/src/learned/*.cpp -o dense_threads
//   for t in 1 2 4 8 16; do OMP_NUM_THREADS=$t ./dense_threads 16384 128; done
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
#include <cstdlib>
#include "spattn/kernels.hpp"
int main(int argc, char** argv) {
  int N = argc > 1 ? atoi(argv[1]) : 16384, D = argc > 2 ? atoi(argv[2]) : 128;
  spattn::AttnShape s; s.B = 1; s.Hq = 8; s.Hkv = 2; s.Nq = N; s.Nk = N; s.D = D; s.Dv = D;
  std::vector<float> q(size_t(8) * N * D), k(size_t(2) * N * D), v(size_t(2) * N * D), o(q.size()), l(8 * N);
  std::mt19937 g(1); std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(g); for (auto& x : k) x = nd(g); for (auto& x : v) x = nd(g);
  spattn::AttnArgs a; a.q = q.data(); a.k = k.data(); a.v = v.data(); a.shape = s; a.causal = true; a.out = o.data(); a.lse = l.data();
  double best = 1e9;
  for (int r = 0; r < 2; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    spattn::dense_attention(a);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, dt);
  }
  double fl = 4.0 * D * 8 * (double(N) * (N + 1) / 2);
  printf("N=%d D=%d %.3f s %.1f GFLOP/s\n", N, D, best, fl / best / 1e9);
}
