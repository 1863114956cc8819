// Per-channel widths (trainer/waterfill.h) against today's uniform quantizer on one captured job,
// at the same bits per token: the closed-form PCA factors at the uniform run's rank and bits
// (window-32 per-channel key groups / per-token value groups, their fp16 scale and zero counted),
// against the full PCA basis with static per-channel ranges fitted on the training split and
// widths allocated under the same budget. Both measured on the held-out split.
//   cskv_bench_waterfill --model DIR --acts DIR --layer 0 --kind K --density 0.25 --bits 4
//     [--seq-len T: also the first held-out positions' share of values outside the ranges]
#include <ATen/ATen.h>

#include <algorithm>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/activation_reader.h"
#include "data/layer_stats.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "trainer/init.h"
#include "trainer/layer_trainer.h"
#include "trainer/rank_allocation.h"
#include "trainer/waterfill.h"

namespace tr = cskv::trainer;

namespace {

// Every row of one split of one layer, float32 [n, H].
at::Tensor read_split(const std::string& acts, int64_t layer, const std::string& split) {
  cskv::data::ActivationReaderOptions o;
  o.acts_dir = acts;
  o.layer = layer;
  o.split = split;
  o.batch_tokens = 1 << 20;
  o.num_epochs = 1;
  cskv::data::ActivationReader reader(o);
  std::vector<at::Tensor> parts;
  while (auto b = reader.next()) parts.push_back(b->x);
  return at::cat(parts, 0);
}

// Bits per token of the uniform scheme: r codes of b bits plus fp16 scale and zero per group
// (keys: per channel over `window` tokens; values: per token over groups of `group` channels).
double uniform_bits(const tr::QuantConfig& q, int64_t r) {
  const double codes = static_cast<double>(r * q.bits);
  if (q.bits >= 16) return 16.0 * static_cast<double>(r);
  if (q.per_channel) return codes + 32.0 * static_cast<double>(r) / static_cast<double>(q.window);
  return codes + 32.0 * static_cast<double>(r / q.group_size);
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {
      {"--layer", "0"}, {"--kind", "K"}, {"--density", "0.25"}, {"--bits", "4"}};
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  const std::string model_dir = a["--model"], acts = a["--acts"];
  const int64_t layer = std::stoll(a["--layer"]);
  const tr::KvKind kind = a["--kind"] == "V" ? tr::KvKind::kValue : tr::KvKind::kKey;
  const auto config = cskv::model::load_config(model_dir);
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(model_dir));
  // Uniform: today's closed form at the density's rank and --bits.
  tr::TrainConfig cfg;
  (kind == tr::KvKind::kKey ? cfg.k_bits : cfg.v_bits) = std::stoi(a["--bits"]);
  const int64_t r = tr::rank_from_density(std::stod(a["--density"]), config.head_dim,
                                          config.num_key_value_heads, "--density");
  const tr::LayerTrainer trainer(cfg, config, weights, acts);
  const tr::LayerJob job{layer, kind, r};
  const tr::JobState s = trainer.init(job);
  const double uniform_err = trainer.relative_error(s, "holdout", true);
  const double uniform_floor = trainer.relative_error(s, "holdout", false);
  const double budget = uniform_bits(tr::job_quant_config(cfg, config, job), r);
  // Waterfill: the full PCA basis, ranges and widths from the training split.
  const auto stats = cskv::data::read_layer_stats(acts + "/stats.h5", layer);
  const at::Tensor w = weights->get(tr::kv_weight_name(layer, kind));
  const int64_t D = config.kv_dim();
  const tr::InitResult pca =
      tr::init_factors(tr::InitMethod::kPca, w, D, stats.gram, stats.abs_mean, job.name());
  const at::Tensor A = pca.A.to(at::kFloat), B = pca.B.to(at::kFloat);
  const at::Tensor c = at::mm(read_split(acts, layer, "train"), A);
  const at::Tensor row_energy = B.pow(2).sum(1).to(at::kDouble);  // ‖B_j‖²
  std::vector<tr::ChannelCurve> curves;
  for (int64_t j = 0; j < D; ++j) {
    tr::ChannelCurve curve = tr::fit_channel(c.select(1, j).contiguous());
    for (double& e : curve.error) e *= row_energy[j].item<double>();
    curves.push_back(curve);
  }
  const auto bits = tr::allocate_bits(curves, static_cast<int64_t>(budget));
  std::vector<tr::ChannelCode> codes;
  int64_t spent = 0, kept = 0;
  for (int64_t j = 0; j < D; ++j) {
    codes.push_back(curves[static_cast<size_t>(j)].code[bits[static_cast<size_t>(j)]]);
    spent += bits[static_cast<size_t>(j)];
    kept += bits[static_cast<size_t>(j)] > 0;
  }
  const at::Tensor xh = read_split(acts, layer, "holdout");
  const at::Tensor K = at::mm(xh, w.to(at::kFloat).t());
  const at::Tensor Kq = at::mm(tr::quantize_channels(at::mm(xh, A), codes), B);
  const double wf_err = (Kq - K).to(at::kDouble).pow(2).sum().item<double>() /
                        K.to(at::kDouble).pow(2).sum().item<double>();
  // Outlier tokens: per position of the held-out sequences, the share of latent values outside
  // their channel's calibrated range (channels with bits > 0) and the error of those positions.
  const int64_t seq_len = std::stoll(a.count("--seq-len") ? a["--seq-len"] : "0");
  if (seq_len > 0) {
    const at::Tensor ch = at::mm(xh, A);
    std::vector<float> lo_v, hi_v;
    for (const tr::ChannelCode& code : codes) {
      lo_v.push_back(code.offset);
      hi_v.push_back(code.bits ? code.offset + code.scale * static_cast<float>((1 << code.bits) - 1)
                               : code.offset);
    }
    const at::Tensor lo = at::tensor(lo_v), hi = at::tensor(hi_v);
    const at::Tensor used = at::tensor(bits).gt(0);
    const at::Tensor outside = ((ch < lo) | (ch > hi)) & used;  // [n, D]
    const int64_t n_seq = ch.size(0) / seq_len;
    const at::Tensor by_pos =
        outside.to(at::kDouble).view({n_seq, seq_len, D}).sum(at::IntArrayRef{0, 2}) /
        static_cast<double>(n_seq * std::max<int64_t>(1, used.sum().item<int64_t>()));
    const at::Tensor err_pos =
        (Kq - K).to(at::kDouble).pow(2).view({n_seq, seq_len, -1}).sum(at::IntArrayRef{0, 2});
    const at::Tensor ref_pos =
        K.to(at::kDouble).pow(2).view({n_seq, seq_len, -1}).sum(at::IntArrayRef{0, 2});
    const at::Tensor rel_pos = err_pos / ref_pos;
    std::printf(
        "%s positions 0-3: outside range %.4f %.4f %.4f %.4f, rel. error %.5f %.5f %.5f %.5f;"
        " positions >= 4: outside %.4f, rel. error %.5f\n",
        job.name().c_str(), by_pos[0].item<double>(), by_pos[1].item<double>(),
        by_pos[2].item<double>(), by_pos[3].item<double>(), rel_pos[0].item<double>(),
        rel_pos[1].item<double>(), rel_pos[2].item<double>(), rel_pos[3].item<double>(),
        by_pos.slice(0, 4).mean().item<double>(),
        (err_pos.slice(0, 4).sum() / ref_pos.slice(0, 4).sum()).item<double>());
  }
  std::printf("| %s | %.0f | %.5f | %.5f | %lld of %lld, %lld bits | %.5f (%.2fx) |\n",
              job.name().c_str(), budget, uniform_err, uniform_floor, static_cast<long long>(kept),
              static_cast<long long>(D), static_cast<long long>(spent), wf_err,
              wf_err / uniform_err);
  return 0;
}
