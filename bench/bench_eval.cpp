// Benchmark of decoding with the bi-branch compressed KV cache against a plain fp16 cache: time
// per decode step (LlamaModel::forward_cached, one token, all layers) and the bytes both caches
// hold, at several contexts, on a toy Llama of hidden 1024.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/threads.h"
#include "eval/compressed_kv_cache.h"
#include "eval/compressor.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "trainer/layer_trainer.h"
#include "trainer/metrics.h"
#include "trainer/rank_allocation.h"
#include "trainer/waterfill.h"

namespace {

namespace fs = std::filesystem;
namespace ev = cskv::eval;
namespace tr = cskv::trainer;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Args {
  std::string dir = "bench-eval-data";
  std::vector<int64_t> contexts = {1024, 4096, 16384};
  int64_t steps = 8;  // timed decode steps per cache and context (after 2 warm-up steps)
  int threads = 1;
  int64_t hidden = 1024, layers = 4, heads = 16, kv_heads = 4, intermediate = 2752, vocab = 8192;
  double k_density = 0.25, v_density = 0.5;
  int bits = 4;
  int64_t window = 32;
  // waterfill: every channel's width allocated (trainer/waterfill.h) on random hidden states under
  // the uniform code's bits per token (codes + scale/zero), the ranges folded into B.
  std::string quant = "uniform";
};

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoll(item));
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir")
      a.dir = v;
    else if (k == "--contexts")
      a.contexts = parse_list(v);
    else if (k == "--steps")
      a.steps = std::stoll(v);
    else if (k == "--threads")
      a.threads = std::stoi(v);
    else if (k == "--hidden")
      a.hidden = std::stoll(v);
    else if (k == "--layers")
      a.layers = std::stoll(v);
    else if (k == "--heads")
      a.heads = std::stoll(v);
    else if (k == "--kv-heads")
      a.kv_heads = std::stoll(v);
    else if (k == "--intermediate")
      a.intermediate = std::stoll(v);
    else if (k == "--vocab")
      a.vocab = std::stoll(v);
    else if (k == "--k-density")
      a.k_density = std::stod(v);
    else if (k == "--v-density")
      a.v_density = std::stod(v);
    else if (k == "--bits")
      a.bits = std::stoi(v);
    else if (k == "--window")
      a.window = std::stoll(v);
    else if (k == "--quant")
      a.quant = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// Factors A = Wᵀ Q_r, B = Q_rᵀ (Q_r: the first r columns of a random orthogonal D×D): the
// shapes and costs of trained factors (the timing does not depend on their values).
ev::LayerFactors random_factors(const cskv::model::SafetensorsModel& w, int64_t layer, int64_t rk,
                                int64_t rv, int64_t d) {
  ev::LayerFactors f;
  for (const tr::KvKind kind : {tr::KvKind::kKey, tr::KvKind::kValue}) {
    const int64_t r = kind == tr::KvKind::kKey ? rk : rv;
    const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({d, d}, at::kDouble))).narrow(1, 0, r);
    const at::Tensor W = w.get(tr::kv_weight_name(layer, kind)).to(at::kDouble);  // [D, H]
    const at::Tensor A = W.t().mm(q).to(at::kFloat).contiguous();
    const at::Tensor B = q.t().to(at::kFloat).contiguous();
    (kind == tr::KvKind::kKey ? f.k_a : f.v_a) = A;
    (kind == tr::KvKind::kKey ? f.k_b : f.v_b) = B;
  }
  return f;
}

