// acts/manifest.json: the list of complete shards (file, bytes, xxh64 checksum, split, counts),
// written atomically and last; a shard not listed is incomplete and is redone by capture.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/activation_shard.h"
#include "data/manifest_json.h"

namespace cskv::data {

// The entry finish() produced for a shard inside acts_dir.
ManifestEntry manifest_entry(const ShardSummary& s);

std::string manifest_path(const std::string& acts_dir);  // <acts_dir>/manifest.json

// Writes <acts_dir>/manifest.json via manifest.json.tmp + fsync + rename + directory fsync.
// Entries keep the given order (the order readers stream shards in).
void write_manifest(const std::string& acts_dir, const std::vector<ManifestEntry>& entries);

// Parses the manifest only. A missing file: "<dir>/manifest.json: no manifest (capture has
// not completed)"; malformed JSON or fields: an input error naming the file and field; a file
// listed twice: "<dir>/manifest.json: lists shard-00000-of-00001.h5 twice (shard entries 0 and 1)".
std::vector<ManifestEntry> read_manifest(const std::string& acts_dir);

// Checks that every listed shard exists with the recorded size (and checksum when
// verify_checksums), and that its header matches `expect`. Errors (input), exactly:
//   "<dir>/manifest.json lists shard-00001-of-00002.h5, but <dir>/shard-00001-of-00002.h5 does not
//   exist"
//   "<dir>/shard-...h5: 1000 bytes, manifest.json records 2048 bytes (truncated or rewritten)"
//   "<dir>/shard-...h5: checksum xxh64:..., manifest.json records xxh64:... (file is corrupt or
//   changed)"
// and the header mismatches of check_shard_header(); two shards holding one sequence:
//   "<dir>/manifest.json: shard-b.h5 and shard-a.h5 both hold sequence 3 (a shard is listed
//   twice under two names)".
// Returns the headers in manifest order.
std::vector<ShardHeader> validate_manifest(const std::string& acts_dir,
                                           const std::vector<ManifestEntry>& entries,
                                           const ShardExpectation& expect, bool verify_checksums);

// Re-hashes the entries i with i % world == rank (all of them by default: a full read of each)
// and compares with the recorded xxh64; the checksum error above otherwise.
void verify_shard_checksums(const std::string& acts_dir, const std::vector<ManifestEntry>& entries,
                            int rank = 0, int world = 1);

}  // namespace cskv::data
