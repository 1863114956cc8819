// Every setting of the stage commands declared once — group, flag, type, default, help, check —
// from which the CLI flags, the job.json keys and types, run.json and the stage identities derive.
#pragma once

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace cskv::cli {

enum class SettingType { kBool, kString, kDouble, kInt, kInt64, kUint64 };

struct Setting {
  std::string group;  // the --help section
  std::string flag;   // long name; the job.json key is this with '_' for '-'
  SettingType type;
  std::optional<std::string> default_value;  // none: no default (then absent unless given)
  std::string help;
  // Throws a usage error naming --flag when the given value is invalid (empty: any value).
  std::function<void(const cxxopts::ParseResult& r, const std::string& flag)> check;
  bool capture_identity = false;  // part of the settings a complete capture is recorded with
};
using SettingTable = std::vector<Setting>;

// The tables. Capture: input, sampling, stored dtype, batch, device (not --model, --layers, --seed,
// --out). Train: ranks, init, quantization, optimizer, checkpoints, context (not --model, --acts,
// --layers, --seed, --ckpt-dir). Eval: <prefix>context, <prefix>decode, <prefix>sequences and
// memory-contexts. Runtime: --backend, --threads, --log-dir. General: --log-level.
const SettingTable& capture_settings();
const SettingTable& train_settings();
SettingTable eval_settings(const std::string& prefix);
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

// job.json key <-> flag name.
std::string key_of(const std::string& flag);
std::string flag_of(const std::string& key);

// What job.json must hold for a setting of this type ("a number", "true or false", ...) and
// whether `value` is of it.
const char* json_type_name(SettingType type);
bool json_value_fits(SettingType type, const nlohmann::json& value);
// The setting's final value (given or default) as JSON of its type; null when it has neither.
nlohmann::json resolved_value(const cxxopts::ParseResult& r, const Setting& setting);

// --memory-contexts: comma-separated token counts >= 1 ("1024,4096"), or a usage error.
std::vector<int64_t> parse_memory_contexts(const std::string& text);

// The floating-point dtype vocabulary of every subcommand. Accepted spellings: f32 fp32 float32
// float | f16 fp16 float16 half | bf16 bfloat16. Canonical names: f32, f16, bf16.
enum class FloatDtype { kF32, kF16, kBF16 };
std::optional<FloatDtype> parse_float_dtype(const std::string& text);
const char* float_dtype_name(FloatDtype dtype);
// The dtype of --flag, one of `allowed`, or a usage error listing them canonically:
// "--dtype: expected f32|f16|bf16, found 'f64'".
FloatDtype float_dtype_setting(const std::string& flag, const std::string& text,
                               const std::vector<FloatDtype>& allowed);

}  // namespace cskv::cli
