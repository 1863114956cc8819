// Manifest JSON I/O (atomic write) and validation of the listed shards against disk and the
// expected model; every message names the manifest or shard concerned.
#include "data/manifest.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
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

std::vector<ManifestEntry> read_manifest(const std::string& acts_dir) {
  const std::string path = manifest_path(acts_dir);
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "manifest");
  CSKV_CHECK_INPUT(text, path << ": no manifest (capture has not completed)");
  return parse_manifest(*text, path);
}

namespace {
// Refuses two shards holding the same sequence (a shard copied under another name, or listed
// again): its rows would be trained on twice.
void check_distinct_sequences(const std::string& acts_dir,
                              const std::vector<ManifestEntry>& entries,
                              const std::vector<ShardHeader>& headers) {
  std::map<int64_t, size_t> owner;  // sequence id -> entry index
  for (size_t i = 0; i < headers.size(); ++i) {
    for (const int64_t id : headers[i].sequence_ids) {
      const auto [it, fresh] = owner.emplace(id, i);
      CSKV_CHECK_INPUT(fresh, manifest_path(acts_dir)
                                  << ": " << entries[i].file << " and " << entries[it->second].file
                                  << " both hold sequence " << id
                                  << " (a shard is listed twice under two names)");
    }
  }
}
}  // namespace

void verify_shard_checksums(const std::string& acts_dir, const std::vector<ManifestEntry>& entries,
                            int rank, int world) {
  for (size_t i = 0; i < entries.size(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(world)) != rank) continue;
    const ManifestEntry& e = entries[i];
    const std::string path = acts_dir + "/" + e.file;
    const std::string sum = format_checksum(xxh64_file(path));
    CSKV_CHECK_INPUT(sum == e.checksum, path << ": checksum " << sum << ", manifest.json records "
                                             << e.checksum << " (file is corrupt or changed)");
  }
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
    if (verify_checksums) verify_shard_checksums(acts_dir, {e});
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
  check_distinct_sequences(acts_dir, entries, headers);
  return headers;
}

}  // namespace cskv::data
