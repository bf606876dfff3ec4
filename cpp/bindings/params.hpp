// Parameter structs bound as Python classes, generated from the struct's own field list
// (spattn/params.hpp): attributes with the C++ defaults and docstrings, a keyword constructor that
// rejects unknown names (TypeError) and validates ranges (ValueError naming the field), repr,
// equality and dict conversion.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <charconv>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace spattn::bind {

namespace py = pybind11;

template <class P>
std::vector<std::string> field_names() {
  std::vector<std::string> names;
  P::fields([&](const char* name, auto, const char*) { names.emplace_back(name); });
  return names;
}

// Python value of a field; float32 fields show their shortest decimal form (0.9, not 0.8999999761581421).
inline py::object py_value(float x) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), x);
  return py::float_(std::stod(std::string(buf, r.ptr)));
}
inline py::object py_value(const std::optional<float>& x) { return x ? py_value(*x) : py::none(); }
// A "float or one per head" field: one value shows as a float, several as a list.
inline py::object py_value(const std::vector<float>& x) {
  if (x.size() == 1) return py_value(x[0]);
  py::list out;
  for (float v : x) out.append(py_value(v));
  return out;
}
// An "int or one per head" field: one value shows as an int, several as a list.
inline py::object py_value(const std::vector<int>& x) {
  if (x.size() == 1) return py::int_(x[0]);
  return py::cast(x);
}
template <class T>
py::object py_value(const T& x) { return py::cast(x); }

template <class P>
py::dict params_dict(const P& p) {
  py::dict d;
  P::fields([&](const char* name, auto member, const char*) { d[name] = py_value(p.*member); });
  return d;
}

template <class T> struct type_label { static constexpr const char* text = "a value of the right type"; };
template <> struct type_label<int> { static constexpr const char* text = "an int in [-2**31, 2**31)"; };
template <> struct type_label<float> { static constexpr const char* text = "a float"; };
template <> struct type_label<bool> { static constexpr const char* text = "a bool"; };
template <> struct type_label<std::optional<int>> { static constexpr const char* text = "an int in [-2**31, 2**31) or None"; };
template <> struct type_label<std::optional<float>> { static constexpr const char* text = "a float or None"; };
template <> struct type_label<std::vector<float>> {
  static constexpr const char* text = "a float or a sequence of floats";
};
template <> struct type_label<std::vector<int>> {
  static constexpr const char* text = "an int in [-2**31, 2**31) or a sequence of such ints";
};

// Set field `key` from a Python value; a wrong type raises TypeError naming the field.
template <class P>
void set_field(P& p, const std::string& method, const std::string& key, const py::handle& value) {
  bool found = false;
  P::fields([&](const char* name, auto member, const char*) {
    if (found || key != name) return;
    found = true;
    using T = std::remove_reference_t<decltype(p.*member)>;
    const auto fail = [&]() {
      throw py::type_error(method + ": " + key + " must be " + type_label<T>::text + ", got " +
                           std::string(py::repr(value)));
    };
    if constexpr (std::is_same_v<T, bool>) {  // no truthiness: 1 or "yes" are not bools
      if (!py::isinstance<py::bool_>(value) && std::string(py::str(py::type::handle_of(value).attr("__name__"))) != "bool_") fail();
    }
    try {
      if constexpr (std::is_same_v<T, std::vector<float>> || std::is_same_v<T, std::vector<int>>) {
        // a number, or a sequence of numbers (one per head)
        using E = typename T::value_type;
        const std::string tname = py::str(py::type::handle_of(value).attr("__name__"));
        if (py::isinstance<py::bool_>(value) || tname == "bool_" || py::isinstance<py::str>(value) || value.is_none())
          fail();
        const bool scalar_array = py::hasattr(value, "ndim") && value.attr("ndim").cast<int>() == 0;
        if (PySequence_Check(value.ptr()) && !scalar_array) {
          T out;
          for (auto item : py::reinterpret_borrow<py::sequence>(value)) {
            if constexpr (std::is_same_v<E, int>) {
              const std::string iname = py::str(py::type::handle_of(item).attr("__name__"));
              if (py::isinstance<py::bool_>(item) || iname == "bool_") fail();
            }
            out.push_back(item.cast<E>());
          }
          p.*member = out;
        } else {
          p.*member = T{value.cast<E>()};
        }
      } else {
        p.*member = value.cast<T>();
      }
    } catch (const py::cast_error&) {
      fail();
    }
  });
  if (!found) {
    std::string known;
    for (const auto& n : field_names<P>()) known += (known.empty() ? "" : ", ") + n;
    throw py::type_error(method + ": unknown parameter '" + key + "'; known: " + known);
  }
}

template <class P>
py::class_<P> bind_params(py::module_& m, const char* cls, const char* method, const char* doc) {
  const std::string meth(method);
  py::class_<P> c(m, cls, doc);
  c.def(py::init([meth](const py::kwargs& kw) {
          P p;
          for (auto item : kw) set_field(p, meth, std::string(py::str(item.first)), item.second);
          p.validate();
          return p;
        }),
        "Parameters with the paper's defaults; keywords override them (unknown names raise TypeError, "
        "out-of-range values ValueError).");
  P::fields([&](const char* name, auto member, const char* fdoc) {
    using T = std::remove_reference_t<decltype(std::declval<P&>().*member)>;
    const std::string meth_name(method), field(name);
    c.def_property(
        name, [member](const P& p) { return py_value(p.*member); },
        [member, meth_name, field](P& p, const py::handle& value) {
          P q = p;
          set_field(q, meth_name, field, value);
          q.validate();
          p = q;
        },
        fdoc);
    (void)sizeof(T);
  });
  c.def("validate", &P::validate, "Raise ValueError naming the first parameter out of range.");
  c.def("to_dict", [](const P& p) { return params_dict(p); }, "The parameters as a dict, in declaration order.");
  c.def_static("field_names", &field_names<P>, "Names of the parameters, in declaration order.");
  c.def("__repr__", [cls](const P& p) {
    std::string s = std::string(cls) + "(";
    bool first = true;
    for (auto item : params_dict(p)) {
      s += std::string(first ? "" : ", ") + std::string(py::str(item.first)) + "=" + std::string(py::repr(item.second));
      first = false;
    }
    return s + ")";
  });
  c.def("__eq__", [](const P& a, const py::object& b) {
    return py::isinstance<P>(b) && params_dict(a).equal(params_dict(b.cast<const P&>()));
  });
  c.def("__copy__", [](const P& p) { return P(p); });
  c.def("__deepcopy__", [](const P& p, const py::dict&) { return P(p); });
  return c;
}

}  // namespace spattn::bind
