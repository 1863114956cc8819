// The `cskv run` stage sequence: capture -> train -> merge -> eval into one output directory, each
// stage skipped when <out>/stages.json records it complete with the same settings; then a summary.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "comm/communicator.h"
#include "pipeline/capture.h"
#include "pipeline/eval.h"
#include "pipeline/train.h"

namespace cskv::pipeline {

// What a run does. The directories of the stages are derived from `out` by run_job (acts/, ckpt/,
// compressor.safetensors, export/, eval/); the other fields of the stage options are used as given.
struct RunOptions {
  std::string out;
  nlohmann::json resolved;          // every setting with its final value: <out>/run.json
  nlohmann::json capture_identity;  // the settings a complete capture is recorded with
  CaptureOptions capture;
  TrainRunOptions train;
  EvalOptions eval;
  bool export_cskv = false;  // also write the reference .ckpt pair into <out>/export
  std::string name;          // of the export files; empty: the reference code's file name
  bool want_eval = true;     // false: the eval stage is off
};

struct RunResult {
  bool interrupted = false;  // a stop signal: the running stage checkpointed; rerun to continue
  std::string summary;       // rank 0: the printed summary (stage times, tokens, compression)
};

// Runs the stages on every rank of comm. Rank 0 writes <out>/run.json (logging the settings that
// changed since the last run), stages.json after every completed stage, and summary.json.
RunResult run_job(const RunOptions& options, comm::Communicator& comm);

}  // namespace cskv::pipeline
