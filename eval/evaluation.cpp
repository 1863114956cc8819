// `cskv eval`: (a) held-out reconstruction errors per layer next to the 16-bit floor, (b) KL and
// perplexity of teacher-forced decoding with the bi-branch cache, (c) measured cache memory.
#include "pipeline/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include "comm/local_communicator.h"
#include "common/error.h"
#include "common/log.h"
#include "data/activation_reader.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "trainer/metrics.h"
#include "trainer/spectrum.h"

namespace cskv::pipeline {

using namespace cskv::eval;  // the stage is built from eval/ throughout

namespace {

using Clock = std::chrono::steady_clock;
using trainer::KvKind;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (const int64_t l : layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s.empty() ? "none" : s;
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

// (a) One layer: errors over the held-out sequences (per-channel key windows start at each
// sequence's first token, as in training), floors and spectra from the training statistics.
LayerEval evaluate_layer(const model::SafetensorsModel& weights, const model::ModelConfig& config,
                         const Compressor& c, const std::string& acts_dir, int64_t seq_len,
                         int64_t layer, at::ScalarType storage) {
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
    branches.push_back({kind, w.to(at::kFloat).t().contiguous(), key ? f.k_a : f.v_a,
                        key ? f.k_b : f.v_b, branch_quant(c, config, kind, r)});
  }
  data::ActivationReader reader(holdout_reader(acts_dir, layer, seq_len, c.model_config_hash));
  while (auto batch = reader.next()) {  // one held-out sequence per batch
    for (Branch& b : branches) {
      const at::Tensor K = at::mm(batch->x, b.Wt);
      const at::Tensor lat = at::mm(batch->x, b.A);
      at::Tensor cached = lat;
      if (b.q.bits < 16) {
        LatentStore store(lat.size(1), b.q, storage);
        store.append(lat);
        cached = store.dequantized();
      } else {
        cached = lat.to(storage).to(at::kFloat);  // 16-bit latents are stored in `storage`
      }
      b.err += (at::mm(cached, b.B) - K).to(at::kDouble).pow(2).sum().item<double>();
      b.err16 += (at::mm(lat, b.B) - K).to(at::kDouble).pow(2).sum().item<double>();
      b.ref += K.to(at::kDouble).pow(2).sum().item<double>();
    }
  }
  for (const Branch& b : branches) {
    CSKV_CHECK_INPUT(b.ref > 0, acts_dir << ": layer " << layer
                                         << ": the held-out activations give an all-zero "
                                         << trainer::kv_kind_name(b.kind) << " cache");
    const bool key = b.kind == KvKind::kKey;
    (key ? le.k_error : le.v_error) = b.err / b.ref;
    (key ? le.k_error_16bit : le.v_error_16bit) = b.err16 / b.ref;
  }
  return le;
}

// The cache of one layer (compressed when the compressor has the layer).
std::unique_ptr<model::KvCache> layer_cache(const Compressor& c, const model::LlamaModel& model,
                                            int64_t layer, at::ScalarType storage) {
  auto caches = make_caches(c, model, storage);
  return std::move(caches[static_cast<size_t>(layer)]);
}

double max_over_ranks(double v, comm::Communicator& comm) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  double m = v;
  for (const std::string& s : comm.allgather_bytes(buf))
    m = std::max(m, std::strtod(s.c_str(), nullptr));
  return m;
}

}  // namespace

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
  model.forward_cached(tokens.narrow(1, 0, context), caches);
  std::vector<at::Tensor> out;
  for (int64_t s = 0; s < steps; ++s) {
    out.push_back(model.forward_cached(tokens.narrow(1, context + s, 1), caches)[0]);
  }
  return at::cat(out, 0);
}

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
  // Per-step KL sums (compressed, fp16 cache), then NLL sums (original, compressed, fp16) and
  // the count of agreeing argmaxes: reduced across ranks in one tensor.
  at::Tensor sums = at::zeros({2 * decode + 4}, at::kDouble);
  double kl_max = 0;
  int64_t mine = 0;
  for (int64_t i = comm.rank(); i < n; i += comm.size()) ++mine;
  Progress progress("end-to-end", mine, "sequences");
  int64_t done = 0;
  for (int64_t i = comm.rank(); i < n; i += comm.size()) {
    const at::Tensor tokens = sequences[i].narrow(0, 0, need).to(at::kLong).unsqueeze(0);
    const at::Tensor ref = model.forward(tokens.narrow(1, 0, context + decode))[0]
                               .narrow(0, context, decode)
                               .to(at::kDouble);
    auto comp_caches = make_caches(compressor, model, storage);
    const at::Tensor comp =
        decode_logits(model, raw(comp_caches), tokens, context, decode).to(at::kDouble);
    comp_caches.clear();
    auto fp16_caches = make_full_caches(model, at::kHalf);
    const at::Tensor fp16 =
        decode_logits(model, raw(fp16_caches), tokens, context, decode).to(at::kDouble);
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
    kl_max = std::max(kl_max, kl.max().item<double>());
    ++done;
    progress.step(
        done, ", mean KL so far " + std::to_string(sums.narrow(0, 0, decode).sum().item<double>() /
                                                   static_cast<double>(done * decode)));
  }
  comm.allreduce_sum(sums);
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
  e.kl_max = max_over_ranks(kl_max, comm);
  return e;
}

