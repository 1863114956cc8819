// Per-channel widths (trainer/waterfill.h) against today's uniform quantizer, at the same bits per
// token: the closed-form PCA factors at the uniform run's rank and bits (window-32 per-channel
// key groups / per-token value groups, their fp16 scale and zero counted), against the full PCA
// basis with static per-channel ranges fitted on the training split and widths allocated under
// the same budget. Both measured on the held-out split.
//   cskv_bench_waterfill --model DIR --acts DIR --layer 0 --kind K --density 0.25 --bits 4
//     [--seq-len T: also the first held-out positions' share of values outside the ranges]
//   cskv_bench_waterfill --model DIR --acts DIR --all 1 --k-density 0.25 --v-density 0.5 --bits 4
//     every job of every layer, one budget: the uniform run's total bits (allocate_jobs)
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

// One job measured both ways: the uniform scheme's numbers and the full basis's curves.
struct Job {
  tr::LayerJob job;
  double uniform_err = 0, uniform_floor = 0, budget = 0;
  at::Tensor A, B, W;                    // full PCA basis [H, D], [D, D]; the projection [D, H]
  std::vector<tr::ChannelCurve> curves;  // errors weighted by ‖B_j‖² (squared error of K)
  double train_energy = 0;               // ‖K‖² over the training split
};

Job measure(const std::string& acts, const tr::LayerJob& job, int bits,
            const cskv::model::ModelConfig& config,
            const std::shared_ptr<cskv::model::SafetensorsModel>& weights) {
  Job j;
  j.job = job;
  tr::TrainConfig cfg;
  (job.kind == tr::KvKind::kKey ? cfg.k_bits : cfg.v_bits) = bits;
  const tr::LayerTrainer trainer(cfg, config, weights, acts);
  const tr::JobState s = trainer.init(job);
  j.uniform_err = trainer.relative_error(s, "holdout", true);
  j.uniform_floor = trainer.relative_error(s, "holdout", false);
  j.budget = uniform_bits(tr::job_quant_config(cfg, config, job), job.rank);
  const auto stats = cskv::data::read_layer_stats(acts + "/stats.h5", job.layer);
  const at::Tensor w = weights->get(tr::kv_weight_name(job.layer, job.kind));
  const int64_t D = config.kv_dim();
  const tr::InitResult pca =
      tr::init_factors(tr::InitMethod::kPca, w, D, stats.gram, stats.abs_mean, job.name());
  j.A = pca.A.to(at::kFloat);
  j.B = pca.B.to(at::kFloat);
  j.W = w.to(at::kFloat);
  const at::Tensor x = read_split(acts, job.layer, "train");
  const at::Tensor c = at::mm(x, j.A);
  j.train_energy = at::mm(x, j.W.t()).to(at::kDouble).pow(2).sum().item<double>();
  const at::Tensor row_energy = j.B.pow(2).sum(1).to(at::kDouble);  // ‖B_j‖²
  for (int64_t ch = 0; ch < D; ++ch) {
    tr::ChannelCurve curve = tr::fit_channel(c.select(1, ch).contiguous());
    for (double& e : curve.error) e *= row_energy[ch].item<double>();
    j.curves.push_back(curve);
  }
  return j;
}

struct Coded {
  double err = 0;
  double bound = 0;  // Gaussian rate-distortion bound of the held-out K spectrum at `spent` bits
  int64_t kept = 0, spent = 0;
  at::Tensor K, Kq;  // held-out K and its reconstruction
};

Coded held_out(const Job& j, const std::string& acts, const std::vector<int>& bits) {
  std::vector<tr::ChannelCode> codes;
  Coded out;
  for (size_t ch = 0; ch < bits.size(); ++ch) {
    codes.push_back(j.curves[ch].code[bits[ch]]);
    out.spent += bits[ch];
    out.kept += bits[ch] > 0;
  }
  const at::Tensor xh = read_split(acts, j.job.layer, "holdout");
  out.K = at::mm(xh, j.W.t());
  out.Kq = at::mm(tr::quantize_channels(at::mm(xh, j.A), codes), j.B);
  out.err = (out.Kq - out.K).to(at::kDouble).pow(2).sum().item<double>() /
            out.K.to(at::kDouble).pow(2).sum().item<double>();
  const at::Tensor kd = out.K.to(at::kDouble);
  out.bound =
      tr::gaussian_bound(at::linalg_eigvalsh(at::mm(kd.t(), kd)), static_cast<double>(out.spent));
  return out;
}

void print_row(const Job& j, const Coded& c, int64_t D) {
  std::printf(
      "| %s | %.0f | %.5f | %.5f | %lld of %lld, %lld bits | %.5f (%.2fx) | %.5f (%.2fx) |\n",
      j.job.name().c_str(), j.budget, j.uniform_err, j.uniform_floor,
      static_cast<long long>(c.kept), static_cast<long long>(D), static_cast<long long>(c.spent),
      c.err, c.err / j.uniform_err, c.bound, c.err / c.bound);
}

