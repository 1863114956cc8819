// The job-file parser of `cskv run` (see job_file.h): bounds, one parse noting repeated keys,
// then every key looked up and type-checked.
#include "launch/job_file.h"

#include <set>

#include "common/error.h"
#include "common/json_bounds.h"

namespace cskv::cli {

namespace {

using json = nlohmann::json;

// The argument text of a JSON value of the right type.
std::string argument_text(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  return value.dump();  // shortest round-trip form of the number
}

// Bounded before parsing (each value becomes one command-line argument, so a string is at most
// an argument's size); a key given twice is refused like a repeated flag.
json parse_job_file(const std::string& text, const std::string& path) {
  check_json_bounds(text, path, {kMaxJobFileBytes, kMaxArgumentBytes, 16});
  std::set<std::string> keys;
  std::string repeated;
  const json::parser_callback_t note_keys = [&](int depth, json::parse_event_t event,
                                                json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 &&
        !keys.insert(parsed.get<std::string>()).second && repeated.empty()) {
      repeated = parsed.get<std::string>();
    }
    return true;
  };
  const json j = json::parse(text, note_keys, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!j.is_discarded(), path << ": not valid JSON");
  CSKV_CHECK_INPUT(repeated.empty(), path << ": key \"" << repeated << "\" is given twice");
  return j;
}

}  // namespace

std::string key_of(const std::string& flag) {
  std::string k = flag;
  for (auto& c : k) c = c == '-' ? '_' : c;
  return k;
}

std::string flag_of(const std::string& key) {
  std::string f = key;
  for (auto& c : f) c = c == '_' ? '-' : c;
  return f;
}

const char* json_type_name(SettingType type) {
  switch (type) {
    case SettingType::kBool:
      return "true or false";
    case SettingType::kString:
      return "a string";
    case SettingType::kDouble:
      return "a number";
    case SettingType::kInt:
    case SettingType::kInt64:
      return "an integer";
    case SettingType::kUint64:
      return "a non-negative integer";
  }
  return "?";
}

bool json_value_fits(SettingType type, const json& value) {
  switch (type) {
    case SettingType::kBool:
      return value.is_boolean();
    case SettingType::kString:
      return value.is_string();
    case SettingType::kDouble:
      return value.is_number();
    case SettingType::kInt:
    case SettingType::kInt64:
      return value.is_number_integer();
    case SettingType::kUint64:
      return value.is_number_unsigned();
  }
  return false;
}

std::vector<std::string> job_file_arguments(const std::string& text, const std::string& path,
                                            const std::vector<JobKey>& keys) {
  const json j = parse_job_file(text, path);
  CSKV_CHECK_INPUT(j.is_object(),
                   path << ": expected a JSON object of settings, found " << j.type_name());
  std::vector<std::string> args;
  for (const auto& [key, value] : j.items()) {
    const JobKey* k = nullptr;
    for (const JobKey& candidate : keys) {
      if (candidate.flag == flag_of(key)) k = &candidate;
    }
    CSKV_CHECK_INPUT(k != nullptr && key == key_of(flag_of(key)),
                     path << ": unknown key \"" << key << "\" (the keys are the flags of 'cskv run "
                          << "--help' with '_' for '-')");
    CSKV_CHECK_INPUT(json_value_fits(k->type, value), path << ": \"" << key << "\" must be "
                                                           << json_type_name(k->type) << ", found "
                                                           << value.dump());
    args.push_back("--" + k->flag + "=" + argument_text(value));
  }
  return args;
}

}  // namespace cskv::cli
