// The bound setting tables (pipeline/settings.h): every setting stores what it is given in the
// stage options, and the stages' resolved identities (the training resume config, capture.json)
// are derived from the rows — equal, key for key and byte for byte, to what the stages recorded
// before the tables existed, so older checkpoints and captures still resume.
#include "pipeline/settings.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>
#include <string>

#include "common/device.h"
#include "data/activation_shard.h"
#include "data/token_source.h"
#include "model/config.h"
#include "tests/support/test_support.h"
#include "trainer/init.h"

namespace cskv::pipeline {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The training identity as pipeline/train.cpp wrote it by hand before the table (the reference).
json hand_written_train_identity(const TrainRunOptions& o, const std::string& model_hash,
                                 const std::string& fingerprint) {
  const auto& c = o.cfg;
  json j;
  j["model_config_hash"] = model_hash;
  j["model_weights_fingerprint"] = fingerprint;
  j["acts"] = fs::absolute(o.acts_dir).string();
  j["layers"] = o.layers;
  j["k_density"] = o.k_density;
  j["v_density"] = o.v_density;
  j["budget"] = o.budget;
  j["rank_multiple"] = o.rank_multiple;
  j["init"] = trainer::init_method_name(c.init);
  j["asvd_alpha"] = c.asvd_alpha;
  j["rotation"] = c.rotate_hadamard ? "hadamard" : "none";
  j["k_bits"] = c.k_bits;
  j["v_bits"] = c.v_bits;
  j["group_size"] = c.group_size;
  j["window"] = c.window;
  j["quant_compat"] = c.quant_compat_cskv ? "cskv" : "none";
  // Since issue 13, only away from their defaults (older identities stay as they were).
  if (c.quant == trainer::QuantMode::kWaterfill) j["quant"] = "waterfill";
  if (c.k_bits_per_token != 0) j["k_bits_per_token"] = c.k_bits_per_token;
  if (c.v_bits_per_token != 0) j["v_bits_per_token"] = c.v_bits_per_token;
  if (c.cache_budget != 0) j["cache_budget"] = c.cache_budget;
  j["lr"] = c.lr;
  j["warmup"] = c.warmup;
  j["steps"] = c.steps;
  j["epochs"] = c.epochs;
  j["batch_tokens"] = c.batch_tokens;
  j["device"] = o.device;  // since issue 12: the device kind and the matmul precision
  j["precision"] = device::precision_name(c.precision);
  j["clip"] = c.clip;
  j["seed"] = c.seed;
  j["threads"] = o.threads;
  return j;
}

// capture.json as pipeline/capture.cpp wrote it by hand before the table (the reference).
json hand_written_capture_identity(const CaptureOptions& o, const std::string& model_hash,
                                   const std::string& fingerprint, int64_t stream, int world) {
  const auto abs = [](const std::string& p) { return p.empty() ? "" : fs::absolute(p).string(); };
  json j;
  j["format_version"] = data::kShardFormatVersion;
  j["model_config_hash"] = model_hash;
  j["model_weights_fingerprint"] = fingerprint;
  j["tokens"] = abs(o.tokens_path);
  j["text"] = abs(o.text_path);
  j["tokenizer"] = abs(o.tokenizer_path);
  j["holdout_tokens"] = abs(o.holdout_tokens_path);
  j["holdout_text"] = abs(o.holdout_text_path);
  const bool text = !o.text_path.empty() || !o.holdout_text_path.empty();
  if (text && o.text_docs != data::TextDocs::kWhole) {  // since issue 14 item 5
    j["text_docs"] = data::text_docs_name(o.text_docs);
  }
  j["token_dtype"] = data::token_dtype_name(o.token_dtype);
  j["token_stream_size"] = stream;
  j["num_seqs"] = o.num_seqs;
  j["seq_len"] = o.seq_len;
  j["holdout_seqs"] = o.holdout_seqs;
  j["batch"] = o.batch;
  j["seed"] = o.seed;
  j["sampling"] = o.sampling == data::Sampling::kRandom ? "random" : "contiguous";
  j["dtype"] = data::activation_dtype_name(o.dtype);
  j["layers"] = o.layers;
  j["world_size"] = world;
  j["device"] = o.device;
  return j;
}

// A value of the row's type other than its default (strings: the second choice where the row
// names them, else the default).
json other_value(const Setting& s) {
  const std::string d = s.default_value.value_or("");
  switch (s.type) {
    case SettingType::kBool:
      return d != "true";
    case SettingType::kString:
      if (s.flag == "init") return "svd";
      if (s.flag == "rotate") return "hadamard";
      if (s.flag == "quant-compat") return "cskv";
      if (s.flag == "quant") return "waterfill";
      if (s.flag == "token-dtype") return "u32";
      if (s.flag == "text-docs") return "lines";
      if (s.flag == "sampling") return "contiguous";
      if (s.flag == "dtype") return "float32";
      if (s.flag == "device") return "cuda";
      if (s.flag == "precision") return "bf16";
      if (s.flag == "resident") return "on";
      return d + "-other";
    case SettingType::kDouble:
      return std::stod(d) / 2 + 0.125;
    case SettingType::kInt:
      return d == "16" ? 4 : std::stoi(d) + 3;
    case SettingType::kInt64:
    case SettingType::kUint64:
      return std::stoll(d) + 3;
  }
  return json();
}

TEST(BoundSettings, TrainIdentityIsTheHandWrittenOneForEveryValueOfEveryRow) {
  for (const auto& row : train_bound_settings()) {
    TrainRunOptions o;
    o.acts_dir = "acts";
    o.layers = {0, 2};
    o.threads = 2;
    o.cfg.seed = 9;
    row.set(o, other_value(row.setting));
    const model::ModelConfig model;
    EXPECT_EQ(json::parse(resolved_config_json(o, model, "xxh64:f")).dump(),
              hand_written_train_identity(o, model.hash(), "xxh64:f").dump())
        << "--" << row.setting.flag;
  }
}

TEST(BoundSettings, CaptureIdentityIsTheHandWrittenOneForEveryValueOfEveryRow) {
  for (const auto& row : capture_bound_settings()) {
    CaptureOptions o;
    o.tokens_path = "tokens.bin";
    o.layers = {1};
    o.seed = 4;
    row.set(o, other_value(row.setting));
    EXPECT_EQ(capture_config_json(o, "h", "xxh64:f", 1000, -1, 3),
              hand_written_capture_identity(o, "h", "xxh64:f", 1000, 3).dump(2))
        << "--" << row.setting.flag;
  }
}

// Every row that decides the numbers moves its identity key when its value changes; the rows
// that do not (checkpoint cadence, data parallelism, accounting context) leave it unchanged.
TEST(BoundSettings, EachIdentityRowChangesItsOwnKeyAndNoOther) {
  const model::ModelConfig model;
  TrainRunOptions defaults;
  defaults.acts_dir = "acts";
  const json base = json::parse(resolved_config_json(defaults, model, "xxh64:f"));
  std::set<std::string> without_identity;
  for (const auto& row : train_bound_settings()) {
    TrainRunOptions o = defaults;
    row.set(o, other_value(row.setting));
    const json changed = json::parse(resolved_config_json(o, model, "xxh64:f"));
    std::set<std::string> moved;
    for (const auto& [k, v] : base.items()) {
      if (changed.at(k) != v) moved.insert(k);
    }
    for (const auto& [k, v] : changed.items()) {
      if (!base.contains(k)) moved.insert(k);  // a key present only away from its default
    }
    if (!row.identity) {
      EXPECT_TRUE(moved.empty()) << "--" << row.setting.flag;
      without_identity.insert(row.setting.flag);
      continue;
    }
    const std::string key = row.identity_key.empty() ? row.setting.flag : row.identity_key;
    std::string json_key = key;
    for (auto& c : json_key) c = c == '-' ? '_' : c;
    EXPECT_EQ(moved, std::set<std::string>{json_key}) << "--" << row.setting.flag;
  }
  EXPECT_EQ(without_identity, (std::set<std::string>{"save-every", "keep", "dp", "context",
                                                     "resident", "resident-share"}));
}

TEST(BoundSettings, ChecksNameTheFlag) {
  const auto check_of = [](const std::string& flag) {
    for (const auto& row : train_bound_settings()) {
      if (row.setting.flag == flag) return row.setting.check;
    }
    return SettingCheck{};
  };
  EXPECT_CSKV_ERROR(check_of("k-bits")(json(5), "k-bits"),
                    "--k-bits: expected one of 2, 3, 4, 8, 16, found 5");
  EXPECT_CSKV_ERROR(check_of("rotate")(json("haar"), "rotate"),
                    "--rotate: expected none|hadamard, found 'haar'");
  EXPECT_CSKV_ERROR(check_of("window")(json(-1), "window"),
                    "--window: expected an integer in [0, 1048576], found -1");
}

}  // namespace
}  // namespace cskv::pipeline