// waterfill: the full-rank random factors' channels fitted on 2048 random hidden states, widths
// allocated under `bits` per token, the kept channels' factors and codes.
void waterfill_factors(ev::LayerFactors& f, int64_t hidden, int64_t k_bits, int64_t v_bits) {
  const at::Tensor x = at::randn({2048, hidden});
  for (const tr::KvKind kind : {tr::KvKind::kKey, tr::KvKind::kValue}) {
    const bool key = kind == tr::KvKind::kKey;
    at::Tensor& A = key ? f.k_a : f.v_a;
    at::Tensor& B = key ? f.k_b : f.v_b;
    const auto curves = tr::fit_channels(at::mm(x, A));
    const auto bits = tr::allocate_bits(curves, key ? k_bits : v_bits);
    std::vector<int64_t> kept;
    std::vector<tr::ChannelCode>& codes = key ? f.k_codes : f.v_codes;
    for (size_t i = 0; i < bits.size(); ++i) {
      if (bits[i] == 0) continue;
      kept.push_back(static_cast<int64_t>(i));
      codes.push_back(curves[i].code[static_cast<size_t>(bits[i])]);
    }
    const at::Tensor idx = at::tensor(kept, at::kLong);
    A = A.index_select(1, idx).contiguous();
    B = B.index_select(0, idx).contiguous();
  }
}

// Fills every layer's cache with `tokens` tokens: x ~ N(0, 1) (a normalised hidden state), k and
// v its projections through the layer's weights, appended in blocks of 1024.
void fill(const cskv::model::LlamaModel& model, const std::vector<cskv::model::KvCache*>& caches,
          int64_t tokens) {
  const auto& c = model.config();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto w = model.layer_weights(l);
    while (caches[l]->size() < tokens) {
      const int64_t n = std::min<int64_t>(1024, tokens - caches[l]->size());
      const at::Tensor x = at::randn({n, c.hidden_size});
      const at::Tensor k =
          at::linear(x, w.k).view({n, c.num_key_value_heads, c.head_dim}).transpose(0, 1);
      const at::Tensor v =
          at::linear(x, w.v).view({n, c.num_key_value_heads, c.head_dim}).transpose(0, 1);
      caches[l]->append(x, k.contiguous(), v.contiguous());
    }
  }
}

