// `cskv run --config job.json` as text → command-line arguments: bounded, every key a known
// setting of the right JSON type, no key twice. Free of LibTorch and cxxopts, so that
// fuzz_json_formats exercises exactly this code.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <vector>

#include "pipeline/setting_type.h"

namespace cskv::cli {

using pipeline::SettingType;

// The largest job file read (a job file is a flat object of settings).
inline constexpr std::size_t kMaxJobFileBytes = 1 << 20;
// The longest command-line argument accepted ("--flag=value" or a value alone): longer ones are
// refused before the option parser sees them (its regex recursion would exhaust the stack); a
// job-file string becomes one, so it is bounded alike.
inline constexpr std::size_t kMaxArgumentBytes = 8192;

// job.json key <-> flag name.
std::string key_of(const std::string& flag);
std::string flag_of(const std::string& key);

// What job.json must hold for a setting of this type ("a number", "true or false", ...) and
// whether `value` is of it.
const char* json_type_name(SettingType type);
bool json_value_fits(SettingType type, const nlohmann::json& value);

// A setting a job file may hold: its flag and type.
struct JobKey {
  std::string flag;
  SettingType type;
};

// "--flag=value" for every key of the JSON object `text` (file `path`), in the file's order, or
// an input error naming path: too large or too deep (json_bounds), not JSON, not an object, a key
// given twice, a key that is no setting, a value of another type.
std::vector<std::string> job_file_arguments(const std::string& text, const std::string& path,
                                            const std::vector<JobKey>& keys);

}  // namespace cskv::cli
