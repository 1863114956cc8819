// A capture's identity: xxh64 of acts/capture.json's settings except the ones that do not change
// what is stored (world_size, batch). stats.h5 records it, so it is never used with another
// capture.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/config_diff.h"

namespace cskv::data {

std::string capture_json_path(const std::string& acts_dir);  // <acts_dir>/capture.json

// "xxh64:<16 hex digits>" of the JSON object's keys other than world_size and batch (compact,
// keys sorted). Input error naming `path` when the text is not a JSON object.
std::string capture_identity(const std::string& capture_json_text, const std::string& path);

// The identity of <acts_dir>/capture.json, or nullopt when the file does not exist.
std::optional<std::string> read_capture_identity(const std::string& acts_dir);

// An earlier capture.json (text read from `path`) against the current settings (the text
// capture_config_json gives): the differing top-level keys, compared as JSON text, and the
// earlier world_size (0 when it is not a positive integer). Input error "<path>: not a JSON object
// (...)" when the earlier text is not one; nlohmann's errors never escape.
struct EarlierCapture {
  std::vector<ConfigDifference> differences;
  int world_size = 0;
};
EarlierCapture compare_capture_settings(const std::string& earlier_text,
                                        const std::string& current_text, const std::string& path);

}  // namespace cskv::data
