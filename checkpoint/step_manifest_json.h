// The JSON of checkpoint steps, free of LibTorch (so tests/fuzz/fuzz_json_formats builds it alone):
// the rank-file entry a step manifest lists and the step manifest's parser.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace cskv::checkpoint {

constexpr int64_t kStepManifestFormatVersion = 1;

// "rank-1.safetensors"
std::string rank_file_name(int rank);

// What the step manifest records about one rank file.
struct RankFileEntry {
  int rank = 0;
  std::string file;      // rank_file_name(rank), relative to the step directory
  uint64_t bytes = 0;    // file size
  std::string checksum;  // "xxh64:<16 hex digits>"
};

// The entry as JSON {rank, file, bytes, checksum}: in step manifests and gathered by rank 0.
void to_json(nlohmann::json& j, const RankFileEntry& e);
void from_json(const nlohmann::json& j, RankFileEntry& e);

struct StepManifest {
  int64_t step = 0;
  int world_size = 0;
  std::vector<RankFileEntry> files;  // one per rank, in rank order
  std::string config_json;           // the resolved config (compact JSON)
};

// Parses a step manifest's text (`path` names it in messages) that must record `step`; input
// errors naming the file and the field for anything malformed (nlohmann's errors never escape).
StepManifest parse_step_manifest(const std::string& text, const std::string& path, int64_t step);

}  // namespace cskv::checkpoint
