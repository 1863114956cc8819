// The text of acts/manifest.json: its entries and the parser, free of LibTorch and HDF5 (so the
// fuzz target tests/fuzz/fuzz_json_formats builds it alone).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// Parses manifest.json text (`path` names it in messages). Input errors: "<path>: not valid JSON:
// ...", a missing or mistyped field ("<path>: shard entry 2 field 'bytes' has the wrong type:
// "x""), an unknown split, a file name that is not a plain name, a file listed twice
// ("<path>: lists shard-00000-of-00001.h5 twice (shard entries 0 and 1)").
std::vector<ManifestEntry> parse_manifest(const std::string& text, const std::string& path);

}  // namespace cskv::data
