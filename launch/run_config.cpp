// Job-file parsing for `cskv run`: keys looked up and type-checked in the settings table, the
// resolved settings (run.json) and the capture identity derived from the same table.
#include "launch/run_config.h"

#include "common/error.h"
#include "common/fs.h"

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

}  // namespace

std::vector<std::string> config_file_arguments(const SettingTable& table, const std::string& path) {
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "job file");
  CSKV_CHECK_INPUT(text.has_value(), path << ": cannot read the job file");
  const json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!j.is_discarded(), path << ": not valid JSON");
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
