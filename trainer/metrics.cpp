// Cache-size accounting and metric reports (JSON for machines, markdown for people).
#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

namespace cskv::trainer {

namespace {
// Bytes per compressed token of one branch (K or V).
void add_branch(LayerCacheBytes& out, int64_t r, int bits, int64_t group_size, int64_t window,
                bool per_channel, double tokens) {
  out.latent += std::ceil(tokens * static_cast<double>(r) * bits / 8.0);
  if (bits >= 16) return;
  if (per_channel) {
    out.overhead += tokens / static_cast<double>(window) * static_cast<double>(r) * 2 * 2;
  } else {
    out.overhead += tokens * static_cast<double>(r / group_size) * 2 * 2;
  }
}
// Channel codes: each width's channels packed on their own, ceil(tokens·n_b·b/8) bytes.
void add_coded_branch(LayerCacheBytes& out, const std::vector<ChannelCode>& codes, double tokens) {
  for (int b = 1; b <= kMaxChannelBits; ++b) {
    int64_t n = 0;
    for (const ChannelCode& c : codes) n += c.bits == b;
    out.latent += std::ceil(tokens * static_cast<double>(n) * b / 8.0);
  }
}
}  // namespace

namespace {
// The window's part of a layer (full-precision K/V and the pending latents of ranks r_k + r_v);
// returns the number of compressed tokens.
int64_t add_window(LayerCacheBytes& b, const model::ModelConfig& model, const TrainConfig& cfg,
                   int64_t latent_width, int64_t context) {
  const int64_t compressed = cfg.window > 0 ? (context / cfg.window) * cfg.window : context;
  const double recent = static_cast<double>(context - compressed);
  b.window = recent * 2.0 * static_cast<double>(model.kv_dim()) * 2.0;
  b.pending = recent * static_cast<double>(latent_width) * 2.0;
  return compressed;
}
}  // namespace

LayerCacheBytes layer_cache_bytes(const model::ModelConfig& model, const TrainConfig& cfg,
                                  const std::vector<ChannelCode>& k_codes,
                                  const std::vector<ChannelCode>& v_codes, int64_t context) {
  LayerCacheBytes b;
  const auto width = static_cast<int64_t>(k_codes.size() + v_codes.size());
  const auto compressed = static_cast<double>(add_window(b, model, cfg, width, context));
  add_coded_branch(b, k_codes, compressed);
  add_coded_branch(b, v_codes, compressed);
  return b;
}

LayerCacheBytes layer_cache_bytes(const model::ModelConfig& model, const TrainConfig& cfg,
                                  int64_t r_k, int64_t r_v, int64_t context) {
  LayerCacheBytes b;
  const auto compressed = static_cast<double>(add_window(b, model, cfg, r_k + r_v, context));
  const int64_t n_kv = model.num_key_value_heads;
  const int64_t gk = cfg.group_size > 0 ? cfg.group_size : r_k / n_kv;
  const int64_t gv = cfg.group_size > 0 ? cfg.group_size : r_v / n_kv;
  add_branch(b, r_k, cfg.k_bits, gk, cfg.window, cfg.window > 0, compressed);
  add_branch(b, r_v, cfg.v_bits, gv, cfg.window, false, compressed);
  return b;
}

double fp16_cache_bytes(const model::ModelConfig& model, int64_t context) {
  return static_cast<double>(context) * 2.0 * static_cast<double>(model.kv_dim()) * 2.0;
}

RunMetrics summarize(const model::ModelConfig& model, const TrainConfig& cfg,
                     std::vector<JobMetrics> jobs, int64_t context) {
  RunMetrics m;
  m.jobs = std::move(jobs);
  m.context = context;
  std::map<int64_t, std::pair<const LayerJob*, const LayerJob*>> by_layer;  // layer -> (K, V)
  for (const auto& j : m.jobs) {
    (j.job.kind == KvKind::kKey ? by_layer[j.job.layer].first : by_layer[j.job.layer].second) =
        &j.job;
  }
  for (const auto& [layer, kv] : by_layer) {
    const auto& [k, v] = kv;
    // A layer whose K or V is not compressed keeps that half in fp16.
    const double half_fp16 = fp16_cache_bytes(model, context) / 2;
    if (k && v && cfg.quant == QuantMode::kWaterfill) {
      m.compressed_bytes += layer_cache_bytes(model, cfg, k->codes, v->codes, context).total();
    } else if (k && v) {
      m.compressed_bytes += layer_cache_bytes(model, cfg, k->rank, v->rank, context).total();
    } else {
      m.compressed_bytes += 2 * half_fp16;
    }
    m.fp16_bytes += fp16_cache_bytes(model, context);
  }
  return m;
}

std::string metrics_json(const RunMetrics& m) {
  nlohmann::json j;
  j["context"] = m.context;
  j["compressed_cache_bytes"] = m.compressed_bytes;
  j["fp16_cache_bytes"] = m.fp16_bytes;
  j["compression_ratio"] = m.compressed_bytes > 0 ? m.fp16_bytes / m.compressed_bytes : 0.0;
  nlohmann::json jobs = nlohmann::json::array();
  double sum_k = 0, sum_v = 0;
  int nk = 0, nv = 0;
  for (const auto& x : m.jobs) {
    jobs.push_back({{"layer", x.job.layer},
                    {"kind", kv_kind_name(x.job.kind)},
                    {"rank", x.job.rank},
                    {"bits", x.bits},
                    {"bits_per_token", x.bits_per_token},
                    {"floor", x.floor},
                    {"train_error_init", x.train_error_init},
                    {"train_error", x.train_error},
                    {"holdout_error_init_quantized", x.holdout_error_init_q},
                    {"holdout_error_quantized", x.holdout_error_q},
                    {"holdout_error_16bit", x.holdout_error},
                    {"steps", x.steps},
                    {"seconds", x.seconds}});
    (x.job.kind == KvKind::kKey ? sum_k : sum_v) += x.holdout_error_q;
    (x.job.kind == KvKind::kKey ? nk : nv) += 1;
  }
  j["jobs"] = jobs;
  j["mean_holdout_error_k"] = nk ? sum_k / nk : 0.0;
  j["mean_holdout_error_v"] = nv ? sum_v / nv : 0.0;
  return j.dump(2);
}

std::string metrics_markdown(const RunMetrics& m) {
  std::ostringstream o;
  char buf[512];
  o << "| layer | K/V | rank | bits | 16-bit floor | train err (init → final) | held-out err "
       "(quantized, init → final) | held-out err 16-bit | steps |\n"
    << "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& x : m.jobs) {
    // waterfill: the widths differ per channel; the column shows the bits of a token's latent.
    const std::string bits =
        x.bits > 0 ? std::to_string(x.bits) : std::to_string(x.bits_per_token) + "/token";
    std::snprintf(buf, sizeof buf,
                  "| %lld | %s | %lld | %s | %.4g | %.4g → %.4g | %.4g → %.4g | %.4g | %lld |\n",
                  static_cast<long long>(x.job.layer), kv_kind_name(x.job.kind),
                  static_cast<long long>(x.job.rank), bits.c_str(), x.floor, x.train_error_init,
                  x.train_error, x.holdout_error_init_q, x.holdout_error_q, x.holdout_error,
                  static_cast<long long>(x.steps));
    o << buf;
  }
  std::snprintf(buf, sizeof buf,
                "\nCache at context %lld: %.0f bytes compressed vs %.0f bytes fp16 (%.2fx smaller, "
                "scale/zero overhead and the full-precision window included).\n",
                static_cast<long long>(m.context), m.compressed_bytes, m.fp16_bytes,
                m.compressed_bytes > 0 ? m.fp16_bytes / m.compressed_bytes : 0.0);
  o << buf;
  return o.str();
}

}  // namespace cskv::trainer
