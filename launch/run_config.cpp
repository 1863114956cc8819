// Job-file parsing for `cskv run`: keys looked up and type-checked in the settings table, the
// resolved settings (run.json) and the capture identity derived from the same table.
#include "launch/run_config.h"

#include "common/error.h"
#include "common/fs.h"
#include "launch/cli.h"

namespace cskv::cli {

using json = nlohmann::json;

std::vector<std::string> config_file_arguments(const SettingTable& table, const std::string& path) {
  const auto text = files::read_whole_file_if_exists(path, kMaxJobFileBytes, "job file");
  CSKV_CHECK_INPUT(text.has_value(), path << ": cannot read the job file");
  std::vector<JobKey> keys;
  for (const Setting& s : table) keys.push_back({s.flag, s.type});
  return job_file_arguments(*text, path, keys);
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
