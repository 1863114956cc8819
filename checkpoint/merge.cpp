// Merge: newest complete step → compressor.safetensors (through checkpoint/compressor_file) with
// the run's resolved config plus per-layer ranks in __metadata__; reading merged factors back.
#include "checkpoint/merge.h"

#include <nlohmann/json.hpp>
#include <optional>

#include <filesystem>

#include "common/error.h"
#include "common/log.h"
#include "common/output_dir.h"

namespace cskv::checkpoint {

using trainer::KvKind;

FactorMap linear_factors(const std::map<JobKey, trainer::JobState>& states) {
  FactorMap out;
  for (const auto& [key, s] : states) {
    out[key] = {s.A.t().contiguous(), s.B.t().contiguous(), s.job.codes};
  }
  return out;
}

FactorMap read_merged_factors(const std::string& path) {
  return read_compressor_factors(*model::SafetensorsFile::open(path), path);
}

namespace {

// Input error naming every job of the step that has not run all its steps.
void require_finished(const std::map<JobKey, trainer::JobState>& states, const std::string& where) {
  std::string unfinished;
  size_t n_unfinished = 0;
  for (const auto& [key, s] : states) {
    if (s.step == s.total_steps) continue;
    ++n_unfinished;
    unfinished += (unfinished.empty() ? "" : ", ") + s.job.name() + " (step " +
                  std::to_string(s.step) + " of " + std::to_string(s.total_steps) + ")";
  }
  CSKV_CHECK_INPUT(n_unfinished == 0, where << ": " << n_unfinished << " job(s) not finished: "
                                            << unfinished << "; resume training before merging");
}

// The CompressorSettings of a resolved training config, when it holds all of them.
std::optional<CompressorSettings> settings_of_config(const nlohmann::json& c) {
  const auto is_int = [&](const char* k) { return c.contains(k) && c[k].is_number_integer(); };
  const auto is_str = [&](const char* k) { return c.contains(k) && c[k].is_string(); };
  if (!c.is_object() || !is_str("model_config_hash") || !is_str("quant_compat")) return {};
  if (c["quant_compat"] != "cskv" && c["quant_compat"] != "none") return {};
  for (const char* k : {"k_bits", "v_bits", "group_size", "window"}) {
    if (!is_int(k)) return {};
  }
  return CompressorSettings{c["model_config_hash"].get<std::string>(),
                            c["k_bits"].get<int>(),
                            c["v_bits"].get<int>(),
                            c["group_size"].get<int64_t>(),
                            c["window"].get<int64_t>(),
                            c["quant_compat"] == "cskv",
                            c.contains("quant") && c["quant"] == "waterfill"};
}

// "layers", "k_ranks", "v_ranks": JSON arrays over the merged layers (a missing kind shows as 0).
void add_ranks(const FactorMap& factors, model::Metadata& metadata) {
  std::map<int64_t, std::pair<int64_t, int64_t>> ranks;  // layer -> (r_k, r_v)
  for (const auto& [key, lf] : factors) {
    auto& r = ranks[key.first];
    (key.second == KvKind::kKey ? r.first : r.second) = lf.a.size(0);
  }
  nlohmann::json layers = nlohmann::json::array(), k_ranks = nlohmann::json::array(),
                 v_ranks = nlohmann::json::array();
  for (const auto& [layer, r] : ranks) {
    layers.push_back(layer);
    k_ranks.push_back(r.first);
    v_ranks.push_back(r.second);
  }
  metadata["layers"] = layers.dump();
  metadata["k_ranks"] = k_ranks.dump();
  metadata["v_ranks"] = v_ranks.dump();
}

// The merged file's __metadata__ (see merge_checkpoint in merge.h).
model::Metadata merge_metadata(const std::string& config_json, int64_t step,
                               const FactorMap& factors, const model::Metadata& extra) {
  model::Metadata metadata = {{"format", kCompressorFormat},
                              {"cskv_config", config_json},
                              {"ckpt_step", std::to_string(step)}};
  add_ranks(factors, metadata);
  const nlohmann::json config = nlohmann::json::parse(config_json);
  if (config.is_object()) {
    for (auto it = config.begin(); it != config.end(); ++it) {
      if (metadata.count(it.key())) continue;
      metadata[it.key()] =
          it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
  }
  if (const auto settings = settings_of_config(config)) {
    for (const auto& [k, v] : compressor_metadata(*settings)) metadata[k] = v;
  }
  for (const auto& [k, v] : extra) metadata[k] = v;
  return metadata;
}

}  // namespace

MergeResult merge_checkpoint(const std::string& ckpt_dir, const std::string& out_path,
                             const model::Metadata& extra, bool overwrite) {
  std::error_code ec;
  if (!overwrite && std::filesystem::exists(std::filesystem::symlink_status(out_path, ec)) &&
      !is_compressor_file(out_path)) {
    files::refuse_foreign_file(out_path, "expected a cskv compressor file to replace", "--out");
  }
  MergeResult result;
  result.step = require_latest_complete_step(ckpt_dir);
  const StepManifest manifest = read_step_manifest(ckpt_dir, result.step);
  const auto states = load_step(ckpt_dir, result.step);
  const std::string where = step_dir(ckpt_dir, result.step);
  CSKV_CHECK_INPUT(!states.empty(), where << ": the checkpoint holds no jobs");
  require_finished(states, where);

  result.path = out_path;
  result.jobs = states.size();
  result.config_json = manifest.config_json;
  result.factors = linear_factors(states);
  const FactorList ordered(result.factors.begin(), result.factors.end());  // (layer, K, V)
  write_compressor_file(out_path, ordered,
                        merge_metadata(manifest.config_json, result.step, result.factors, extra));
  log::get("checkpoint")
      ->info("merged {} job(s) of {} (step {}) into {}", result.jobs, ckpt_dir, result.step,
             out_path);
  return result;
}

}  // namespace cskv::checkpoint