std::vector<MemoryRow> measure_memory(const model::LlamaModel& model, const Compressor& c,
                                      const std::string& acts_dir,
                                      const std::vector<int64_t>& contexts, at::ScalarType storage,
                                      comm::Communicator& comm) {
  const at::NoGradGuard no_grad;
  const auto& cfg = model.config();
  const int64_t nc = static_cast<int64_t>(contexts.size());
  CSKV_CHECK(nc > 0 && std::is_sorted(contexts.begin(), contexts.end()) && contexts.front() > 0,
             "measure_memory: expected ascending positive contexts");
  const int64_t block = std::min<int64_t>(4096, contexts.back());
  const int64_t nkv = cfg.num_key_value_heads, hd = cfg.head_dim;
  // Per context: compressed measured, compressed formula, fp16 measured, fp16 formula.
  at::Tensor sums = at::zeros({nc, 4}, at::kDouble);
  Progress progress("memory", cfg.num_hidden_layers, "layers");
  for (int64_t l = comm.rank(); l < cfg.num_hidden_layers; l += comm.size()) {
    // One block of tokens: the layer's held-out activations, repeated.
    at::Tensor x, k, v;
    if (c.layers.count(l)) {
      data::ActivationReader reader(holdout_reader(acts_dir, l, block, c.model_config_hash));
      const auto batch = reader.next();
      CSKV_CHECK_INPUT(batch.has_value(), acts_dir << ": no held-out activations of layer " << l);
      const int64_t reps = (block + batch->x.size(0) - 1) / batch->x.size(0);
      x = batch->x.repeat({reps, 1}).narrow(0, 0, block).to(model.device()).contiguous();
      const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
      auto project = [&](const std::string& name) {
        at::Tensor y = at::linear(x, model.weight(p + name + ".weight").to(at::kFloat));
        if (cfg.attention_bias) y = y + model.weight(p + name + ".bias").to(at::kFloat);
        return y.view({block, nkv, hd}).transpose(0, 1).contiguous();
      };
      k = project("k_proj");
      v = project("v_proj");
    } else {  // a plain fp16 cache: its size does not depend on the contents
      const auto opts = at::TensorOptions().dtype(at::kFloat).device(model.device());
      x = at::zeros({block, cfg.hidden_size}, opts);
      k = at::zeros({nkv, block, hd}, opts);
      v = at::zeros({nkv, block, hd}, opts);
    }
    auto fill = [&](model::KvCache& cache, int64_t target) {
      while (cache.size() < target) {
        const int64_t n = std::min(block, target - cache.size());
        cache.append(x.narrow(0, 0, n), k.narrow(1, 0, n), v.narrow(1, 0, n));
      }
    };
    auto cache = layer_cache(c, model, l, storage);
    for (int64_t i = 0; i < nc; ++i) {
      fill(*cache, contexts[i]);
      sums[i][0].add_(static_cast<double>(cache->bytes()));
      sums[i][1].add_(formula_layer_bytes(c, cfg, l, contexts[i]));
      model::FullKvCache full(cfg, at::kHalf, model.device());
      full.reserve(contexts[i]);  // exactly the context: appends write in place
      fill(full, contexts[i]);
      sums[i][2].add_(static_cast<double>(full.bytes()));
      sums[i][3].add_(trainer::fp16_cache_bytes(cfg, contexts[i]));
    }
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
    m.ratio = m.compressed_measured > 0 ? static_cast<double>(m.fp16_measured) /
                                              static_cast<double>(m.compressed_measured)
                                        : 0.0;
    rows.push_back(m);
  }
  return rows;
}

EvalReport run_eval(const EvalOptions& o) {
  comm::LocalCommunicator local;
  return run_eval(o, local);
}

namespace {
EvalReport run_eval_checked(const EvalOptions& o, comm::Communicator& comm, bool& inputs_ok);
}  // namespace

