// Conversion between numpy arrays and the core's views, and the argument checks of every call:
// shapes checked here name the argument and say what was expected and what came (raised in
// Python as ValueError). Results are returned without copies: arrays allocated as numpy, or
// C++ buffers handed to numpy with a capsule that owns them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "spattn/masks.hpp"
#include "spattn/tensor.hpp"

namespace spattn::bind {

namespace py = pybind11;

using FArr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArr = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using BArr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using HArr = py::array_t<uint16_t, py::array::c_style>;  // half-precision bits (no cast: dtype checked in Python)

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline void need_ndim(const py::array& a, int nd, const char* name) {
  if (a.ndim() != nd)
    throw py::value_error(std::string(name) + " must have " + std::to_string(nd) + " dimensions, got shape " +
                          shape_str(a));
}

// Dimensions must fit the core's 32-bit indices.
inline int dim(const py::array& a, int i, const char* name) {
  if (a.shape(i) > py::ssize_t(0x7fffffff))
    throw py::value_error(std::string(name) + " dimension " + std::to_string(i) + " is too large (" +
                          std::to_string(a.shape(i)) + " > 2**31 - 1)");
  return int(a.shape(i));
}

// q (B, Hq, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv) or null.
inline AttnShape qkv_shape(const py::array& q, const py::array& k, const py::array* v) {
  need_ndim(q, 4, "q");
  need_ndim(k, 4, "k");
  if (v != nullptr) need_ndim(*v, 4, "v");
  AttnShape s;
  s.B = dim(q, 0, "q"); s.Hq = dim(q, 1, "q"); s.Nq = dim(q, 2, "q"); s.D = dim(q, 3, "q");
  s.Hkv = dim(k, 1, "k"); s.Nk = dim(k, 2, "k");
  if (s.B == 0 || s.Hq == 0) throw py::value_error("q must have B >= 1 and Hq >= 1, got shape " + shape_str(q));
  if (s.D == 0) throw py::value_error("head dim D must be >= 1, got q shape " + shape_str(q));
  if (k.shape(0) != s.B)
    throw py::value_error("k batch must equal q batch " + std::to_string(s.B) + ", got k shape " + shape_str(k));
  if (k.shape(3) != s.D)
    throw py::value_error("k head dim must equal q head dim " + std::to_string(s.D) + ", got k shape " +
                          shape_str(k));
  if (s.Hkv == 0 || s.Hq % s.Hkv != 0)
    throw py::value_error("number of query heads Hq=" + std::to_string(s.Hq) +
                          " must be a multiple of kv heads Hkv=" + std::to_string(s.Hkv));
  s.Dv = 0;
  if (v != nullptr) {
    if (v->shape(0) != s.B || v->shape(1) != s.Hkv || v->shape(2) != s.Nk)
      throw py::value_error("v must have shape (B, Hkv, Nk, Dv) = (" + std::to_string(s.B) + ", " +
                            std::to_string(s.Hkv) + ", " + std::to_string(s.Nk) + ", Dv), got " + shape_str(*v));
    s.Dv = dim(*v, 3, "v");
  }
  return s;
}

// Logit scale: None -> 1/sqrt(D); otherwise finite and > 0.
inline float check_scale(const std::optional<double>& scale) {
  if (!scale) return 0.f;  // the core's "default" marker
  if (!std::isfinite(*scale) || *scale <= 0.0)
    throw py::value_error("scale must be a finite positive number, got " + py::repr(py::float_(*scale)).cast<std::string>());
  const float f = float(*scale);
  if (!(f >= std::numeric_limits<float>::min()) || std::isinf(f))  // computed in float32: no underflow to "default"
    throw py::value_error("scale must lie in the float32 range [1.2e-38, 3.4e38], got " +
                          py::repr(py::float_(*scale)).cast<std::string>());
  return f;
}

inline AttnArgs make_args(const FArr& q, const FArr& k, const FArr* v, bool causal, const std::optional<double>& scale) {
  AttnArgs a;
  a.shape = qkv_shape(q, k, v);
  a.q = q.data(); a.k = k.data(); a.v = v ? v->data() : nullptr;
  a.causal = causal; a.scale = check_scale(scale);
  return a;
}

inline void need_positive(long long value, const char* name) {
  if (value < 1) throw py::value_error(std::string(name) + " must be >= 1, got " + std::to_string(value));
}

inline BlockMaskView mask_view(const BArr& blocks, int block_q, int block_k, int q_len, int kv_len) {
  need_ndim(blocks, 4, "mask.blocks");
  need_positive(block_q, "block_q");
  need_positive(block_k, "block_k");
  return {blocks.data(), dim(blocks, 0, "mask.blocks"), dim(blocks, 1, "mask.blocks"), dim(blocks, 2, "mask.blocks"),
          dim(blocks, 3, "mask.blocks"), block_q, block_k, q_len, kv_len};
}

inline TokenIndicesView index_view(const IArr& idx, int group_size, int kv_len) {
  need_ndim(idx, 4, "indices");
  need_positive(group_size, "group_size");
  return {idx.data(), dim(idx, 0, "indices"), dim(idx, 1, "indices"), dim(idx, 2, "indices"), dim(idx, 3, "indices"),
          group_size, kv_len};
}

inline RowBlockIndicesView row_block_view(const IArr& blocks, int block_k, int kv_len) {
  need_ndim(blocks, 4, "blocks");
  need_positive(block_k, "block_k");
  return {blocks.data(), dim(blocks, 0, "blocks"), dim(blocks, 1, "blocks"), dim(blocks, 2, "blocks"),
          dim(blocks, 3, "blocks"), block_k, kv_len};
}

inline VerticalSlashView vertical_slash_view(const IArr& vertical, const IArr& slash, int block, int len) {
  need_ndim(vertical, 3, "vertical");
  need_ndim(slash, 3, "slash");
  need_positive(block, "block");
  if (vertical.shape(0) != slash.shape(0) || vertical.shape(1) != slash.shape(1))
    throw py::value_error("vertical and slash must agree on (B, H), got " + shape_str(vertical) + " and " +
                          shape_str(slash));
  return {vertical.data(), slash.data(), dim(vertical, 0, "vertical"), dim(vertical, 1, "vertical"),
          dim(vertical, 2, "vertical"), dim(slash, 2, "slash"), block, len};
}

inline PermutedBlocksView permuted_view(const IArr& perm, const BArr& blocks, int block) {
  need_ndim(perm, 3, "perm");
  need_ndim(blocks, 4, "blocks");
  need_positive(block, "block");
  if (blocks.shape(0) != perm.shape(0) || blocks.shape(1) != perm.shape(1) || blocks.shape(2) != blocks.shape(3))
    throw py::value_error("blocks must have shape (B, H, nb, nb) with (B, H) of perm " + shape_str(perm) + ", got " +
                          shape_str(blocks));
  return {perm.data(), blocks.data(), dim(perm, 0, "perm"), dim(perm, 1, "perm"), dim(perm, 2, "perm"),
          dim(blocks, 2, "blocks"), block};
}

// q_labels (B, Hq, Nq), k_labels (B, Hkv, Nk), map (B, Hq, Cq, Ck).
inline ClusteredView clustered_view(const IArr& q_labels, const IArr& k_labels, const BArr& map) {
  need_ndim(q_labels, 3, "q_labels");
  need_ndim(k_labels, 3, "k_labels");
  need_ndim(map, 4, "map");
  ClusteredView cv{q_labels.data(), k_labels.data(), map.data(), dim(q_labels, 0, "q_labels"),
                   dim(q_labels, 1, "q_labels"), dim(k_labels, 1, "k_labels"), dim(q_labels, 2, "q_labels"),
                   dim(k_labels, 2, "k_labels"), dim(map, 2, "map"), dim(map, 3, "map")};
  if (k_labels.shape(0) != cv.B || map.shape(0) != cv.B || map.shape(1) != cv.Hq)
    throw py::value_error("q_labels (B, Hq, Nq), k_labels (B, Hkv, Nk) and map (B, Hq, Cq, Ck) must agree on B and Hq, "
                          "got " + shape_str(q_labels) + ", " + shape_str(k_labels) + " and " + shape_str(map));
  if (cv.Hkv < 1 || cv.Hq % cv.Hkv != 0)
    throw py::value_error("k_labels heads Hkv=" + std::to_string(cv.Hkv) + " must divide q_labels heads Hq=" +
                          std::to_string(cv.Hq));
  return cv;
}

// Hand a C++ buffer to numpy without copying: a capsule owns the moved vector.
template <class T>
py::array adopt(std::vector<T>&& data, std::vector<py::ssize_t> shape, py::dtype dtype = py::dtype::of<T>()) {
  auto* owned = new std::vector<T>(std::move(data));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array(dtype, std::move(shape), {}, owned->data(), owner);
}

// A BlockMask as a numpy bool array (B, H, nqb, nkb), no copy.
inline py::array adopt_mask(BlockMask&& m) {
  std::vector<py::ssize_t> shape{m.B, m.H, m.nqb, m.nkb};
  return adopt(std::move(m.blocks), std::move(shape), py::dtype::of<bool>());
}

}  // namespace spattn::bind
