// Parameter structs of the estimators: each method's struct is the only place its defaults live.
// A struct lists its fields once, with their documentation, in
//   template <class V> static void fields(V&& v) { v("name", &Struct::member, "doc"); ... }
// which the bindings turn into a Python class (attributes with docstrings, keyword constructor,
// repr, dict conversion), and checks its ranges in validate(), throwing std::invalid_argument
// whose message names the field (raised in Python as ValueError).
#pragma once

#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>

namespace spattn {

// Throws std::invalid_argument("<method>: <field> must <rule>, got <value>").
template <class T>
[[noreturn]] void param_error(const char* method, const char* field, const char* rule, const T& value) {
  std::ostringstream os;
  os.precision(9);
  os << method << ": " << field << " must " << rule << ", got " << value;
  throw std::invalid_argument(os.str());
}

template <class T>
void require_min(const char* method, const char* field, T value, T lo) {
  if (!(value >= lo)) param_error(method, field, ("be >= " + std::to_string(lo)).c_str(), value);
}

template <class T>
void require_min(const char* method, const char* field, const std::optional<T>& value, T lo) {
  if (value) require_min(method, field, *value, lo);
}

// value in (0, 1].
inline void require_unit_interval(const char* method, const char* field, float value) {
  if (!(value > 0.f && value <= 1.f)) param_error(method, field, "be in (0, 1]", value);
}

}  // namespace spattn
