// acts/manifest.json: the list of complete shards (file, bytes, xxh64 checksum, split, counts),
// written atomically and last; a shard not listed is incomplete and is redone by capture.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/activation_shard.h"

namespace cskv::data {

constexpr int64_t kManifestFormatVersion = 1;

struct ManifestEntry {
  std::string file;  // name relative to the acts directory
  uint64_t bytes = 0;
  std::string checksum;  // "xxh64:<16 hex digits>"
  std::string split;     // "train" | "holdout"
  int64_t num_sequences = 0;
  int64_t token_count = 0;
};

// The entry finish() produced for a shard inside acts_dir.
ManifestEntry manifest_entry(const ShardSummary& s);

std::string manifest_path(const std::string& acts_dir);  // <acts_dir>/manifest.json

// Writes <acts_dir>/manifest.json via manifest.json.tmp + fsync + rename + directory fsync.
// Entries keep the given order (the order readers stream shards in).
void write_manifest(const std::string& acts_dir, const std::vector<ManifestEntry>& entries);

// Parses the manifest only. A missing file: "<dir>/manifest.json: no manifest (capture has
// not completed)"; malformed JSON or fields: an input error naming the file and field.
std::vector<ManifestEntry> read_manifest(const std::string& acts_dir);

// Checks that every listed shard exists with the recorded size (and checksum when
// verify_checksums), and that its header matches `expect`. Errors (input), exactly:
//   "<dir>/manifest.json lists shard-00001-of-00002.h5, but <dir>/shard-00001-of-00002.h5 does not
//   exist"
//   "<dir>/shard-...h5: 1000 bytes, manifest.json records 2048 bytes (truncated or rewritten)"
//   "<dir>/shard-...h5: checksum xxh64:..., manifest.json records xxh64:... (file is corrupt or
//   changed)"
// and the header mismatches of check_shard_header(). Returns the headers in manifest order.
std::vector<ShardHeader> validate_manifest(const std::string& acts_dir,
                                           const std::vector<ManifestEntry>& entries,
                                           const ShardExpectation& expect, bool verify_checksums);

}  // namespace cskv::data