EvalReport run_eval(const EvalOptions& o, comm::Communicator& comm) {
  // Every rank checks the same inputs and fails the same way, so an input error is collective:
  // printed once, by rank 0 (launch/cli.cpp), instead of by every rank.
  bool inputs_ok = false;
  try {
    return run_eval_checked(o, comm, inputs_ok);
  } catch (const Error& e) {
    if (inputs_ok || e.collective()) throw;
    throw Error(e.kind(), e.message(), e.where(), /*collective=*/true);
  }
}

namespace {
EvalReport run_eval_checked(const EvalOptions& o, comm::Communicator& comm, bool& inputs_ok) {
  const at::NoGradGuard no_grad;
  const auto t0 = Clock::now();
  auto log = log::get("eval");
  const bool root = comm.rank() == 0;
  // Everything that can be wrong with the inputs is checked before any work.
  const model::ModelConfig config = model::load_config(o.model_dir);
  const Compressor comp = load_compressor(o.compressor_path, config);
  const std::string hash = config.hash();
  const at::Tensor sequences = read_holdout_tokens(o.acts_dir, hash);
  const int64_t seq_len = sequences.size(1);
  CSKV_CHECK_USAGE(o.decode >= 1, "--decode: expected >= 1, found " << o.decode);
  const int64_t context = o.context > 0 ? o.context : seq_len - o.decode - 1;
  CSKV_CHECK_USAGE(o.context >= 0, "--context: expected >= 1 (or 0 = auto), found " << o.context);
  CSKV_CHECK_INPUT(context >= 1 && context + o.decode + 1 <= seq_len,
                   "--context " << context << " + --decode " << o.decode
                                << " + 1 = " << context + o.decode + 1
                                << " tokens per sequence needed, but the held-out sequences of "
                                << o.acts_dir << " have " << seq_len
                                << " tokens (capture with a larger --seq-len, or lower "
                                   "--context/--decode)");
  const int64_t n_seq =
      o.max_sequences > 0 ? std::min(o.max_sequences, sequences.size(0)) : sequences.size(0);
  CSKV_CHECK_USAGE(o.max_sequences >= 0,
                   "--sequences: expected >= 0 (0 = all), found " << o.max_sequences);
  std::vector<int64_t> contexts = o.memory_contexts;
  std::sort(contexts.begin(), contexts.end());
  contexts.erase(std::unique(contexts.begin(), contexts.end()), contexts.end());
  CSKV_CHECK_USAGE(!contexts.empty() && contexts.front() >= 1,
                   "--memory-contexts: expected positive token counts");
  const data::ShardHeader holdout_header = [&] {
    for (const auto& e : data::read_manifest(o.acts_dir)) {
      if (e.split == "holdout") return data::read_shard_header(o.acts_dir + "/" + e.file);
    }
    return data::ShardHeader{};
  }();
  const auto stats = data::read_stats_header(o.acts_dir + "/stats.h5", hash);
  std::vector<int64_t> missing_holdout, missing_stats, uncompressed;
  for (const auto& [layer, f] : comp.layers) {
    const auto& hl = holdout_header.layers;
    if (std::find(hl.begin(), hl.end(), layer) == hl.end()) missing_holdout.push_back(layer);
    if (std::find(stats.layers.begin(), stats.layers.end(), layer) == stats.layers.end()) {
      missing_stats.push_back(layer);
    }
  }
  CSKV_CHECK_INPUT(missing_holdout.empty(),
                   o.acts_dir << ": the held-out activations lack compressed layer(s) "
                              << layer_list(missing_holdout)
                              << " (captured: " << layer_list(holdout_header.layers)
                              << "); capture the layers the compressor was trained on");
  CSKV_CHECK_INPUT(missing_stats.empty(), o.acts_dir << "/stats.h5 lacks compressed layer(s) "
                                                     << layer_list(missing_stats));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (!comp.layers.count(l)) uncompressed.push_back(l);
  }
  std::string plotting;  // rank 0 draws the plots: its verdict holds for all
  if (root && o.write_files && o.plots) {
    try {
      check_plotting();
    } catch (const Error& e) {
      plotting = e.message();
    }
  }
  comm.broadcast_bytes(plotting, 0);
  CSKV_CHECK(plotting.empty(), plotting);
  inputs_ok = true;
  if (!uncompressed.empty()) {
    log->warn("{}: no factors for layer(s) {}; they keep a plain fp16 cache", o.compressor_path,
              layer_list(uncompressed));
  }

  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(o.model_dir));
  model::LlamaModel model(config, weights);
  model.keep_converted_layers(true);  // decoding runs every layer once per token
  EvalReport r;
  r.model_dir = o.model_dir;
  r.acts_dir = o.acts_dir;
  r.compressor_path = o.compressor_path;
  r.model_config_hash = hash;
  r.num_layers = config.num_hidden_layers;
  r.k_bits = comp.quant.k_bits;
  r.v_bits = comp.quant.v_bits;
  r.group_size = comp.quant.group_size;
  r.window = comp.quant.window;
  r.quant_compat = comp.quant.quant_compat_cskv ? "cskv" : "none";
  r.cache_dtype = o.cache_storage == at::kHalf ? "float16" : "float32";
  r.uncompressed_layers = uncompressed;

  // (a) Per-layer errors: layer i of the compressed ones on rank i mod W.
  std::vector<int64_t> layers;
  for (const auto& [l, f] : comp.layers) layers.push_back(l);
  const int64_t nl = static_cast<int64_t>(layers.size()), D = config.kv_dim();
  at::Tensor errs = at::zeros({nl, 6}, at::kDouble);
  at::Tensor specs = at::zeros({nl, 2, D}, at::kDouble);
  {
    Progress progress("layer errors", nl, "layers");
    for (int64_t i = comm.rank(); i < nl; i += comm.size()) {
      const LayerEval le =
          evaluate_layer(*weights, config, comp, o.acts_dir, seq_len, layers[i], o.cache_storage);
      const double row[6] = {le.k_floor, le.v_floor,       le.k_error,
                             le.v_error, le.k_error_16bit, le.v_error_16bit};
      for (int j = 0; j < 6; ++j) errs[i][j].fill_(row[j]);
      specs[i][0].copy_(at::tensor(le.k_spectrum, at::kDouble));
      specs[i][1].copy_(at::tensor(le.v_spectrum, at::kDouble));
      progress.step(i + 1);
    }
    comm.allreduce_sum(errs);
    comm.allreduce_sum(specs);
  }
  for (int64_t i = 0; i < nl; ++i) {
    LayerEval le;
    le.layer = layers[i];
    le.r_k = comp.layers.at(layers[i]).r_k();
    le.r_v = comp.layers.at(layers[i]).r_v();
    const at::Tensor e = errs[i];
    le.k_floor = e[0].item<double>();
    le.v_floor = e[1].item<double>();
    le.k_error = e[2].item<double>();
    le.v_error = e[3].item<double>();
    le.k_error_16bit = e[4].item<double>();
    le.v_error_16bit = e[5].item<double>();
    for (int kind = 0; kind < 2; ++kind) {
      const at::Tensor s = specs[i][kind].contiguous();
      (kind == 0 ? le.k_spectrum : le.v_spectrum)
          .assign(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
    }
    r.mean_k_error += le.k_error / static_cast<double>(nl);
    r.mean_v_error += le.v_error / static_cast<double>(nl);
    r.mean_k_floor += le.k_floor / static_cast<double>(nl);
    r.mean_v_floor += le.v_floor / static_cast<double>(nl);
    r.layers.push_back(std::move(le));
  }
  log->info("layer errors: mean K {:.4g} (floor {:.4g}), mean V {:.4g} (floor {:.4g})",
            r.mean_k_error, r.mean_k_floor, r.mean_v_error, r.mean_v_floor);

  // (b) End to end.
  r.end_to_end = evaluate_end_to_end(model, comp, sequences.narrow(0, 0, n_seq), context, o.decode,
                                     o.cache_storage, comm);
  log->info("end-to-end: mean KL {:.4g} (fp16 cache {:.4g}), perplexity {:.4g} -> {:.4g}",
            r.end_to_end.kl_mean, r.end_to_end.kl_fp16_cache, r.end_to_end.ppl_original,
            r.end_to_end.ppl_compressed);

  // (c) Memory.
  r.memory = measure_memory(model, comp, o.acts_dir, contexts, o.cache_storage, comm);
  r.compression_ratio = r.memory.back().ratio;
  r.compression_ratio_context = r.memory.back().context;
  for (const auto& m : r.memory) {
    if (o.cache_storage == at::kHalf &&
        (static_cast<double>(m.compressed_measured) != m.compressed_formula ||
         static_cast<double>(m.fp16_measured) != m.fp16_formula)) {
      log->warn("memory at {} tokens: measured {} / {} bytes, formula {} / {}", m.context,
                m.compressed_measured, m.fp16_measured, m.compressed_formula, m.fp16_formula);
    }
  }
  r.seconds = since(t0);
  if (root && o.write_files) write_report(r, o.out_dir, o.plots);
  comm.barrier();
  log->info("eval done in {:.1f} s: {}", r.seconds, r.headline());
  return r;
}
}  // namespace

}  // namespace cskv::pipeline
