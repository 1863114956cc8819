// The settings of the capture and train stages, each declared once — group, flag, type, default,
// help, check, where its value goes in the stage options and whether the stage's resolved
// identity (capture.json, the training resume config) records it. launch/ derives the CLI flags
// and the job.json keys from these rows; the stages derive their identities from them.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pipeline/capture.h"
#include "pipeline/setting_type.h"
#include "pipeline/train.h"

namespace cskv::pipeline {

// Throws a usage error naming --flag when the value (given or default, as JSON of the setting's
// type) is invalid.
using SettingCheck = std::function<void(const nlohmann::json& value, const std::string& flag)>;

struct Setting {
  std::string group;  // the --help section
  std::string flag;   // long name; the job.json key is this with '_' for '-'
  SettingType type;
  std::optional<std::string> default_value;  // none: no default (then absent unless given)
  std::string help;
  SettingCheck check;             // empty: any value of the type
  bool capture_identity = false;  // part of the settings `cskv run` records a capture with
};
using SettingTable = std::vector<Setting>;

// A setting bound to the options of its stage: `set` stores its value (JSON of its type) in the
// options; `identity` reads it back (canonically) for the stage's resolved identity — empty when
// the setting does not decide the stage's results. The identity key is `identity_key`, or the
// job.json key when that is empty.
template <class Options>
struct BoundSetting {
  Setting setting;
  std::function<void(Options& options, const nlohmann::json& value)> set;
  std::function<nlohmann::json(const Options& options)> identity;
  std::string identity_key = {};
};
template <class Options>
using BoundTable = std::vector<BoundSetting<Options>>;

// Capture: input, sampling, stored dtype, batch, device (not --model, --layers, --seed, --out).
const BoundTable<CaptureOptions>& capture_bound_settings();
// Train: ranks, init, quantization, optimizer, checkpoints, context (not --model, --acts,
// --layers, --seed, --ckpt-dir).
const BoundTable<TrainRunOptions>& train_bound_settings();

// The rows without their bindings, in table order.
template <class Options>
SettingTable settings_of(const BoundTable<Options>& table) {
  SettingTable out;
  for (const auto& row : table) out.push_back(row.setting);
  return out;
}

// The identity the bound settings give `options`: {key: identity(options)} for every row that
// has one and whose identity is not null (a setting at a value that leaves older identities as
// they were).
template <class Options>
nlohmann::json settings_identity(const BoundTable<Options>& table, const Options& options) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& row : table) {
    if (!row.identity) continue;
    std::string key = row.identity_key;
    if (key.empty()) {
      key = row.setting.flag;
      for (auto& c : key) c = c == '-' ? '_' : c;
    }
    nlohmann::json value = row.identity(options);
    if (!value.is_null()) j[key] = std::move(value);
  }
  return j;
}

// The bounds of the numeric settings (each setting's check names its flag and the bound).
constexpr int64_t kMaxSequences = 10'000'000;            // --num-seqs, --holdout-seqs, ...
constexpr int64_t kMaxTokensPerSequence = 1 << 20;       // --seq-len, --window, --decode, ...
constexpr int64_t kMaxMemoryContext = int64_t{1} << 24;  // train's --context (accounting only)
constexpr int64_t kMaxChannels = 1 << 16;                // --group-size, --rank-multiple
constexpr int64_t kMaxSteps = 1'000'000'000;             // --steps, --warmup, --save-every
constexpr int64_t kMaxEpochs = 100'000;                  // --epochs
constexpr int kMaxRanks = 1 << 16;                       // --dp
constexpr int kMaxThreads = 1024;                        // --threads (per rank)

// --device, declared once: bound by the capture and the train table (under --help group
// `group`), read by eval; `cskv run` offers it once for every stage.
Setting device_setting(const std::string& group);

// Checks shared by the tables of every stage.
SettingCheck one_of(std::vector<std::string> choices);
// Integers in [lo, hi]: "--epochs: expected an integer in [1, 100000], found -1".
SettingCheck in_range(int64_t lo, int64_t hi);
// Numbers in (lo, hi] (lo_open) or [lo, hi]: "--lr: expected a value in (0, 1], found -1".
SettingCheck number_in(double lo, double hi, bool lo_open);

// The floating-point dtype vocabulary of every subcommand. Accepted spellings: f32 fp32 float32
// float | f16 fp16 float16 half | bf16 bfloat16. Canonical names: f32, f16, bf16.
enum class FloatDtype { kF32, kF16, kBF16 };
std::optional<FloatDtype> parse_float_dtype(const std::string& text);
const char* float_dtype_name(FloatDtype dtype);
// The dtype of --flag, one of `allowed`, or a usage error listing them canonically:
// "--dtype: expected f32|f16|bf16, found 'f64'".
FloatDtype float_dtype_setting(const std::string& flag, const std::string& text,
                               const std::vector<FloatDtype>& allowed);

}  // namespace cskv::pipeline