// Median seconds per decode step over `steps` steps (after 2 warm-up steps).
double time_steps(const cskv::model::LlamaModel& model,
                  const std::vector<cskv::model::KvCache*>& caches, int64_t steps) {
  std::vector<double> t;
  for (int64_t s = 0; s < steps + 2; ++s) {
    const at::Tensor token = at::randint(0, model.config().vocab_size, {1, 1}, at::kLong);
    const auto t0 = Clock::now();
    model.forward_cached(token, caches);
    if (s >= 2) t.push_back(since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int64_t total_bytes(const std::vector<cskv::model::KvCache*>& caches) {
  int64_t b = 0;
  for (const auto* c : caches) b += c->bytes();
  return b;
}

}  // namespace

// The compressor the timing runs with: random factors at the densities' ranks (uniform), or the
// full basis with widths allocated under the uniform code's bits per token (waterfill).
ev::Compressor make_compressor(const Args& a, const cskv::model::ModelConfig& config,
                               const cskv::model::SafetensorsModel& weights, int64_t& k_bits,
                               int64_t& v_bits) {
  const int64_t d = config.kv_dim();
  const int64_t rk = tr::rank_from_density(a.k_density, config.head_dim, config.num_key_value_heads,
                                           "--k-density");
  const int64_t rv = tr::rank_from_density(a.v_density, config.head_dim, config.num_key_value_heads,
                                           "--v-density");
  ev::Compressor comp;
  comp.model_config_hash = config.hash();
  comp.quant.k_bits = comp.quant.v_bits = a.bits;
  comp.quant.window = a.window;
  at::manual_seed(0);
  // The uniform code's bits per compressed token (codes + scale/zero): the waterfill budget.
  const auto bits_of = [&](tr::KvKind kind, int64_t r) {
    const tr::QuantConfig q = tr::job_quant_config(comp.quant, config, {0, kind, r});
    return static_cast<int64_t>(tr::quant_bits_per_token(r, q));
  };
  k_bits = bits_of(tr::KvKind::kKey, rk);
  v_bits = bits_of(tr::KvKind::kValue, rv);
  const bool waterfill = a.quant == "waterfill";
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    comp.layers[l] = random_factors(weights, l, waterfill ? d : rk, waterfill ? d : rv, d);
    if (waterfill) waterfill_factors(comp.layers[l], config.hidden_size, k_bits, v_bits);
  }
  if (waterfill) comp.quant.quant = tr::QuantMode::kWaterfill;
  return comp;
}

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  cskv::set_compute_threads(a.threads);
  const at::NoGradGuard no_grad;
  cskv::model::ToyModelSpec spec;
  spec.hidden = a.hidden;
  spec.layers = a.layers;
  spec.heads = a.heads;
  spec.kv_heads = a.kv_heads;
  spec.intermediate = a.intermediate;
  spec.vocab = a.vocab;
  const std::string model_dir = a.dir + "/model";
  if (!fs::exists(model_dir + "/config.json") ||
      cskv::model::load_config(model_dir).hash() != cskv::model::toy_config(spec).hash()) {
    cskv::model::write_toy_model(spec, model_dir);
  }
  const auto config = cskv::model::load_config(model_dir);
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(model_dir));
  cskv::model::LlamaModel model(config, weights);
  model.keep_converted_layers(true);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) model.layer_weights(l);  // convert once

  int64_t k_bits = 0, v_bits = 0;
  const ev::Compressor comp = make_compressor(a, config, *weights, k_bits, v_bits);
  std::printf(
      "# model: hidden %lld, %lld layers, %lld heads / %lld kv heads of %lld (D %lld), "
      "intermediate %lld, vocab %lld, f16 weights computed in float32; %d thread(s)\n"
      "# compressor: r_k %lld, r_v %lld, %d bits, window %lld; fp16 storage; code %s (K %lld, V "
      "%lld bits per token)\n",
      (long long)config.hidden_size, (long long)config.num_hidden_layers,
      (long long)config.num_attention_heads, (long long)config.num_key_value_heads,
      (long long)config.head_dim, (long long)config.kv_dim(), (long long)config.intermediate_size,
      (long long)config.vocab_size, a.threads, (long long)comp.layers.at(0).r_k(),
      (long long)comp.layers.at(0).r_v(), a.bits, (long long)a.window, a.quant.c_str(),
      (long long)k_bits, (long long)v_bits);
  std::printf(
      "| context | fp16 cache ms/step | compressed ms/step | time ratio | key rebuild ms/layer | "
      "fp16 "
      "cache MiB | compressed MiB (formula) | memory ratio |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const int64_t T : a.contexts) {
    auto full = ev::make_full_caches(model, at::kHalf);
    for (auto& c : full) static_cast<cskv::model::FullKvCache*>(c.get())->reserve(T);
    auto comp_caches = ev::make_caches(comp, model, at::kHalf);
    fill(model, ev::raw(full), T);
    fill(model, ev::raw(comp_caches), T);
    const int64_t full_bytes = total_bytes(ev::raw(full));
    const int64_t comp_bytes = total_bytes(ev::raw(comp_caches));
    double formula = 0;
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      formula += ev::formula_layer_bytes(comp, config, l, T);
    }
    // The compressed cache's own cost: rebuilding one layer's keys from the latents.
    const auto [cos, sin] = model.rope_tables_cached(T);
    std::vector<double> rb;
    for (int i = 0; i < 5; ++i) {
      const auto t0 = Clock::now();
      comp_caches[0]->keys(cos, sin);
      rb.push_back(since(t0));
    }
    std::sort(rb.begin(), rb.end());
    const double t_full = time_steps(model, ev::raw(full), a.steps);
    const double t_comp = time_steps(model, ev::raw(comp_caches), a.steps);
    std::printf("| %lld | %.2f | %.2f | %.2fx | %.2f | %.3f | %.3f (%.3f) | %.2fx |\n",
                (long long)T, 1e3 * t_full, 1e3 * t_comp, t_comp / t_full, 1e3 * rb[2],
                full_bytes / 1048576.0, comp_bytes / 1048576.0, formula / 1048576.0,
                static_cast<double>(full_bytes) / static_cast<double>(comp_bytes));
    std::fflush(stdout);
  }
  return 0;
}
