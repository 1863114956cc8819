// HDF5 activation shards (DESIGN.md §3): one file per rank and split holding, per captured
// layer, the k/v_proj inputs /layers/<l>/x [tokens, H] plus /tokens [seqs, seq_len] uint32.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/hdf5_util.h"

namespace cskv::data {

constexpr int64_t kShardFormatVersion = 1;

enum class ActivationDtype { kFloat16, kFloat32 };
const char* activation_dtype_name(ActivationDtype d);  // "float16" | "float32"
at::ScalarType to_scalar_type(ActivationDtype d);
// x (float32) rounded the way the shard stores it, returned as float32: what a reader sees.
at::Tensor round_to_storage(const at::Tensor& x, ActivationDtype d);

// "train" | "holdout"; anything else is an input error.
void check_split(const std::string& split);

// shard-00001-of-00003.h5 for the training split, holdout-00001-of-00003.h5 for the holdout.
std::string shard_file_name(int rank, int world_size, const std::string& split = "train");

// The root attributes of a shard, in the file as: format_version, model_config_hash,
// hidden_size, num_layers, layers, seq_len, dtype, token_count, sequence_ids, seed, split.
struct ShardHeader {
  int64_t format_version = kShardFormatVersion;
  std::string model_config_hash;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;       // layers of the model
  std::vector<int64_t> layers;  // the layers stored in this shard (ascending)
  int64_t seq_len = 0;
  ActivationDtype dtype = ActivationDtype::kFloat16;
  int64_t token_count = 0;            // rows of every /layers/<l>/x
  std::vector<int64_t> sequence_ids;  // global calibration index of each /tokens row
  uint64_t seed = 0;
  std::string split = "train";
};

// Reads and checks the header of a complete shard. A missing, truncated or non-HDF5 file gives
// "<path>: cannot open HDF5 file: <HDF5's message>".
ShardHeader read_shard_header(const std::string& path);

// Values a shard must match (empty / -1 = not checked). Mismatches are input errors naming the
// file and both values, e.g. "<path>: hidden_size is 64, expected 128".
struct ShardExpectation {
  std::string model_config_hash;
  int64_t hidden_size = -1;
  int64_t seq_len = -1;
  std::string dtype;  // "float16" | "float32" | ""
  std::string split;  // "train" | "holdout" | ""
};
void check_shard_header(const std::string& path, const ShardHeader& h, const ShardExpectation& e);

// The token ids of a complete shard's sequences: /tokens as int64 [sequences, seq_len].
at::Tensor read_shard_tokens(const std::string& path);

// What finish() reports about the complete file (what the manifest records).
struct ShardSummary {
  std::string path;  // final path
  uint64_t bytes = 0;
  std::string checksum;  // "xxh64:<hex>"
  std::string split;
  int64_t num_sequences = 0;
  int64_t token_count = 0;
};

// Writes one shard batch by batch. The file is created as "<path>.partial" and renamed to path
// only by finish() (after fsync), so a killed writer never leaves a file that looks complete.
// Destroying an unfinished writer removes the partial file.
class ActivationShardWriter {
 public:
  // header.token_count and header.sequence_ids are filled by the appends; header.layers names
  // the datasets created (all empty at first).
  ActivationShardWriter(std::string path, ShardHeader header);
  ~ActivationShardWriter();
  ActivationShardWriter(const ActivationShardWriter&) = delete;
  ActivationShardWriter& operator=(const ActivationShardWriter&) = delete;

  // Appends rows [n_seq * seq_len, H] (float32, or already the storage dtype) to layer's x,
  // converted to the shard dtype. Rows must be whole sequences.
  void append(int64_t layer, const at::Tensor& x);
  // Appends [n_seq, seq_len] token ids (any integer dtype) and their global sequence ids.
  void append_tokens(const std::vector<int64_t>& sequence_ids, const at::Tensor& tokens);

  // Checks every layer holds token_count = sequences * seq_len rows, writes the attributes,
  // closes, fsyncs, renames into place and checksums the file.
  ShardSummary finish();

  const std::string& path() const { return path_; }
  std::string partial_path() const { return path_ + ".partial"; }

 private:
  struct LayerDataset {
    h5::Handle dataset;
    int64_t rows = 0;
  };
  void abandon() noexcept;

  std::string path_;
  ShardHeader header_;
  h5::Handle file_;
  std::map<int64_t, LayerDataset> layers_;
  h5::Handle tokens_;
  int64_t token_rows_ = 0;
  bool finished_ = false;
};

}  // namespace cskv::data
