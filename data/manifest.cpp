// Manifest JSON I/O (atomic write) and validation of the listed shards against disk and the
// expected model; every message names the manifest or shard concerned.
#include "data/manifest.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "data/checksum.h"

namespace cskv::data {

namespace fs = std::filesystem;

ManifestEntry manifest_entry(const ShardSummary& s) {
  ManifestEntry e;
  e.file = fs::path(s.path).filename().string();
  e.bytes = s.bytes;
  e.checksum = s.checksum;
  e.split = s.split;
  e.num_sequences = s.num_sequences;
  e.token_count = s.token_count;
  return e;
}

std::string manifest_path(const std::string& acts_dir) { return acts_dir + "/manifest.json"; }

void write_manifest(const std::string& acts_dir, const std::vector<ManifestEntry>& entries) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& e : entries) {
    check_split(e.split);
    shards.push_back({{"file", e.file},
                      {"bytes", e.bytes},
                      {"checksum", e.checksum},
                      {"split", e.split},
                      {"num_sequences", e.num_sequences},
                      {"token_count", e.token_count}});
  }
  const nlohmann::json doc = {{"format_version", kManifestFormatVersion}, {"shards", shards}};
  const std::string path = manifest_path(acts_dir);
  fs::create_directories(acts_dir);
  files::write_file_atomic(path, doc.dump(2) + "\n");
}

namespace {
template <typename T>
T field(const nlohmann::json& obj, const char* key, const std::string& path, size_t index) {
  CSKV_CHECK_INPUT(obj.is_object() && obj.contains(key),
                   path << ": shard entry " << index << " has no '" << key << "'");
  try {
    return obj.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    CSKV_FAIL_INPUT(path << ": shard entry " << index << " field '" << key
                         << "' has the wrong type: " << obj.at(key).dump());
  }
}
}  // namespace

std::vector<ManifestEntry> read_manifest(const std::string& acts_dir) {
  const std::string path = manifest_path(acts_dir);
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "manifest");
  CSKV_CHECK_INPUT(text, path << ": no manifest (capture has not completed)");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(*text);
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
    entries.push_back(std::move(e));
    ++i;
  }
  return entries;
}

std::vector<ShardHeader> validate_manifest(const std::string& acts_dir,
                                           const std::vector<ManifestEntry>& entries,
                                           const ShardExpectation& expect, bool verify_checksums) {
  const std::string mpath = manifest_path(acts_dir);
  std::vector<ShardHeader> headers;
  for (const auto& e : entries) {
    const std::string path = acts_dir + "/" + e.file;
    std::error_code ec;
    const bool exists = fs::is_regular_file(path, ec);
    CSKV_CHECK_INPUT(exists, mpath << " lists " << e.file << ", but " << path << " does not exist");
    const uint64_t bytes = fs::file_size(path, ec);
    CSKV_CHECK_INPUT(!ec && bytes == e.bytes, path << ": " << bytes
                                                   << " bytes, manifest.json records " << e.bytes
                                                   << " bytes (truncated or rewritten)");
    if (verify_checksums) {
      const std::string sum = format_checksum(xxh64_file(path));
      CSKV_CHECK_INPUT(sum == e.checksum, path << ": checksum " << sum << ", manifest.json records "
                                               << e.checksum << " (file is corrupt or changed)");
    }
    ShardHeader h = read_shard_header(path);
    check_shard_header(path, h, expect);
    CSKV_CHECK_INPUT(h.split == e.split,
                     path << ": split is " << h.split << ", manifest.json records " << e.split);
    CSKV_CHECK_INPUT(static_cast<int64_t>(h.sequence_ids.size()) == e.num_sequences &&
                         h.token_count == e.token_count,
                     path << ": holds " << h.sequence_ids.size() << " sequences / " << h.token_count
                          << " tokens, manifest.json records " << e.num_sequences << " / "
                          << e.token_count);
    headers.push_back(std::move(h));
  }
  return headers;
}

}  // namespace cskv::data
