// The capture stage: runs the model over calibration sequences (data-parallel over ranks),
// writes each rank's HDF5 activation shards and the reduced Gram statistics (acts/stats.h5).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "data/activation_shard.h"
#include "data/token_source.h"

namespace cskv::pipeline {

struct CaptureOptions {
  std::string model_dir;
  std::string tokens_path;     // flat token file, or
  std::string text_path;       // a UTF-8 text file with
  std::string tokenizer_path;  // a SentencePiece tokenizer.model or an HF tokenizer.json
  // How --text and --holdout-text split into documents, each tokenized with BOS at its start.
  data::TextDocs text_docs = data::TextDocs::kBlankLines;
  // A separate held-out corpus (at most one; empty: the held-out sequences are the end of the
  // training stream, which the training windows never reach — pipeline/sequence_plan.h).
  std::string holdout_tokens_path;  // a token file like --tokens, or
  std::string holdout_text_path;    // a text file tokenized with --tokenizer
  data::TokenDtype token_dtype = data::TokenDtype::kU32;
  int64_t num_seqs = 64;
  int64_t seq_len = 512;
  int64_t holdout_seqs = 8;
  int64_t batch = 4;  // sequences per forward pass
  uint64_t seed = 0;
  data::Sampling sampling = data::Sampling::kRandom;
  data::ActivationDtype dtype = data::ActivationDtype::kFloat16;
  std::vector<int64_t> layers;  // empty: all layers
  std::string out_dir;
  bool overwrite = false;
  // "cpu" (float32 compute) or "cuda" (bfloat16 compute on cuda:<local rank mod GPUs>).
  std::string device = "cpu";
};

struct CaptureResult {
  bool already_complete = false;  // nothing was done: every shard and stats.h5 were there
  // A stop signal (common/stop_signal.h) reached some rank: every rank stopped before its next
  // batch; complete shards are kept (and listed), the rest is redone by a rerun.
  bool interrupted = false;
  std::vector<std::string> shards_written;  // by this rank
  std::vector<std::string> shards_reused;   // by this rank (listed in the manifest already)
  int64_t tokens_captured = 0;              // by this rank, by running the model
  double seconds = 0;
  // Where this rank's time went (wall seconds): the model forward (excluding the hook), HDF5
  // writes (appends, finish with fsync and checksum, manifest update) and statistics updates.
  double seconds_forward = 0;
  double seconds_write = 0;
  double seconds_stats = 0;
};

// A usage error when a tokenizer is given without --text (it would be silently ignored); an
// input error when the file is neither a SentencePiece model nor a tokenizer.json.
void check_tokenizer_use(const CaptureOptions& options);

// "0-7", "0,2,5-6" or "all" (empty) → ascending layer list; each must be < num_layers.
std::vector<int64_t> parse_layer_list(const std::string& spec, int64_t num_layers);

// The resolved capture settings as stored in <out>/capture.json; a rerun with other settings is
// refused with every differing key named, unless options.overwrite.
// It records the model by its config hash and its model::weights_fingerprint(), and the size of
// the held-out stream when one is given (holdout_stream_size >= 0).
std::string capture_config_json(const CaptureOptions& options, const std::string& model_hash,
                                const std::string& weights_fingerprint, int64_t token_stream_size,
                                int64_t holdout_stream_size, int world_size);

// The activations in acts_dir must come from the model whose weights fingerprint is given:
// <acts>/capture.json must record it as "model_weights_fingerprint". Input error otherwise,
// naming both fingerprints (or the missing file or key, with the hint to capture again). A
// capture.json of another config_hash is left to the config-hash checks of stats.h5 and the
// shards (their readers name the file).
void check_capture_weights(const std::string& acts_dir, const std::string& config_hash,
                           const std::string& weights_fingerprint);

// The checks of the settings alone (exactly one token source, sizes, ranks), the first thing
// run_capture does; usage errors naming the flag. `cskv run` calls it before any stage works.
void validate_capture_options(const CaptureOptions& options, int world_size);

// Runs the whole stage on every rank of comm (collective). Shards already listed in the manifest
// are kept (their statistics are recomputed from the file, bit for bit as when they were written);
// all others are (re)written. Rank r captures the contiguous range [N·r/W, N·(r+1)/W) of the N
// training sequences and likewise of the held-out ones, so the shards concatenate in sequence-id
// order and the statistics (summed per sequence in that order) do not depend on W.
CaptureResult run_capture(const CaptureOptions& options, comm::Communicator& comm);

// Checks every shard of `split` ("" = every split) that <acts_dir>/manifest.json lists (size,
// header, no sequence held twice: validate_manifest) and re-hashes it against its recorded xxh64,
// once per run of a stage reading the capture; the re-hashing is
// shared among the ranks (shard i by rank i mod W). Collective: a mismatch is an input error on
// every rank, "<acts>/shard-...h5: checksum xxh64:..., manifest.json records xxh64:... (file is
// corrupt or changed)".
void verify_capture_checksums(const std::string& acts_dir, comm::Communicator& comm,
                              const std::string& split = "");

}  // namespace cskv::pipeline
