// Which quantization groupings store more than 16-bit latents, and the log line that says so.
#include "trainer/group_overhead.h"

#include <algorithm>
#include <sstream>
#include <tuple>

namespace cskv::trainer {

namespace {

// Codes of b bits in groups of g sharing an fp16 scale and zero (32 bits) are larger than 16-bit
// codes when g·b + 32 > 16·g.
bool larger_than_fp16(int64_t group, int bits) { return group * (16 - bits) < 32; }

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
    const bool key = job.kind == KvKind::kKey;
    const int bits = key ? cfg.k_bits : cfg.v_bits;
    if (bits >= 16 || job.rank <= 0) continue;
    const bool per_channel = key && cfg.window > 0;
    const int64_t group = per_channel          ? cfg.window
                          : cfg.group_size > 0 ? cfg.group_size
                                               : job.rank / model.num_key_value_heads;
    if (group <= 0 || !larger_than_fp16(group, bits)) continue;
    auto same = [&](const CostlyGrouping& g) {
      return std::tie(g.kind, g.rank, g.bits, g.group, g.per_channel) ==
             std::tie(job.kind, job.rank, bits, group, per_channel);
    };
    auto it = std::find_if(out.begin(), out.end(), same);
    if (it == out.end()) {
      CostlyGrouping g;
      g.kind = job.kind;
      g.rank = job.rank;
      g.bits = bits;
      g.group = group;
      g.per_channel = per_channel;
      const auto r = static_cast<double>(job.rank);
      g.code_bytes = r * bits / 8.0;
      g.overhead_bytes = per_channel ? r * 4.0 / static_cast<double>(group)
                                     : static_cast<double>(job.rank / group) * 4.0;
      g.fp16_bytes = 2.0 * r;
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
