// The measurements of `cskv eval`: (a) held-out reconstruction errors per layer next to the 16-bit
// floor, (b) KL and perplexity of teacher-forced decoding with the bi-branch cache, (c) memory.
#include "eval/evaluation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <utility>

#include "comm/collectives.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "data/activation_reader.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "trainer/metrics.h"
#include "trainer/spectrum.h"
#include "trainer/waterfill.h"

namespace cskv::eval {

namespace {

using Clock = std::chrono::steady_clock;
using trainer::KvKind;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Progress line with rate and ETA, at most every 2 s (and at the end).
class Progress {
 public:
  Progress(std::string what, int64_t total, std::string unit)
      : what_(std::move(what)), unit_(std::move(unit)), total_(total) {}
  void step(int64_t done, const std::string& extra = "") {
    const auto now = Clock::now();
    if (done < total_ && std::chrono::duration<double>(now - last_).count() < 2.0) return;
    last_ = now;
    const double el = since(t0_), rate = done / std::max(el, 1e-9);
    log::get("eval")->info("{}: {}/{} {} ({:.2f} {}/s, ETA {:.0f} s){}", what_, done, total_, unit_,
                           rate, unit_, (total_ - done) / std::max(rate, 1e-9), extra);
  }

 private:
  std::string what_, unit_;
  int64_t total_;
  Clock::time_point t0_ = Clock::now(), last_ = Clock::now() - std::chrono::seconds(10);
};

data::ActivationReaderOptions holdout_reader(const std::string& acts_dir, int64_t layer,
                                             int64_t batch_tokens, const std::string& hash) {
  data::ActivationReaderOptions ro;
  ro.acts_dir = acts_dir;
  ro.layer = layer;
  ro.split = "holdout";
  ro.batch_tokens = batch_tokens;
  ro.num_epochs = 1;
  ro.prefetch_batches = 0;
  ro.expect.model_config_hash = hash;
  return ro;
}

}  // namespace

// Per-channel key windows start at each sequence's first token, as in training.
LayerEval evaluate_layer(const model::SafetensorsModel& weights, const model::ModelConfig& config,
                         const Compressor& c, const std::string& acts_dir, int64_t seq_len,
                         int64_t layer, at::ScalarType storage, at::Device device) {
  const LayerFactors& f = c.layers.at(layer);
  LayerEval le;
  le.layer = layer;
  le.r_k = f.r_k();
  le.r_v = f.r_v();
  const auto stats = data::read_layer_stats(acts_dir + "/stats.h5", layer);
  struct Branch {
    KvKind kind;
    at::Tensor Wt, A, B;
    trainer::QuantConfig q;
    double err = 0, err16 = 0, ref = 0;
    at::Tensor cov;  // Σ KᵀK over the held-out tokens, float64 [D, D]
  };
  std::vector<Branch> branches;
  for (const KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    const at::Tensor w = weights.get(trainer::kv_weight_name(layer, kind));
    const at::Tensor eig = trainer::spectrum(trainer::kv_covariance(w, stats.gram));
    const bool key = kind == KvKind::kKey;
    const int64_t r = key ? f.r_k() : f.r_v();
    const double total = eig.sum().item<double>();
    const at::Tensor norm = total > 0 ? eig / total : eig;
    std::vector<double> spec(norm.data_ptr<double>(), norm.data_ptr<double>() + norm.numel());
    (key ? le.k_floor : le.v_floor) = trainer::floor_for_rank(eig, r);
    (key ? le.k_spectrum : le.v_spectrum) = std::move(spec);
    branches.push_back({kind, w.to(at::kFloat).t().contiguous().to(device),
                        (key ? f.k_a : f.v_a).to(device), (key ? f.k_b : f.v_b).to(device),
                        branch_quant(c, config, kind, layer), 0, 0, 0, at::Tensor()});
  }
  data::ActivationReader reader(holdout_reader(acts_dir, layer, seq_len, c.model_config_hash));
  while (auto batch = reader.next()) {  // one held-out sequence per batch
    const at::Tensor x = batch->x.to(device);
    for (Branch& b : branches) {
      const at::Tensor K = at::mm(x, b.Wt);
      const at::Tensor lat = at::mm(x, b.A);
      at::Tensor cached = lat;
      if (b.q.bits < 16) {
        LatentStore store(lat.size(1), b.q, storage, device);
        store.append(lat);
        cached = store.dequantized();
      } else {
        cached = lat.to(storage).to(at::kFloat);  // 16-bit latents are stored in `storage`
      }
      b.err += (at::mm(cached, b.B) - K).to(at::kDouble).pow(2).sum().item<double>();
      b.err16 += (at::mm(lat, b.B) - K).to(at::kDouble).pow(2).sum().item<double>();
      b.ref += K.to(at::kDouble).pow(2).sum().item<double>();
      const at::Tensor Kd = K.to(at::kDouble);
      b.cov = b.cov.defined() ? b.cov.addmm_(Kd.t(), Kd) : at::mm(Kd.t(), Kd);
    }
  }
  for (const Branch& b : branches) {
    CSKV_CHECK_INPUT(b.ref > 0, acts_dir << ": layer " << layer
                                         << ": the held-out activations give an all-zero "
                                         << trainer::kv_kind_name(b.kind) << " cache");
    const bool key = b.kind == KvKind::kKey;
    (key ? le.k_error : le.v_error) = b.err / b.ref;
    (key ? le.k_error_16bit : le.v_error_16bit) = b.err16 / b.ref;
    const int64_t r = b.A.size(1);
    const double bits = trainer::quant_bits_per_token(r, b.q);
    (key ? le.k_bits_per_token : le.v_bits_per_token) = bits;
    (key ? le.k_bound : le.v_bound) =
        trainer::gaussian_bound(at::linalg_eigvalsh(b.cov.cpu()), bits);
  }
  return le;
}

std::vector<LayerEval> evaluate_layers(const model::SafetensorsModel& weights,
                                       const model::ModelConfig& config, const Compressor& c,
                                       const std::string& acts_dir, int64_t seq_len,
                                       at::ScalarType storage, at::Device device,
                                       comm::Communicator& comm) {
  std::vector<int64_t> layers;
  for (const auto& [l, f] : c.layers) layers.push_back(l);
  const int64_t nl = static_cast<int64_t>(layers.size()), D = config.kv_dim();
  // Layer i's numbers in row i on its rank, zeros elsewhere: the sum is an exact gather.
  constexpr int kFields = 10;
  at::Tensor errs = at::zeros({nl, kFields}, at::kDouble);
  at::Tensor specs = at::zeros({nl, 2, D}, at::kDouble);
  {
    Progress progress("layer errors", nl, "layers");
    for (int64_t i = comm.rank(); i < nl; i += comm.size()) {
      const LayerEval le =
          evaluate_layer(weights, config, c, acts_dir, seq_len, layers[i], storage, device);
      const double row[kFields] = {
          le.k_floor,       le.v_floor,          le.k_error,          le.v_error, le.k_error_16bit,
          le.v_error_16bit, le.k_bits_per_token, le.v_bits_per_token, le.k_bound, le.v_bound};
      for (int j = 0; j < kFields; ++j) errs[i][j].fill_(row[j]);
      specs[i][0].copy_(at::tensor(le.k_spectrum, at::kDouble));
      specs[i][1].copy_(at::tensor(le.v_spectrum, at::kDouble));
      progress.step(i + 1);
    }
    comm.allreduce_sum(errs);
    comm.allreduce_sum(specs);
  }
  std::vector<LayerEval> out;
  for (int64_t i = 0; i < nl; ++i) {
    LayerEval le;
    le.layer = layers[i];
    le.r_k = c.layers.at(layers[i]).r_k();
    le.r_v = c.layers.at(layers[i]).r_v();
    const at::Tensor e = errs[i];
    le.k_floor = e[0].item<double>();
    le.v_floor = e[1].item<double>();
    le.k_error = e[2].item<double>();
    le.v_error = e[3].item<double>();
    le.k_error_16bit = e[4].item<double>();
    le.v_error_16bit = e[5].item<double>();
    le.k_bits_per_token = e[6].item<double>();
    le.v_bits_per_token = e[7].item<double>();
    le.k_bound = e[8].item<double>();
    le.v_bound = e[9].item<double>();
    for (int kind = 0; kind < 2; ++kind) {
      const at::Tensor s = specs[i][kind].contiguous();
      (kind == 0 ? le.k_spectrum : le.v_spectrum)
          .assign(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
    }
    out.push_back(std::move(le));
  }
  return out;
}

at::Tensor read_holdout_tokens(const std::string& acts_dir, const std::string& hash) {
  std::vector<data::ManifestEntry> holdout;
  for (const auto& e : data::read_manifest(acts_dir)) {
    if (e.split == "holdout") holdout.push_back(e);
  }
  CSKV_CHECK_INPUT(!holdout.empty(), acts_dir << ": the capture has no held-out split "
                                              << "(run cskv capture with --holdout-seqs N)");
  data::ShardExpectation expect;
  expect.model_config_hash = hash;
  expect.split = "holdout";
  data::validate_manifest(acts_dir, holdout, expect, /*verify_checksums=*/false);
  std::vector<at::Tensor> parts;
  for (const auto& e : holdout) parts.push_back(data::read_shard_tokens(acts_dir + "/" + e.file));
  return at::cat(parts, 0);
}

at::Tensor decode_logits(const model::LlamaModel& model, const std::vector<model::KvCache*>& caches,
                         const at::Tensor& tokens, int64_t context, int64_t steps) {
  model.forward_cached(tokens.narrow(1, 0, context), caches, /*logits_from=*/context);
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < steps; ++s) {
    out.push_back(model.forward_cached(tokens.narrow(1, context + s, 1), caches)[0]);
  }
  return at::cat(out, 0);
}

namespace {

// One sequence of end-to-end evaluation, added into `sums` (per-step KL of the compressed and
// the fp16 cache, then NLL of original, compressed and fp16, then agreeing argmaxes); returns
// its largest per-step KL.
double add_sequence(const model::LlamaModel& model, const Compressor& compressor,
                    const at::Tensor& tokens, int64_t context, int64_t decode,
                    at::ScalarType storage, at::Tensor& sums) {
  // Logits come to the host in float64 ([decode, vocab] per cache): the sums live there.
  model::ForwardOptions logits_of_decode;
  logits_of_decode.logits_from = context;
  const at::Tensor ref =
      model.forward(tokens.narrow(1, 0, context + decode), {}, logits_of_decode)[0]
          .to(at::kDouble)
          .to(at::kCPU);
  auto comp_caches = make_caches(compressor, model, storage);
  const at::Tensor comp =
      decode_logits(model, raw(comp_caches), tokens, context, decode).to(at::kDouble).to(at::kCPU);
  comp_caches.clear();
  auto fp16_caches = make_full_caches(model, at::kHalf);
  const at::Tensor fp16 =
      decode_logits(model, raw(fp16_caches), tokens, context, decode).to(at::kDouble).to(at::kCPU);
  fp16_caches.clear();
  const at::Tensor target = tokens[0].narrow(0, context + 1, decode).unsqueeze(1);
  const at::Tensor lp_ref = at::log_softmax(ref, -1);
  const at::Tensor lp_comp = at::log_softmax(comp, -1);
  const at::Tensor lp_fp16 = at::log_softmax(fp16, -1);
  const at::Tensor p_ref = lp_ref.exp();
  const at::Tensor kl = (p_ref * (lp_ref - lp_comp)).sum(-1);
  const at::Tensor kl16 = (p_ref * (lp_ref - lp_fp16)).sum(-1);
  sums.narrow(0, 0, decode).add_(kl);
  sums.narrow(0, decode, decode).add_(kl16);
  sums[2 * decode].sub_(lp_ref.gather(1, target).sum());
  sums[2 * decode + 1].sub_(lp_comp.gather(1, target).sum());
  sums[2 * decode + 2].sub_(lp_fp16.gather(1, target).sum());
  sums[2 * decode + 3].add_((ref.argmax(-1) == comp.argmax(-1)).sum().to(at::kDouble));
  return kl.max().item<double>();
}

// The summed tensor of add_sequence over n sequences, as the report's numbers.
EndToEndEval end_to_end_from_sums(const at::Tensor& sums, int64_t n, int64_t context,
                                  int64_t decode) {
  EndToEndEval e;
  e.context = context;
  e.decode = decode;
  e.sequences = n;
  e.positions = n * decode;
  const double pos = static_cast<double>(e.positions);
  const double* s = sums.data_ptr<double>();
  for (int64_t i = 0; i < decode; ++i) e.kl_per_step.push_back(s[i] / static_cast<double>(n));
  e.kl_mean = sums.narrow(0, 0, decode).sum().item<double>() / pos;
  e.kl_fp16_cache = sums.narrow(0, decode, decode).sum().item<double>() / pos;
  e.ppl_original = std::exp(s[2 * decode] / pos);
  e.ppl_compressed = std::exp(s[2 * decode + 1] / pos);
  e.ppl_fp16_cache = std::exp(s[2 * decode + 2] / pos);
  e.ppl_change_percent = 100.0 * (e.ppl_compressed / e.ppl_original - 1.0);
  e.top1_agreement = s[2 * decode + 3] / pos;
  return e;
}

}  // namespace

EndToEndEval evaluate_end_to_end(const model::LlamaModel& model, const Compressor& compressor,
                                 const at::Tensor& sequences, int64_t context, int64_t decode,
                                 at::ScalarType storage, comm::Communicator& comm) {
  const at::NoGradGuard no_grad;
  const int64_t n = sequences.size(0), need = context + decode + 1;
  CSKV_CHECK_INPUT(context >= 1 && decode >= 1,
                   "end-to-end evaluation: expected context >= 1 "
                   "and decode >= 1, found "
                       << context << " and " << decode);
  CSKV_CHECK_INPUT(sequences.size(1) >= need,
                   "end-to-end evaluation: a prompt of "
                       << context << " tokens and " << decode << " decode steps need sequences of "
                       << need << " tokens, the held-out sequences have " << sequences.size(1));
  // Reduced across ranks in one tensor (layout: add_sequence).
  at::Tensor sums = at::zeros({2 * decode + 4}, at::kDouble);
  double kl_max = 0;
  int64_t mine = 0;
  for (int64_t i = comm.rank(); i < n; i += comm.size()) ++mine;
  Progress progress("end-to-end", mine, "sequences");
  int64_t done = 0;
  for (int64_t i = comm.rank(); i < n; i += comm.size()) {
    const at::Tensor tokens = sequences[i].narrow(0, 0, need).to(at::kLong).unsqueeze(0);
    kl_max =
        std::max(kl_max, add_sequence(model, compressor, tokens, context, decode, storage, sums));
    ++done;
    progress.step(
        done, ", mean KL so far " + std::to_string(sums.narrow(0, 0, decode).sum().item<double>() /
                                                   static_cast<double>(done * decode)));
  }
  comm.allreduce_sum(sums);
  EndToEndEval e = end_to_end_from_sums(sums, n, context, decode);
  e.kl_max = comm::max_over_ranks(comm, kl_max);
  return e;
}

namespace {

// The cache of one layer (compressed when the compressor has the layer).
std::unique_ptr<model::KvCache> layer_cache(const Compressor& c, const model::LlamaModel& model,
                                            int64_t layer, at::ScalarType storage) {
  auto caches = make_caches(c, model, storage);
  return std::move(caches[static_cast<size_t>(layer)]);
}

// One block of `block` tokens for filling layer l's caches: x, k [n_kv, block, hd], v.
struct FillBlock {
  at::Tensor x, k, v;
};

// A compressed layer's block: its held-out activations, repeated, and their k/v projections.
// Any other layer keeps a plain fp16 cache, whose size does not depend on the contents: zeros.
FillBlock fill_block(const model::LlamaModel& model, const Compressor& c,
                     const std::string& acts_dir, int64_t l, int64_t block) {
  const auto& cfg = model.config();
  const int64_t nkv = cfg.num_key_value_heads, hd = cfg.head_dim;
  FillBlock b;
  if (!c.layers.count(l)) {
    const auto opts = at::TensorOptions().dtype(at::kFloat).device(model.device());
    return {at::zeros({block, cfg.hidden_size}, opts), at::zeros({nkv, block, hd}, opts),
            at::zeros({nkv, block, hd}, opts)};
  }
  data::ActivationReader reader(holdout_reader(acts_dir, l, block, c.model_config_hash));
  const auto batch = reader.next();
  CSKV_CHECK_INPUT(batch.has_value(), acts_dir << ": no held-out activations of layer " << l);
  const int64_t reps = (block + batch->x.size(0) - 1) / batch->x.size(0);
  b.x = batch->x.repeat({reps, 1}).narrow(0, 0, block).to(model.device()).contiguous();
  const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
  auto project = [&](const std::string& name) {
    at::Tensor y = at::linear(b.x, model.weight(p + name + ".weight").to(at::kFloat));
    if (cfg.attention_bias) y = y + model.weight(p + name + ".bias").to(at::kFloat);
    return y.view({block, nkv, hd}).transpose(0, 1).contiguous();
  };
  b.k = project("k_proj");
  b.v = project("v_proj");
  return b;
}

// Layer l's byte counts at each context added into sums [contexts, 5] (compressed measured,
// compressed formula, fp16 measured, fp16 formula; on a GPU the allocator's bytes of the
// compressed cache, taken while the fp16 cache of the row before has been freed).
void add_layer_memory(const model::LlamaModel& model, const Compressor& c,
                      const std::string& acts_dir, const std::vector<int64_t>& contexts,
                      at::ScalarType storage, int64_t l, at::Tensor& sums) {
  const auto& cfg = model.config();
  const int64_t block = std::min<int64_t>(4096, contexts.back());
  const FillBlock b = fill_block(model, c, acts_dir, l, block);
  auto fill = [&](model::KvCache& cache, int64_t target) {
    while (cache.size() < target) {
      const int64_t n = std::min(block, target - cache.size());
      cache.append(b.x.narrow(0, 0, n), b.k.narrow(1, 0, n), b.v.narrow(1, 0, n));
    }
  };
  const int64_t base = device::allocated_bytes(model.device());  // -1 on the CPU
  auto cache = layer_cache(c, model, l, storage);
  for (size_t i = 0; i < contexts.size(); ++i) {
    const auto row = static_cast<int64_t>(i);
    fill(*cache, contexts[i]);
    sums[row][0].add_(static_cast<double>(cache->bytes()));
    if (base >= 0) {
      sums[row][4].add_(static_cast<double>(device::allocated_bytes(model.device()) - base));
    }
    sums[row][1].add_(formula_layer_bytes(c, cfg, l, contexts[i]));
    model::FullKvCache full(cfg, at::kHalf, model.device());
    full.reserve(contexts[i]);  // exactly the context: appends write in place
    fill(full, contexts[i]);
    sums[row][2].add_(static_cast<double>(full.bytes()));
    sums[row][3].add_(trainer::fp16_cache_bytes(cfg, contexts[i]));
  }
}

}  // namespace

std::vector<MemoryRow> measure_memory(const model::LlamaModel& model, const Compressor& c,
                                      const std::string& acts_dir,
                                      const std::vector<int64_t>& contexts, at::ScalarType storage,
                                      comm::Communicator& comm) {
  const at::NoGradGuard no_grad;
  const auto& cfg = model.config();
  const int64_t nc = static_cast<int64_t>(contexts.size());
  CSKV_CHECK(nc > 0 && std::is_sorted(contexts.begin(), contexts.end()) && contexts.front() > 0,
             "measure_memory: expected ascending positive contexts");
  // Per context: compressed measured, compressed formula, fp16 measured, fp16 formula, and on
  // a GPU what the allocator handed out for the compressed caches.
  at::Tensor sums = at::zeros({nc, 5}, at::kDouble);
  Progress progress("memory", cfg.num_hidden_layers, "layers");
  for (int64_t l = comm.rank(); l < cfg.num_hidden_layers; l += comm.size()) {
    add_layer_memory(model, c, acts_dir, contexts, storage, l, sums);
    progress.step(l + 1);
  }
  comm.allreduce_sum(sums);
  std::vector<MemoryRow> rows;
  for (int64_t i = 0; i < nc; ++i) {
    MemoryRow m;
    m.context = contexts[i];
    m.compressed_measured = static_cast<int64_t>(sums[i][0].item<double>());
    m.compressed_formula = sums[i][1].item<double>();
    m.fp16_measured = static_cast<int64_t>(sums[i][2].item<double>());
    m.fp16_formula = sums[i][3].item<double>();
    if (model.device().is_cuda()) {
      m.compressed_device_allocated = static_cast<int64_t>(sums[i][4].item<double>());
    }
    m.ratio = m.compressed_measured > 0 ? static_cast<double>(m.fp16_measured) /
                                              static_cast<double>(m.compressed_measured)
                                        : 0.0;
    rows.push_back(m);
  }
  return rows;
}

}  // namespace cskv::eval
