// Job-file parsing for `cskv run`: keys looked up and type-checked in the settings table, the
// resolved settings (run.json) and the capture identity derived from the same table.
#include "launch/run_config.h"

#include <set>

#include "common/error.h"
#include "common/fs.h"
#include "common/json_bounds.h"
#include "launch/cli.h"

namespace cskv::cli {

namespace {

using json = nlohmann::json;

const Setting* find_setting(const SettingTable& table, const std::string& flag) {
  for (const Setting& s : table) {
    if (s.flag == flag) return &s;
  }
  return nullptr;
}

// The argument text of a JSON value of the right type.
std::string argument_text(const json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  return value.dump();  // shortest round-trip form of the number
}

// The job file's JSON: bounded before parsing (each value becomes one command-line argument, so
// a string is at most an argument's size), and a key given twice is refused like a repeated flag.
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

std::vector<std::string> config_file_arguments(const SettingTable& table, const std::string& path) {
  const auto text = files::read_whole_file_if_exists(path, kMaxJobFileBytes, "job file");
  CSKV_CHECK_INPUT(text.has_value(), path << ": cannot read the job file");
  const json j = parse_job_file(*text, path);
  CSKV_CHECK_INPUT(j.is_object(),
                   path << ": expected a JSON object of settings, found " << j.type_name());
  std::vector<std::string> args;
  for (const auto& [key, value] : j.items()) {
    const Setting* s = find_setting(table, flag_of(key));
    CSKV_CHECK_INPUT(s != nullptr && key == key_of(flag_of(key)),
                     path << ": unknown key \"" << key << "\" (the keys are the flags of 'cskv run "
                          << "--help' with '_' for '-')");
    CSKV_CHECK_INPUT(json_value_fits(s->type, value), path << ": \"" << key << "\" must be "
                                                           << json_type_name(s->type) << ", found "
                                                           << value.dump());
    args.push_back("--" + s->flag + "=" + argument_text(value));
  }
  return args;
}

template <typename T>
T required_setting(const cxxopts::ParseResult& r, const std::string& flag) {
  if (!r.count(flag)) {
    throw Error(ErrorKind::kUsage, "missing required setting \"" + key_of(flag) + "\" (give --" +
                                       flag + ", or \"" + key_of(flag) +
                                       "\" in the --config file)");
  }
  return r[flag].as<T>();
}
template std::string required_setting<std::string>(const cxxopts::ParseResult&, const std::string&);

json resolved_settings(const SettingTable& table, const cxxopts::ParseResult& r) {
  json j = json::object();
  for (const Setting& s : table) {
    json v = resolved_value(r, s);
    if (!v.is_null()) j[key_of(s.flag)] = std::move(v);
  }
  return j;
}

json capture_identity(const SettingTable& table, const json& resolved) {
  json j = json::object();
  for (const Setting& s : table) {
    if (s.capture_identity) j[key_of(s.flag)] = resolved.value(key_of(s.flag), json());
  }
  return j;
}

}  // namespace cskv::cli
