// Which quantization groupings store more than 16-bit latents, and the log line that says so.
#include "trainer/group_overhead.h"

#include <algorithm>
#include <sstream>
#include <tuple>

#include "trainer/quantizer.h"

namespace cskv::trainer {

namespace {

// "layer 3", "layers 0-4", "layers 0, 2, 5-7".
std::string layer_ranges(const std::vector<int64_t>& layers) {
  std::ostringstream out;
  out << (layers.size() == 1 ? "layer " : "layers ");
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    out << (i ? ", " : "") << layers[i];
    if (j > i) out << "-" << layers[j];
    i = j + 1;
  }
  return out.str();
}

}  // namespace

std::vector<CostlyGrouping> costly_groupings(const model::ModelConfig& model,
                                             const TrainConfig& cfg,
                                             const std::vector<LayerJob>& jobs) {
  std::vector<CostlyGrouping> out;
  if (cfg.quant != QuantMode::kUniform) return out;
  for (const LayerJob& job : jobs) {
    if (job.rank <= 0) continue;
    const QuantConfig q = job_quant_config(cfg, model, job);
    if (q.bits >= 16) continue;
    const bool per_channel = uses_channel_windows(q);
    const int64_t group = per_channel ? q.window : q.group_size;
    if (group <= 0) continue;
    const double code_bytes = quant_code_bytes_per_token(job.rank, q);
    const double overhead_bytes = quant_overhead_bytes_per_token(job.rank, q);
    const double fp16_bytes = 2.0 * static_cast<double>(job.rank);
    if (code_bytes + overhead_bytes <= fp16_bytes) continue;
    auto same = [&](const CostlyGrouping& g) {
      return std::tie(g.kind, g.rank, g.bits, g.group, g.per_channel) ==
             std::tie(job.kind, job.rank, q.bits, group, per_channel);
    };
    auto it = std::find_if(out.begin(), out.end(), same);
    if (it == out.end()) {
      CostlyGrouping g;
      g.kind = job.kind;
      g.rank = job.rank;
      g.bits = q.bits;
      g.group = group;
      g.per_channel = per_channel;
      g.code_bytes = code_bytes;
      g.overhead_bytes = overhead_bytes;
      g.fp16_bytes = fp16_bytes;
      out.push_back(g);
      it = out.end() - 1;
    }
    it->layers.push_back(job.layer);
  }
  for (auto& g : out) std::sort(g.layers.begin(), g.layers.end());
  return out;
}

std::string costly_grouping_message(const CostlyGrouping& g) {
  std::ostringstream m;
  const char* kind = kv_kind_name(g.kind);
  m << kind << " of " << layer_ranges(g.layers) << ": ";
  if (g.per_channel) {
    m << "each latent channel's groups of " << g.group << " tokens";
  } else {
    m << "groups of " << g.group << " latent channel" << (g.group == 1 ? "" : "s");
  }
  m << " at " << g.bits << " bits store " << g.quantized_bytes() << " bytes per token ("
    << g.code_bytes << " of codes, " << g.overhead_bytes << " of fp16 scale/zero), more than the "
    << g.fp16_bytes << " bytes of 16-bit latents (" << g.rank << " channels); ";
  const std::string bits_flag = g.kind == KvKind::kKey ? "--k-bits" : "--v-bits";
  if (g.per_channel) {
    int64_t w = g.group + 1;
    while (w * (16 - g.bits) <= 32) ++w;
    m << "a --window of at least " << w << " or " << bits_flag << " 16 stores less";
    return m.str();
  }
  int64_t better = 0;
  for (int64_t d = g.group + 1; d <= g.rank && better == 0; ++d) {
    if (g.rank % d == 0 && d * (16 - g.bits) > 32) better = d;
  }
  if (better > 0) {
    m << "a --group-size of " << better << " (dividing " << g.rank << ") or " << bits_flag
      << " 16 stores less";
  } else {
    m << "no group size dividing " << g.rank << " stores less; " << bits_flag << " 16 does";
  }
  return m.str();
}

}  // namespace cskv::trainer
