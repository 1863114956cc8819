// Structured differences between two JSON configs (saved vs current) and their one-line text,
// shared by the capture reuse check, the training resume guard and `cskv run`'s rerun check.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace cskv {

// One setting whose value differs; nullopt means the key is absent on that side.
struct ConfigDifference {
  std::string key;  // "k_density", or "quant.k_bits" when nested objects are flattened
  std::optional<nlohmann::json> before;
  std::optional<nlohmann::json> after;
};

enum class ConfigKeys {
  kFlattenNested,  // a non-empty nested object is compared key by key ("quant.k_bits")
  kTopLevel,       // only top-level keys; a nested object is one value
};

enum class ConfigEquality {
  kJsonValue,  // nlohmann's value equality (1 == 1.0)
  kJsonText,   // equal only when the compact JSON text is identical ("1" != "1.0")
};

// The differing keys in key order. Non-objects are compared as a whole under the key "".
std::vector<ConfigDifference> config_differences(
    const nlohmann::json& before, const nlohmann::json& after,
    ConfigKeys keys = ConfigKeys::kFlattenNested,
    ConfigEquality equality = ConfigEquality::kJsonValue);

enum class ConfigValueText {
  kPlainStrings,  // strings without quotes, other values as compact JSON (resume guard)
  kJson,          // every value as compact JSON, strings quoted (capture reuse check)
};

// "key: before -> after", an absent side as "(absent)".
std::string format_config_difference(const ConfigDifference& d, ConfigValueText style);
// The differences joined with "; " ("" when there are none).
std::string format_config_differences(const std::vector<ConfigDifference>& diffs,
                                      ConfigValueText style);

}  // namespace cskv
