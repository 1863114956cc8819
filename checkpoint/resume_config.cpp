// The resume guard over common/config_diff (flattened key by key, strings unquoted) and the
// refusal message that names every differing setting.
#include "checkpoint/resume_config.h"

#include <nlohmann/json.hpp>

#include "common/config_diff.h"
#include "common/error.h"

namespace cskv::checkpoint {

namespace {
nlohmann::json parse_object(const std::string& text, const char* which) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!j.is_discarded() && j.is_object(),
                   "the " << which << " config is not a JSON object: " << text);
  return j;
}
}  // namespace

std::vector<std::string> config_differences(const std::string& saved_json,
                                            const std::string& current_json) {
  std::vector<std::string> out;
  for (const auto& d : cskv::config_differences(parse_object(saved_json, "saved"),
                                                parse_object(current_json, "current"))) {
    out.push_back(format_config_difference(d, ConfigValueText::kPlainStrings));
  }
  return out;
}

void check_resume_config(const std::string& saved_json, const std::string& current_json,
                         const std::string& ckpt_dir) {
  const auto diffs = cskv::config_differences(parse_object(saved_json, "saved"),
                                              parse_object(current_json, "current"));
  if (diffs.empty()) return;
  CSKV_FAIL_INPUT(ckpt_dir << " holds a run with other settings ("
                           << format_config_differences(diffs, ConfigValueText::kPlainStrings)
                           << "); use another --ckpt-dir");
}

}  // namespace cskv::checkpoint
