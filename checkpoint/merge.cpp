// Merge: newest complete step → compressor.safetensors with the factors in HF Linear layout and
// the run's resolved config plus per-layer ranks in __metadata__; reading merged factors back.
#include "checkpoint/merge.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoint/compressor_file.h"
#include "common/error.h"
#include "common/log.h"

namespace cskv::checkpoint {

namespace fs = std::filesystem;
using trainer::KvKind;

FactorMap linear_factors(const std::map<JobKey, trainer::JobState>& states) {
  FactorMap out;
  for (const auto& [key, s] : states) {
    out[key] = {s.A.t().contiguous(), s.B.t().contiguous()};
  }
  return out;
}

namespace {
// Parses "model.layers.<l>.self_attn.<k|v>_proj_<a|b>.weight"; false for any other name.
bool parse_factor_name(const std::string& name, int64_t& layer, KvKind& kind, char& which) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t pos = prefix.size();
  const size_t digits_end = name.find_first_not_of("0123456789", pos);
  if (digits_end == std::string::npos || digits_end == pos || digits_end - pos > 9) return false;
  const int64_t l = std::stoll(name.substr(pos, digits_end - pos));
  for (const KvKind k : {KvKind::kKey, KvKind::kValue}) {
    for (const char w : {'a', 'b'}) {
      if (factor_name(l, k, w) == name) {
        layer = l;
        kind = k;
        which = w;
        return true;
      }
    }
  }
  return false;
}

std::string kind_letter(KvKind k) { return trainer::kv_kind_name(k); }
}  // namespace

FactorMap read_merged_factors(const std::string& path) {
  const auto f = model::SafetensorsFile::open(path);
  FactorMap out;
  for (const auto& [name, e] : f->header().tensors) {
    int64_t layer = 0;
    KvKind kind = KvKind::kKey;
    char which = 'a';
    if (!parse_factor_name(name, layer, kind, which)) continue;
    CSKV_CHECK_INPUT(e.dtype == model::StDType::kF32 && e.shape.size() == 2,
                     path << ": tensor '" << name << "' is " << model::dtype_name(e.dtype) << " "
                          << at::IntArrayRef(e.shape) << ", expected a 2-D F32 tensor");
    LinearFactors& lf = out[{layer, kind}];
    (which == 'a' ? lf.a : lf.b) = f->get(name).clone();
  }
  CSKV_CHECK_INPUT(!out.empty(), path << ": holds no cskv factors "
                                      << "(model.layers.<l>.self_attn.{k,v}_proj_{a,b}.weight)");
  for (const auto& [key, lf] : out) {
    for (const char w : {'a', 'b'}) {
      CSKV_CHECK_INPUT((w == 'a' ? lf.a : lf.b).defined(),
                       path << ": tensor '" << factor_name(key.first, key.second, w)
                            << "' is missing (its partner is present)");
    }
    CSKV_CHECK_INPUT(lf.a.size(0) == lf.b.size(1),
                     path << ": layer " << key.first << " " << kind_letter(key.second) << ": a is "
                          << lf.a.sizes() << " and b is " << lf.b.sizes()
                          << ", expected a [r, H] and b [D, r] with the same r");
  }
  return out;
}

MergeResult merge_checkpoint(const std::string& ckpt_dir, const std::string& out_path,
                             const model::Metadata& extra) {
  MergeResult result;
  result.step = require_latest_complete_step(ckpt_dir);
  const StepManifest manifest = read_step_manifest(ckpt_dir, result.step);
  const auto states = load_step(ckpt_dir, result.step);
  const std::string where = step_dir(ckpt_dir, result.step);
  CSKV_CHECK_INPUT(!states.empty(), where << ": the checkpoint holds no jobs");
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

  result.path = out_path;
  result.jobs = states.size();
  result.config_json = manifest.config_json;
  result.factors = linear_factors(states);

  model::NamedTensors tensors;
  std::map<int64_t, std::pair<int64_t, int64_t>> ranks;  // layer -> (r_k, r_v)
  for (const auto& [key, lf] : result.factors) {
    tensors.emplace_back(factor_name(key.first, key.second, 'a'), lf.a);
    tensors.emplace_back(factor_name(key.first, key.second, 'b'), lf.b);
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
  model::Metadata metadata = {{"format", "cskv-1"},
                              {"cskv_config", manifest.config_json},
                              {"ckpt_step", std::to_string(result.step)},
                              {"layers", layers.dump()},
                              {"k_ranks", k_ranks.dump()},
                              {"v_ranks", v_ranks.dump()}};
  const nlohmann::json config = nlohmann::json::parse(manifest.config_json);
  if (config.is_object()) {
    for (auto it = config.begin(); it != config.end(); ++it) {
      if (metadata.count(it.key())) continue;
      metadata[it.key()] =
          it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
    }
  }
  for (const auto& [k, v] : extra) metadata[k] = v;

  const fs::path parent = fs::path(out_path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    CSKV_CHECK(!ec, parent.string() << ": cannot create the directory: " << ec.message());
  }
  model::write_safetensors(out_path, tensors, metadata);
  log::get("checkpoint")
      ->info("merged {} job(s) of {} (step {}) into {}", result.jobs, ckpt_dir, result.step,
             out_path);
  return result;
}

}  // namespace cskv::checkpoint
