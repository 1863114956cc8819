// The job file of `cskv run`: a JSON object whose keys are the command's settings
// (launch/settings.h) with '_' for '-', type-checked against the table and turned into command-line
// arguments (placed before the real ones, so flags override the file); the resolved settings are
// written beside the outputs.
#pragma once

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "launch/settings.h"

namespace cskv::cli {

// "--key=value" arguments for every key of the JSON object in `path`. Input errors, naming the
// file and the key: not a JSON object, an unknown key (`job.json: unknown key "k_densty"`), a
// value of the wrong type (`job.json: "seq_len" must be an integer, found 0.5`), a key given twice
// (`job.json: key "lr" is given twice`), a file over kMaxJobFileBytes, a string over
// kMaxArgumentBytes or nesting deeper than 16 (common/json_bounds.h).
std::vector<std::string> config_file_arguments(const SettingTable& table, const std::string& path);

// The value of a setting every run needs, or a usage error saying where it can come from:
// missing required setting "model" (give --model, or "model" in the --config file).
template <typename T>
T required_setting(const cxxopts::ParseResult& r, const std::string& flag);

// Every setting of the table with its final value and JSON type, keys with '_' — the content of
// <out>/run.json (settings with neither a value nor a default are left out).
nlohmann::json resolved_settings(const SettingTable& table, const cxxopts::ParseResult& r);

// The settings a complete capture is recorded with: the table's capture-identity keys with their
// values in `resolved` (null when absent).
nlohmann::json capture_identity(const SettingTable& table, const nlohmann::json& resolved);

}  // namespace cskv::cli
