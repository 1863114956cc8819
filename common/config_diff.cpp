// config_differences: flattens both configs to (key, value) maps and lists the keys whose values
// differ; the formatters give the "key: old -> new; ..." text the error messages use.
#include "common/config_diff.h"

#include <map>
#include <set>

namespace cskv {
namespace {

using Flat = std::map<std::string, nlohmann::json>;

void flatten(const nlohmann::json& j, const std::string& prefix, ConfigKeys keys, Flat& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (keys == ConfigKeys::kFlattenNested && it.value().is_object() && !it.value().empty()) {
      flatten(it.value(), key, keys, out);
    } else {
      out[key] = it.value();
    }
  }
}

Flat flat_config(const nlohmann::json& j, ConfigKeys keys) {
  Flat out;
  if (j.is_object()) {
    flatten(j, "", keys, out);
  } else {
    out[""] = j;
  }
  return out;
}

std::optional<nlohmann::json> lookup(const Flat& m, const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

bool same(const std::optional<nlohmann::json>& a, const std::optional<nlohmann::json>& b,
          ConfigEquality equality) {
  if (!a || !b) return !a && !b;
  return equality == ConfigEquality::kJsonValue ? *a == *b : a->dump() == b->dump();
}

std::string value_text(const std::optional<nlohmann::json>& v, ConfigValueText style) {
  if (!v) return "(absent)";
  if (style == ConfigValueText::kPlainStrings && v->is_string()) return v->get<std::string>();
  return v->dump();
}

}  // namespace

std::vector<ConfigDifference> config_differences(const nlohmann::json& before,
                                                 const nlohmann::json& after, ConfigKeys keys,
                                                 ConfigEquality equality) {
  const Flat a = flat_config(before, keys);
  const Flat b = flat_config(after, keys);
  std::set<std::string> all;
  for (const auto& kv : a) all.insert(kv.first);
  for (const auto& kv : b) all.insert(kv.first);
  std::vector<ConfigDifference> out;
  for (const auto& key : all) {
    ConfigDifference d{key, lookup(a, key), lookup(b, key)};
    if (!same(d.before, d.after, equality)) out.push_back(std::move(d));
  }
  return out;
}

std::string format_config_difference(const ConfigDifference& d, ConfigValueText style) {
  return d.key + ": " + value_text(d.before, style) + " -> " + value_text(d.after, style);
}

std::string format_config_differences(const std::vector<ConfigDifference>& diffs,
                                      ConfigValueText style) {
  std::string out;
  for (const auto& d : diffs) out += (out.empty() ? "" : "; ") + format_config_difference(d, style);
  return out;
}

}  // namespace cskv
