// Whether a JSON value is an integer that a C++ integer type holds exactly. nlohmann's get<T>()
// converts a float, or an integer out of T's range, without a word (a float beyond the range is
// undefined behaviour): readers of files cskv did not necessarily write ask this first.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <type_traits>

namespace cskv {

template <typename T>
bool json_integer_fits(const nlohmann::json& v) {
  static_assert(std::is_integral_v<T>);
  if (v.is_number_unsigned()) {
    return v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
  }
  if (!v.is_number_integer()) return false;
  const auto x = v.get<std::int64_t>();
  if (std::is_unsigned_v<T>) return x >= 0;  // a negative number is signed in nlohmann
  return x >= static_cast<std::int64_t>(std::numeric_limits<T>::min()) &&
         x <= static_cast<std::int64_t>(std::numeric_limits<T>::max());
}

}  // namespace cskv
