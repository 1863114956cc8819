// One (layer, K|V) job: init from stats.h5, then AdamW on MSE(K, Q(XA)B) with manual gradients
// (straight-through for the quantizer), linear warmup/decay and grad-norm clipping.
#include "trainer/layer_trainer.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/log.h"
#include "data/activation_reader.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "trainer/batch_source.h"
#include "trainer/hadamard.h"

namespace cskv::trainer {

std::string LayerJob::name() const {
  return "layer " + std::to_string(layer) + " " + kv_kind_name(kind);
}

int64_t LayerJob::bits_per_token() const {
  int64_t bits = 0;
  for (const ChannelCode& c : codes) bits += c.bits;
  return bits;
}

QuantMode parse_quant_mode(const std::string& text) {
  if (text == "uniform") return QuantMode::kUniform;
  if (text == "waterfill") return QuantMode::kWaterfill;
  CSKV_FAIL_USAGE("--quant: expected uniform|waterfill, found '" << text << "'");
}

const char* quant_mode_name(QuantMode mode) {
  return mode == QuantMode::kWaterfill ? "waterfill" : "uniform";
}

uint64_t job_seed(uint64_t global_seed, int64_t layer, KvKind kind) {
  // SplitMix64 over (seed, layer, kind): well mixed, and independent of ranks and time.
  uint64_t z = global_seed ^ (0x9E3779B97F4A7C15ull *
                              static_cast<uint64_t>(2 * layer + 1 + (kind == KvKind::kValue)));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

QuantConfig job_quant_config(const TrainConfig& cfg, const model::ModelConfig& model,
                             const LayerJob& job) {
  QuantConfig q;
  const bool key = job.kind == KvKind::kKey;
  if (cfg.quant == QuantMode::kWaterfill) {
    q.channels = job.codes;
    q.bits = 1;
    for (const ChannelCode& c : job.codes) q.bits = std::max(q.bits, c.bits);
    return q;
  }
  q.bits = key ? cfg.k_bits : cfg.v_bits;
  q.group_size = cfg.group_size > 0 ? cfg.group_size : job.rank / model.num_key_value_heads;
  q.window = key ? cfg.window : 0;
  q.per_channel = key && cfg.window > 0;
  q.compat_cskv = cfg.quant_compat_cskv;
  return q;
}

LayerTrainer::LayerTrainer(TrainConfig cfg, model::ModelConfig model,
                           std::shared_ptr<const model::SafetensorsModel> weights,
                           std::string acts_dir, TrainDevice device)
    : cfg_(cfg),
      model_(std::move(model)),
      weights_(std::move(weights)),
      acts_dir_(std::move(acts_dir)),
      dev_(device) {
  device::configure(dev_.device, cfg_.precision);
}

BatchStream LayerTrainer::stream(const LayerJob& job, const std::string& split,
                                 int64_t num_epochs) const {
  data::ActivationReaderOptions ro;
  ro.acts_dir = acts_dir_;
  ro.layer = job.layer;
  ro.split = split;
  ro.batch_tokens = cfg_.batch_tokens;
  ro.num_epochs = num_epochs;
  ro.expect.model_config_hash = model_.hash();
  for (const auto& r : resident_) {
    if (r->layer == job.layer && r->split == split) return BatchStream(ro, dev_, r);
  }
  if (!use_resident(ro, dev_)) return BatchStream(ro, dev_, nullptr);
  // Another layer's splits go first: at most one layer's train and held-out rows stay.
  resident_.erase(std::remove_if(resident_.begin(), resident_.end(),
                                 [&](const auto& r) { return r->layer != job.layer; }),
                  resident_.end());
  resident_.push_back(load_resident(ro, dev_.device));
  return BatchStream(ro, dev_, resident_.back());
}

at::Tensor LayerTrainer::weight(const LayerJob& job) const {
  return weights_->get(kv_weight_name(job.layer, job.kind)).to(at::kFloat).contiguous();
}

int64_t LayerTrainer::total_steps(const LayerJob& job) const {
  if (cfg_.steps > 0) return cfg_.steps;
  int64_t epoch_tokens = 0;
  for (const auto& e : data::read_manifest(acts_dir_)) {
    if (e.split == "train") epoch_tokens += e.token_count;
  }
  const int64_t per_epoch = (epoch_tokens + cfg_.batch_tokens - 1) / cfg_.batch_tokens;
  return cfg_.epochs * per_epoch;
}

JobState LayerTrainer::init(const LayerJob& job) const {
  const int64_t D = model_.kv_dim();
  CSKV_CHECK_USAGE(job.rank >= 1 && job.rank <= D,
                   job.name() << ": rank " << job.rank << " outside [1, D = " << D << "]");
  const auto q = job_quant_config(cfg_, model_, job);
  validate_quant_config(q, job.rank, job.name());
  if (uses_channel_windows(q) && q.bits < 16) {
    // Key windows must not straddle two sequences or two batches.
    CSKV_CHECK_USAGE(
        cfg_.batch_tokens % q.window == 0,
        "--batch-tokens " << cfg_.batch_tokens << " is not a multiple of --window " << q.window);
    const auto entries = data::read_manifest(acts_dir_);
    for (const auto& e : entries) {
      const auto h = data::read_shard_header(acts_dir_ + "/" + e.file);
      CSKV_CHECK_USAGE(
          h.seq_len % q.window == 0,
          "the captured seq_len " << h.seq_len << " is not a multiple of --window " << q.window);
      break;
    }
  }
  const std::string stats_path = acts_dir_ + "/stats.h5";
  const auto stats = data::read_layer_stats(stats_path, job.layer);
  const at::Tensor w = weights_->get(kv_weight_name(job.layer, job.kind));
  InitResult init = job.channels.empty()
                        ? init_factors(cfg_.init, w, job.rank, stats.gram, stats.abs_mean,
                                       job.name(), cfg_.asvd_alpha)
                        : select_channels(init_factors(InitMethod::kPca, w, model_.kv_dim(),
                                                       stats.gram, stats.abs_mean, job.name()),
                                          job.channels, job.name());
  CSKV_CHECK(job.channels.empty() || (cfg_.init == InitMethod::kPca && !cfg_.rotate_hadamard),
             job.name() << ": kept channels need --init pca without --rotate");
  JobState s;
  s.job = job;
  s.A = init.A.to(at::kFloat).contiguous();
  s.B = init.B.to(at::kFloat).contiguous();
  if (cfg_.rotate_hadamard) {
    const at::Tensor R = randomized_hadamard(job.rank, job_seed(cfg_.seed, job.layer, job.kind));
    const RotatedFactors rotated = rotate_factors(init.A, init.B, R);
    s.A = rotated.A.to(at::kFloat).contiguous();
    s.B = rotated.B.to(at::kFloat).contiguous();
  }
  s.m_A = at::zeros_like(s.A);
  s.v_A = at::zeros_like(s.A);
  s.m_B = at::zeros_like(s.B);
  s.v_B = at::zeros_like(s.B);
  s.total_steps = total_steps(job);
  s.floor = init.floor;
  s.eigenvalues = init.eigenvalues;
  return s;
}

at::Tensor LayerTrainer::curve_rows(const LayerJob& job) const {
  BatchStream batches = stream(job, "train", 1);
  std::vector<at::Tensor> rows;
  int64_t n = 0;
  while (n < kCurveTokens) {
    auto batch = batches.next();
    if (!batch) break;
    n += batch->size(0);
    rows.push_back(*batch);
  }
  CSKV_CHECK_INPUT(n > 0, job.name() << ": the train split has no data");
  return at::cat(rows, 0).narrow(0, 0, std::min(n, kCurveTokens));
}

LayerTrainer::Curves LayerTrainer::channel_curves(const LayerJob& job) const {
  const auto stats = data::read_layer_stats(acts_dir_ + "/stats.h5", job.layer);
  const at::Tensor w = weights_->get(kv_weight_name(job.layer, job.kind));
  const InitResult full =
      init_factors(InitMethod::kPca, w, model_.kv_dim(), stats.gram, stats.abs_mean, job.name());
  const at::Tensor X = curve_rows(job);
  const at::Tensor c = device::matmul(X, full.A.to(X.device()), cfg_.precision);
  Curves out;
  out.channels = fit_channels(c);
  for (const ChannelCurve& ch : out.channels) out.energy += ch.error[0];
  return out;
}

void LayerTrainer::refit_codes(JobState& s) const {
  if (s.job.codes.empty()) return;
  const at::Tensor X = curve_rows(s.job);
  const at::Tensor c = device::matmul(X, s.A.to(X.device()), cfg_.precision).t().contiguous();
  for (size_t j = 0; j < s.job.codes.size(); ++j) {
    s.job.codes[j] = refit_channel(c[static_cast<int64_t>(j)], s.job.codes[j]);
  }
}

namespace {
void move_state(JobState& s, at::Device device) {
  for (at::Tensor* t : {&s.A, &s.B, &s.m_A, &s.v_A, &s.m_B, &s.v_B}) {
    if (t->defined()) *t = t->to(device);
  }
}

double lr_at(const TrainConfig& cfg, int64_t step, int64_t total) {
  // HF get_linear_schedule_with_warmup: linear warmup to lr, then linear decay to 0.
  if (step < cfg.warmup)
    return cfg.lr * static_cast<double>(step) / std::max<int64_t>(1, cfg.warmup);
  const double left = static_cast<double>(total - step) /
                      static_cast<double>(std::max<int64_t>(1, total - cfg.warmup));
  return cfg.lr * std::max(0.0, left);
}

void adamw(at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g, const TrainConfig& cfg,
           double lr, int64_t t) {
  m.mul_(cfg.beta1).add_(g, 1.0 - cfg.beta1);
  v.mul_(cfg.beta2).addcmul_(g, g, 1.0 - cfg.beta2);
  const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(t));
  if (cfg.weight_decay != 0) p.mul_(1.0 - lr * cfg.weight_decay);
  // p -= lr * (m / bc1) / (sqrt(v / bc2) + eps), as torch.optim.AdamW.
  const at::Tensor denom = (v / bc2).sqrt_().add_(cfg.eps);
  p.addcdiv_(m, denom, -lr / bc1);
}
}  // namespace

void LayerTrainer::train(JobState& s, int64_t until_step,
                         const std::function<bool(const JobState&)>& on_step,
                         const DataParallelSlice& dp) const {
  until_step = std::min(until_step, s.total_steps);
  if (s.step >= until_step) return;
  CSKV_CHECK(dp.count >= 1 && dp.index >= 0 && dp.index < dp.count,
             s.job.name() << ": data-parallel slice " << dp.index << " of " << dp.count);
  CSKV_CHECK(dp.count == 1 || dp.allreduce_sum, s.job.name()
                                                    << ": data parallelism needs an allreduce");
  const auto qcfg = job_quant_config(cfg_, model_, s.job);
  // Rows of a batch are dealt out in units that keep every key window on one rank.
  const int64_t unit = uses_channel_windows(qcfg) && qcfg.bits < 16 ? qcfg.window : 1;
  const at::Device dev = dev_.device;
  const device::Precision prec = cfg_.precision;
  const at::Tensor Wt = weight(s.job).t().contiguous().to(dev);  // [H, D]
  BatchStream batches = stream(s.job, "train", -1);
  batches.seek(s.data_position);
  move_state(s, dev);
  const int64_t r = s.job.rank;
  while (s.step < until_step) {
    auto batch = batches.next();
    CSKV_CHECK(batch.has_value(), s.job.name() << ": activation stream ended early");
    const int64_t n = batch->size(0), D = Wt.size(1);
    at::Tensor X = *batch;  // [n, H]
    if (dp.count > 1) {
      const int64_t units = n / unit;
      const int64_t begin = units * dp.index / dp.count * unit;
      const int64_t end = dp.index + 1 == dp.count ? n : units * (dp.index + 1) / dp.count * unit;
      X = X.slice(0, begin, end);
    }
    at::Tensor dA, dB;
    double loss_sum = 0;
    if (X.size(0) > 0) {
      const at::Tensor K = device::matmul(X, Wt, prec);
      const at::Tensor c = device::matmul(X, s.A, prec);
      const QuantizedLatent ql = fake_quantize_with_mask(c, qcfg);
      const at::Tensor R = device::matmul(ql.values, s.B, prec).sub_(K);  // K̂ − K
      loss_sum = R.pow(2).sum().item<double>();
      // The gradient of the mean over the whole batch (all slices): scale by the full n.
      const at::Tensor G = R.mul_(2.0 / static_cast<double>(n * D));
      dB = device::matmul(ql.values.t(), G, prec);
      at::Tensor dc = device::matmul(G, s.B.t(), prec);
      if (ql.mask.defined()) dc.mul_(ql.mask);
      dA = device::matmul(X.t(), dc, prec);
    } else {
      dA = at::zeros_like(s.A);
      dB = at::zeros_like(s.B);
    }
    if (dp.count > 1) {
      at::Tensor flat =
          at::cat({dA.reshape({-1}), dB.reshape({-1}),
                   at::full({1}, loss_sum, at::TensorOptions().dtype(at::kFloat).device(dev))});
      dp.allreduce_sum(flat);
      const int64_t H = s.A.size(0);
      dA = flat.slice(0, 0, H * r).view({H, r});
      dB = flat.slice(0, H * r, H * r + r * D).view({r, D});
      loss_sum = flat[H * r + r * D].item<double>();
    }
    s.last_loss = loss_sum / static_cast<double>(n * D);
    const double norm = std::sqrt(dA.pow(2).sum().item<double>() + dB.pow(2).sum().item<double>());
    if (cfg_.clip > 0 && norm > cfg_.clip) {  // torch.nn.utils.clip_grad_norm_
      const double scale = cfg_.clip / (norm + 1e-6);
      dA.mul_(scale);
      dB.mul_(scale);
    }
    const double lr = lr_at(cfg_, s.step, s.total_steps);
    s.step += 1;
    adamw(s.A, s.m_A, s.v_A, dA, cfg_, lr, s.step);
    adamw(s.B, s.m_B, s.v_B, dB, cfg_, lr, s.step);
    s.data_position = batches.position();
    if (on_step && !on_step(s)) break;
  }
  move_state(s, at::kCPU);
}

double LayerTrainer::relative_error(const JobState& s, const std::string& split,
                                    bool quantize) const {
  const auto qcfg = job_quant_config(cfg_, model_, s.job);
  const at::Device dev = dev_.device;
  const device::Precision prec = cfg_.precision;
  const at::Tensor Wt = weight(s.job).t().contiguous().to(dev);
  const at::Tensor A = s.A.to(dev), B = s.B.to(dev);
  BatchStream batches = stream(s.job, split, 1);
  // Sums in float64 on the device; one transfer at the end.
  at::Tensor err = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
  at::Tensor ref = at::zeros_like(err);
  while (auto x = batches.next()) {
    const at::Tensor K = device::matmul(*x, Wt, prec);
    at::Tensor c = device::matmul(*x, A, prec);
    if (quantize) c = fake_quantize_with_mask(c, qcfg).values;
    const at::Tensor R = device::matmul(c, B, prec).sub_(K);
    err.add_(R.to(at::kDouble).pow(2).sum());
    ref.add_(K.to(at::kDouble).pow(2).sum());
  }
  const double err_sum = err.item<double>(), ref_sum = ref.item<double>();
  CSKV_CHECK_INPUT(ref_sum > 0, s.job.name() << ": the " << split << " split has no data");
  return err_sum / ref_sum;
}

}  // namespace cskv::trainer
