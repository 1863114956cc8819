// Every setting of the stage commands declared once — group, flag, type, default, help, check —
// from which the CLI flags, the job.json keys and types and run.json derive (capture's and
// train's rows, with their bindings to the stage options, live in pipeline/settings.h).
#pragma once

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "launch/job_file.h"
#include "pipeline/settings.h"

namespace cskv::cli {

using pipeline::Setting;
using pipeline::SettingTable;
using pipeline::SettingType;

// The bounds of the numeric settings (pipeline/settings.h).
using pipeline::kMaxChannels;
using pipeline::kMaxEpochs;
using pipeline::kMaxMemoryContext;
using pipeline::kMaxRanks;
using pipeline::kMaxSequences;
using pipeline::kMaxSteps;
using pipeline::kMaxThreads;
using pipeline::kMaxTokensPerSequence;

// The tables. Capture: input, sampling, stored dtype, batch, device (not --model, --layers, --seed,
// --out). Train: ranks, init, quantization, optimizer, checkpoints, context (not --model, --acts,
// --layers, --seed, --ckpt-dir). Eval: <prefix>context, <prefix>decode, <prefix>sequences and
// memory-contexts. Runtime: --backend, --threads, --log-dir. General: --log-level.
const SettingTable& capture_settings();
const SettingTable& train_settings();
SettingTable eval_settings(const std::string& prefix);
// --device of cskv eval (capture and train bind the same declaration in their tables).
const SettingTable& device_settings();
const SettingTable& runtime_settings();
const SettingTable& general_settings();
// --overwrite, the one override of the output refusals (capture, train, eval, merge, toy-model,
// toy-tokens declare it from here; `cskv run` has none: its stages keep their refusals).
const SettingTable& overwrite_settings();
// `cskv run`: every setting of its job file, in --help order (without --help and --config).
const SettingTable& run_settings();

// Declares the table's flags on `options`, in table order.
void add_settings(cxxopts::Options& options, const SettingTable& table);
// Runs the checks of the table's settings, in table order.
void check_settings(const cxxopts::ParseResult& r, const SettingTable& table);

// key_of, flag_of, json_type_name, json_value_fits: launch/job_file.h.
// The setting's final value (given or default) as JSON of its type; null when it has neither.
nlohmann::json resolved_value(const cxxopts::ParseResult& r, const Setting& setting);

// --memory-contexts: comma-separated token counts >= 1 ("1024,4096"), or a usage error.
std::vector<int64_t> parse_memory_contexts(const std::string& text);

// The dtype vocabulary of every subcommand (pipeline/settings.h).
using pipeline::float_dtype_name;
using pipeline::float_dtype_setting;
using pipeline::FloatDtype;
using pipeline::parse_float_dtype;

}  // namespace cskv::cli