// Outlier tokens: per position of the held-out sequences, the share of latent values outside
// their channel's calibrated range (channels with bits > 0) and the error at those positions.
void print_positions(const Job& j, const std::string& acts, const std::vector<int>& bits,
                     const Coded& c, int64_t seq_len) {
  const at::Tensor ch = at::mm(read_split(acts, j.job.layer, "holdout"), j.A);
  std::vector<float> lo_v, hi_v;
  for (size_t i = 0; i < bits.size(); ++i) {
    const tr::ChannelCode& code = j.curves[i].code[bits[i]];
    lo_v.push_back(code.offset);
    hi_v.push_back(code.offset + code.scale * static_cast<float>((1 << code.bits) - 1));
  }
  const int64_t D = ch.size(1);
  const at::Tensor used = at::tensor(bits).gt(0);
  const at::Tensor outside = ((ch < at::tensor(lo_v)) | (ch > at::tensor(hi_v))) & used;
  const int64_t n_seq = ch.size(0) / seq_len;
  const std::vector<int64_t> dims = {0, 2};
  const at::Tensor by_pos =
      outside.to(at::kDouble).view({n_seq, seq_len, D}).sum(dims) /
      static_cast<double>(n_seq * std::max<int64_t>(1, used.sum().item<int64_t>()));
  const at::Tensor err_pos =
      (c.Kq - c.K).to(at::kDouble).pow(2).view({n_seq, seq_len, -1}).sum(dims);
  const at::Tensor ref_pos = c.K.to(at::kDouble).pow(2).view({n_seq, seq_len, -1}).sum(dims);
  const at::Tensor rel = err_pos / ref_pos;
  std::printf(
      "%s positions 0-3: outside range %.4f %.4f %.4f %.4f, rel. error %.5f %.5f %.5f %.5f; "
      "positions >= 4: outside %.4f, rel. error %.5f\n",
      j.job.name().c_str(), by_pos[0].item<double>(), by_pos[1].item<double>(),
      by_pos[2].item<double>(), by_pos[3].item<double>(), rel[0].item<double>(),
      rel[1].item<double>(), rel[2].item<double>(), rel[3].item<double>(),
      by_pos.slice(0, 4).mean().item<double>(),
      (err_pos.slice(0, 4).sum() / ref_pos.slice(0, 4).sum()).item<double>());
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a = {
      {"--layer", "0"},        {"--kind", "K"},        {"--density", "0.25"}, {"--bits", "4"},
      {"--k-density", "0.25"}, {"--v-density", "0.5"}, {"--all", "0"},        {"--seq-len", "0"}};
  for (int i = 1; i + 1 < argc; i += 2) a[argv[i]] = argv[i + 1];
  const std::string model_dir = a["--model"], acts = a["--acts"];
  const int bits = std::stoi(a["--bits"]);
  const auto config = cskv::model::load_config(model_dir);
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(model_dir));
  const auto rank_of = [&](double density) {
    return tr::rank_from_density(density, config.head_dim, config.num_key_value_heads, "--density");
  };
  const int64_t D = config.kv_dim();
  if (a["--all"] == "0") {
    const tr::KvKind kind = a["--kind"] == "V" ? tr::KvKind::kValue : tr::KvKind::kKey;
    const Job j =
        measure(acts, {std::stoll(a["--layer"]), kind, rank_of(std::stod(a["--density"]))}, bits,
                config, weights);
    const auto widths = tr::allocate_bits(j.curves, static_cast<int64_t>(j.budget));
    const Coded c = held_out(j, acts, widths);
    if (const int64_t t = std::stoll(a["--seq-len"]); t > 0) print_positions(j, acts, widths, c, t);
    print_row(j, c, D);
    return 0;
  }
  // Every job, one budget: the uniform run's bits over all jobs.
  std::vector<Job> jobs;
  std::vector<std::vector<tr::ChannelCurve>> curves;
  std::vector<double> energy;
  double total = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    for (const tr::KvKind kind : {tr::KvKind::kKey, tr::KvKind::kValue}) {
      const double density = std::stod(a[kind == tr::KvKind::kKey ? "--k-density" : "--v-density"]);
      jobs.push_back(measure(acts, {l, kind, rank_of(density)}, bits, config, weights));
      curves.push_back(jobs.back().curves);
      energy.push_back(jobs.back().train_energy);
      total += jobs.back().budget;
    }
  }
  const auto widths = tr::allocate_jobs(curves, energy, static_cast<int64_t>(total));
  double sums[2][2] = {{0, 0}, {0, 0}};  // [K|V][uniform|waterfill]
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Coded c = held_out(jobs[i], acts, widths[i]);
    print_row(jobs[i], c, D);
    const int kv = jobs[i].job.kind == tr::KvKind::kKey ? 0 : 1;
    sums[kv][0] += jobs[i].uniform_err;
    sums[kv][1] += c.err;
  }
  const double n = static_cast<double>(config.num_hidden_layers);
  std::printf(
      "mean K: uniform %.5f, per-channel widths %.5f (%.2fx); mean V: uniform %.5f, "
      "per-channel widths %.5f (%.2fx); %.0f bits per token in all\n",
      sums[0][0] / n, sums[0][1] / n, sums[0][1] / sums[0][0], sums[1][0] / n, sums[1][1] / n,
      sums[1][1] / sums[1][0], total);
  return 0;
}
