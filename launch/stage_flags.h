// The flags of the pipeline stages, declared once and shared by the standalone subcommands
// (`cskv capture`, `cskv train`) and `cskv run`, with their conversion into the stage options.
#pragma once

#include <cxxopts.hpp>

#include "checkpoint/train_run.h"
#include "data/capture.h"

namespace cskv::cli {

// Capture flags (input, sampling, stored dtype, batch, device) — not --model, --layers, --seed,
// --out, --overwrite, which each command declares itself.
void add_capture_flags(cxxopts::Options& options);
// CaptureOptions from the flags above plus --model, --layers and the given seed flag; out_dir is
// left to the caller.
data::CaptureOptions capture_options(const cxxopts::ParseResult& r, const std::string& seed_flag);

// Training flags (ranks, init, quantization, optimizer, checkpoints, context) — not --model,
// --acts, --layers, --seed, --ckpt-dir, --resume.
void add_train_flags(cxxopts::Options& options);
// TrainRunOptions from the flags above plus --model, --layers, --seed and --threads (usage
// errors name the flag); acts_dir and ckpt_dir are left to the caller.
trainer::TrainRunOptions train_options(const cxxopts::ParseResult& r);

}  // namespace cskv::cli
