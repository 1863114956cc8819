// The flags of the pipeline stages, declared once and shared by the standalone subcommands
// (`cskv capture`, `cskv train`) and `cskv run`, with their conversion into the stage options.
#pragma once

#include <cxxopts.hpp>

#include "pipeline/capture.h"
#include "pipeline/eval.h"
#include "pipeline/train.h"

namespace cskv::cli {

// Capture flags (input, sampling, stored dtype, batch, device) — not --model, --layers, --seed,
// --out, --overwrite, which each command declares itself.
void add_capture_flags(cxxopts::Options& options);
// CaptureOptions from the flags above plus --model, --layers and the given seed flag; out_dir is
// left to the caller.
pipeline::CaptureOptions capture_options(const cxxopts::ParseResult& r,
                                         const std::string& seed_flag);

// Training flags (ranks, init, quantization, optimizer, checkpoints, context) — not --model,
// --acts, --layers, --seed, --ckpt-dir, --resume.
void add_train_flags(cxxopts::Options& options);
// TrainRunOptions from the flags above plus --model, --layers, --seed and --threads (usage
// errors name the flag); acts_dir and ckpt_dir are left to the caller.
pipeline::TrainRunOptions train_options(const cxxopts::ParseResult& r);

// Evaluation flags: <prefix>context, <prefix>decode, <prefix>sequences and memory-contexts
// (`cskv eval` uses no prefix; `cskv run` uses "eval-", since its --context is the training
// accounting context).
void add_eval_flags(cxxopts::Options& options, const std::string& prefix);
// Fills context, decode, max_sequences and memory_contexts of `o` from those flags.
void eval_options(const cxxopts::ParseResult& r, const std::string& prefix,
                  pipeline::EvalOptions& o);

}  // namespace cskv::cli
