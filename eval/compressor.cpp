// Validating a compressor file (read by checkpoint/compressor_file) against the model, and
// building the per-layer caches from it.
#include "eval/compressor.h"

#include <algorithm>

#include "checkpoint/compressor_file.h"
#include "common/error.h"
#include "trainer/metrics.h"

namespace cskv::eval {

using trainer::KvKind;

Compressor load_compressor(const std::string& path, const model::ModelConfig& model) {
  Compressor c;
  c.path = path;
  const checkpoint::CompressorFile file = checkpoint::read_compressor_file(path);
  const checkpoint::CompressorSettings& s = file.settings;
  c.model_config_hash = s.model_config_hash;
  const auto fingerprint = file.metadata.find("model_weights_fingerprint");
  if (fingerprint != file.metadata.end()) c.model_weights_fingerprint = fingerprint->second;
  CSKV_CHECK_INPUT(c.model_config_hash == model.hash(),
                   path << ": trained for a model with config hash " << c.model_config_hash
                        << ", but the model's config hash is " << model.hash()
                        << " (a different model or config.json)");
  c.quant.k_bits = s.k_bits;
  c.quant.v_bits = s.v_bits;
  trainer::check_quant_bits(c.quant.k_bits, path + ": k_bits");
  trainer::check_quant_bits(c.quant.v_bits, path + ": v_bits");
  c.quant.group_size = s.group_size;
  c.quant.window = s.window;
  CSKV_CHECK_INPUT(c.quant.window >= 0 && c.quant.group_size >= 0,
                   path << ": window " << c.quant.window << " and group_size " << c.quant.group_size
                        << ", expected both >= 0");
  c.quant.quant_compat_cskv = s.quant_compat_cskv;
  if (s.waterfill) c.quant.quant = trainer::QuantMode::kWaterfill;

  const int64_t H = model.hidden_size, D = model.kv_dim();
  for (const auto& [key, lf] : file.factors) {
    const auto [layer, kind] = key;
    const std::string name = "layer " + std::to_string(layer) + " " + trainer::kv_kind_name(kind);
    CSKV_CHECK_INPUT(layer < model.num_hidden_layers, path << ": holds factors for layer " << layer
                                                           << ", the model has "
                                                           << model.num_hidden_layers << " layers");
    const int64_t r = lf.a.size(0);
    CSKV_CHECK_INPUT(lf.a.size(1) == H && lf.b.size(0) == D && r >= 1 && r <= D,
                     path << ": " << name << ": a is " << lf.a.sizes() << " and b is "
                          << lf.b.sizes() << ", expected a [r, " << H << "] and b [" << D
                          << ", r] with 1 <= r <= " << D);
    LayerFactors& f = c.layers[layer];
    (kind == KvKind::kKey ? f.k_a : f.v_a) = lf.a.t().contiguous();
    (kind == KvKind::kKey ? f.k_b : f.v_b) = lf.b.t().contiguous();
    (kind == KvKind::kKey ? f.k_codes : f.v_codes) = lf.codes;
  }
  for (const auto& [layer, f] : c.layers) {
    CSKV_CHECK_INPUT(f.k_a.defined() && f.v_a.defined(),
                     path << ": layer " << layer << " has " << (f.k_a.defined() ? "K" : "V")
                          << " factors but no " << (f.k_a.defined() ? "V" : "K")
                          << " factors; a compressed layer needs both");
    try {
      trainer::validate_quant_config(branch_quant(c, model, KvKind::kKey, layer), f.r_k(),
                                     "layer " + std::to_string(layer) + " K");
      trainer::validate_quant_config(branch_quant(c, model, KvKind::kValue, layer), f.r_v(),
                                     "layer " + std::to_string(layer) + " V");
    } catch (const Error& e) {
      CSKV_FAIL_INPUT(path << ": " << e.message());
    }
  }
  return c;
}

trainer::QuantConfig branch_quant(const Compressor& c, const model::ModelConfig& model, KvKind kind,
                                  int64_t layer) {
  const LayerFactors& f = c.layers.at(layer);
  const bool key = kind == KvKind::kKey;
  trainer::LayerJob job(layer, kind, key ? f.r_k() : f.r_v());
  job.codes = key ? f.k_codes : f.v_codes;
  return trainer::job_quant_config(c.quant, model, job);
}

std::vector<std::unique_ptr<model::KvCache>> make_caches(const Compressor& c,
                                                         const model::LlamaModel& model,
                                                         at::ScalarType storage) {
  const auto& cfg = model.config();
  std::vector<std::unique_ptr<model::KvCache>> caches;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const auto it = c.layers.find(l);
    if (it == c.layers.end()) {
      caches.push_back(std::make_unique<model::FullKvCache>(cfg, storage, model.device()));
      continue;
    }
    const LayerFactors& f = it->second;
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    BranchFactors k{f.k_a.to(model.device()), f.k_b.to(model.device()), at::Tensor(),
                    branch_quant(c, cfg, KvKind::kKey, l)};
    BranchFactors v{f.v_a.to(model.device()), f.v_b.to(model.device()), at::Tensor(),
                    branch_quant(c, cfg, KvKind::kValue, l)};
    if (cfg.attention_bias) {
      k.bias = model.weight(p + "k_proj.bias").to(at::kFloat);
      v.bias = model.weight(p + "v_proj.bias").to(at::kFloat);
    }
    caches.push_back(std::make_unique<CompressedKvCache>(
        cfg, std::move(k), std::move(v), c.quant.window, storage, model.device(), c.sink_tokens));
  }
  return caches;
}

std::vector<std::unique_ptr<model::KvCache>> make_full_caches(const model::LlamaModel& model,
                                                              at::ScalarType storage) {
  std::vector<std::unique_ptr<model::KvCache>> caches;
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    caches.push_back(std::make_unique<model::FullKvCache>(model.config(), storage, model.device()));
  }
  return caches;
}

std::vector<model::KvCache*> raw(const std::vector<std::unique_ptr<model::KvCache>>& caches) {
  std::vector<model::KvCache*> out;
  for (const auto& c : caches) out.push_back(c.get());
  return out;
}

double formula_layer_bytes(const Compressor& c, const model::ModelConfig& model, int64_t layer,
                           int64_t context) {
  const auto it = c.layers.find(layer);
  if (it == c.layers.end()) return trainer::fp16_cache_bytes(model, context);
  const int64_t sinks = std::min(c.sink_tokens, context), rest = context - sinks;
  const LayerFactors& f = it->second;
  const trainer::LayerCacheBytes b =
      c.quant.quant == trainer::QuantMode::kWaterfill
          ? trainer::layer_cache_bytes(model, c.quant, f.k_codes, f.v_codes, rest)
          : trainer::layer_cache_bytes(model, c.quant, f.r_k(), f.r_v(), rest);
  return trainer::fp16_cache_bytes(model, sinks) + b.total();
}

}  // namespace cskv::eval
