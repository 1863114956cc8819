// manifest.json text → entries, every field type-checked (nlohmann errors never escape).
#include "data/manifest_json.h"

#include <map>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "common/error.h"
#include "common/json_bounds.h"
#include "common/json_integer.h"

namespace cskv::data {

namespace {
template <typename T>
T field(const nlohmann::json& obj, const char* key, const std::string& path, size_t index) {
  CSKV_CHECK_INPUT(obj.is_object() && obj.contains(key),
                   path << ": shard entry " << index << " has no '" << key << "'");
  // A float, or an integer out of T's range, is the wrong type (get<T> would overflow).
  if constexpr (std::is_integral_v<T>) {
    CSKV_CHECK_INPUT(json_integer_fits<T>(obj.at(key)),
                     path << ": shard entry " << index << " field '" << key
                          << "' has the wrong type: " << obj.at(key).dump());
  }
  try {
    return obj.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    CSKV_FAIL_INPUT(path << ": shard entry " << index << " field '" << key
                         << "' has the wrong type: " << obj.at(key).dump());
  }
}
}  // namespace

std::vector<ManifestEntry> parse_manifest(const std::string& text, const std::string& path) {
  check_json_bounds(text, path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    CSKV_FAIL_INPUT(path << ": not valid JSON: " << e.what());
  }
  CSKV_CHECK_INPUT(doc.is_object() && doc.contains("format_version") &&
                       doc["format_version"].is_number_integer(),
                   path << ": missing integer 'format_version'");
  const auto version = doc["format_version"].get<int64_t>();
  CSKV_CHECK_INPUT(version == kManifestFormatVersion, path << ": format_version is " << version
                                                           << ", this build reads version "
                                                           << kManifestFormatVersion);
  CSKV_CHECK_INPUT(doc.contains("shards") && doc["shards"].is_array(),
                   path << ": missing array 'shards'");
  std::vector<ManifestEntry> entries;
  std::map<std::string, size_t> index_of;  // file -> its entry
  size_t i = 0;
  for (const auto& s : doc["shards"]) {
    ManifestEntry e;
    e.file = field<std::string>(s, "file", path, i);
    e.bytes = field<uint64_t>(s, "bytes", path, i);
    e.checksum = field<std::string>(s, "checksum", path, i);
    e.split = field<std::string>(s, "split", path, i);
    e.num_sequences = field<int64_t>(s, "num_sequences", path, i);
    e.token_count = field<int64_t>(s, "token_count", path, i);
    CSKV_CHECK_INPUT(e.split == "train" || e.split == "holdout",
                     path << ": shard entry " << i << " split is '" << e.split
                          << "', expected train or holdout");
    CSKV_CHECK_INPUT(!e.file.empty() && e.file.find('/') == std::string::npos,
                     path << ": shard entry " << i << " file '" << e.file
                          << "' must be a plain file name inside the acts directory");
    const auto [seen, fresh] = index_of.emplace(e.file, i);
    CSKV_CHECK_INPUT(fresh, path << ": lists " << e.file << " twice (shard entries " << seen->second
                                 << " and " << i << ")");
    entries.push_back(std::move(e));
    ++i;
  }
  return entries;
}

}  // namespace cskv::data
