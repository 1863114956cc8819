// Comparison of a saved and a current resolved config (flattened key by key) and the refusal
// message that names every differing setting.
#include "checkpoint/resume_config.h"

#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace cskv::checkpoint {

namespace {
nlohmann::json parse_object(const std::string& text, const char* which) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!j.is_discarded() && j.is_object(),
                   "the " << which << " config is not a JSON object: " << text);
  return j;
}

void flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, nlohmann::json>& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it.value().is_object() && !it.value().empty()) {
      flatten(it.value(), key, out);
    } else {
      out[key] = it.value();
    }
  }
}

std::string show(const std::map<std::string, nlohmann::json>& m, const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) return "(absent)";
  return it->second.is_string() ? it->second.get<std::string>() : it->second.dump();
}
}  // namespace

std::vector<std::string> config_differences(const std::string& saved_json,
                                            const std::string& current_json) {
  std::map<std::string, nlohmann::json> saved, current;
  flatten(parse_object(saved_json, "saved"), "", saved);
  flatten(parse_object(current_json, "current"), "", current);
  std::map<std::string, bool> keys;
  for (const auto& kv : saved) keys[kv.first] = true;
  for (const auto& kv : current) keys[kv.first] = true;
  std::vector<std::string> out;
  for (const auto& kv : keys) {
    const auto a = saved.find(kv.first);
    const auto b = current.find(kv.first);
    if (a != saved.end() && b != current.end() && a->second == b->second) continue;
    out.push_back(kv.first + ": " + show(saved, kv.first) + " -> " + show(current, kv.first));
  }
  return out;
}

void check_resume_config(const std::string& saved_json, const std::string& current_json,
                         const std::string& ckpt_dir) {
  const auto diffs = config_differences(saved_json, current_json);
  if (diffs.empty()) return;
  std::string list;
  for (const auto& d : diffs) list += (list.empty() ? "" : "; ") + d;
  CSKV_FAIL_INPUT(ckpt_dir << " holds a run with other settings (" << list
                           << "); use another --ckpt-dir");
}

}  // namespace cskv::checkpoint
