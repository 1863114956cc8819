// Command lines of test helpers: a base argument list whose flags a test may override (cskv
// refuses a flag given twice, so the override replaces the base's flag instead of following it).
#pragma once

#include <string>
#include <vector>

namespace cskv::test {

// `base` without every flag that `extra` gives (with its value, when it is a separate argument),
// then `extra`: with_overrides({"--steps", "4", "--resume"}, {"--steps", "9"}) is
// {"--resume", "--steps", "9"}.
inline std::vector<std::string> with_overrides(const std::vector<std::string>& base,
                                               const std::vector<std::string>& extra) {
  const auto name = [](const std::string& arg) { return arg.substr(0, arg.find('=')); };
  const auto is_flag = [](const std::string& arg) { return arg.rfind("--", 0) == 0; };
  const auto overridden = [&](const std::string& arg) {
    for (const auto& e : extra) {
      if (is_flag(e) && name(e) == name(arg)) return true;
    }
    return false;
  };
  std::vector<std::string> out;
  for (size_t i = 0; i < base.size(); ++i) {
    if (!is_flag(base[i]) || !overridden(base[i])) {
      out.push_back(base[i]);
      continue;
    }
    const bool separate_value =
        base[i].find('=') == std::string::npos && i + 1 < base.size() && !is_flag(base[i + 1]);
    if (separate_value) ++i;
  }
  out.insert(out.end(), extra.begin(), extra.end());
  return out;
}

}  // namespace cskv::test
