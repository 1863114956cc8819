// Loading and validating compressor.safetensors, and building the per-layer caches from it.
#include "eval/compressor.h"

#include <nlohmann/json.hpp>

#include "checkpoint/merge.h"
#include "checkpoint/compressor_file.h"
#include "common/error.h"
#include "model/safetensors.h"
#include "trainer/metrics.h"

namespace cskv::eval {
namespace {

using trainer::KvKind;

const std::string& meta_value(const model::Metadata& meta, const std::string& path,
                              const std::string& key) {
  const auto it = meta.find(key);
  CSKV_CHECK_INPUT(it != meta.end(),
                   path << ": __metadata__ has no '" << key
                        << "' (the quantization settings the factors were trained with); "
                           "expected a file written by `cskv merge` or `cskv train`");
  return it->second;
}

int64_t meta_int(const model::Metadata& meta, const std::string& path, const std::string& key) {
  const std::string& text = meta_value(meta, path, key);
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  CSKV_FAIL_INPUT(path << ": __metadata__ '" << key << "' is '" << text
                       << "', expected an integer");
  return 0;  // not reached
}

}  // namespace

Compressor load_compressor(const std::string& path, const model::ModelConfig& model) {
  Compressor c;
  c.path = path;
  const auto file = model::SafetensorsFile::open(path);
  const model::Metadata& meta = file->header().metadata;
  c.model_config_hash = meta_value(meta, path, "model_config_hash");
  CSKV_CHECK_INPUT(c.model_config_hash == model.hash(),
                   path << ": trained for a model with config hash " << c.model_config_hash
                        << ", but the model's config hash is " << model.hash()
                        << " (a different model or config.json)");
  c.quant.k_bits = static_cast<int>(meta_int(meta, path, "k_bits"));
  c.quant.v_bits = static_cast<int>(meta_int(meta, path, "v_bits"));
  trainer::check_quant_bits(c.quant.k_bits, path + ": k_bits");
  trainer::check_quant_bits(c.quant.v_bits, path + ": v_bits");
  c.quant.group_size = meta_int(meta, path, "group_size");
  c.quant.window = meta_int(meta, path, "window");
  CSKV_CHECK_INPUT(c.quant.window >= 0 && c.quant.group_size >= 0,
                   path << ": window " << c.quant.window << " and group_size " << c.quant.group_size
                        << ", expected both >= 0");
  const std::string compat = meta_value(meta, path, "quant_compat");
  CSKV_CHECK_INPUT(
      compat == "none" || compat == "cskv",
      path << ": __metadata__ 'quant_compat' is '" << compat << "', expected none or cskv");
  c.quant.quant_compat_cskv = compat == "cskv";

  const checkpoint::FactorMap factors = checkpoint::read_merged_factors(path);
  const int64_t H = model.hidden_size, D = model.kv_dim();
  for (const auto& [key, lf] : factors) {
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
  }
  for (const auto& [layer, f] : c.layers) {
    CSKV_CHECK_INPUT(f.k_a.defined() && f.v_a.defined(),
                     path << ": layer " << layer << " has " << (f.k_a.defined() ? "K" : "V")
                          << " factors but no " << (f.k_a.defined() ? "V" : "K")
                          << " factors; a compressed layer needs both");
    try {
      trainer::validate_quant_config(branch_quant(c, model, KvKind::kKey, f.r_k()), f.r_k(),
                                     "layer " + std::to_string(layer) + " K");
      trainer::validate_quant_config(branch_quant(c, model, KvKind::kValue, f.r_v()), f.r_v(),
                                     "layer " + std::to_string(layer) + " V");
    } catch (const Error& e) {
      CSKV_FAIL_INPUT(path << ": " << e.message());
    }
  }
  return c;
}

trainer::QuantConfig branch_quant(const Compressor& c, const model::ModelConfig& model, KvKind kind,
                                  int64_t r) {
  trainer::LayerJob job;
  job.kind = kind;
  job.rank = r;
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
                    branch_quant(c, cfg, KvKind::kKey, f.r_k())};
    BranchFactors v{f.v_a.to(model.device()), f.v_b.to(model.device()), at::Tensor(),
                    branch_quant(c, cfg, KvKind::kValue, f.r_v())};
    if (cfg.attention_bias) {
      k.bias = model.weight(p + "k_proj.bias").to(at::kFloat);
      v.bias = model.weight(p + "v_proj.bias").to(at::kFloat);
    }
    caches.push_back(std::make_unique<CompressedKvCache>(cfg, std::move(k), std::move(v),
                                                         c.quant.window, storage, model.device()));
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
  return trainer::layer_cache_bytes(model, c.quant, it->second.r_k(), it->second.r_v(), context)
      .total();
}

}  // namespace cskv::eval
