// Llama-family forward: embedding, RMSNorm, RoPE (linear, dynamic NTK, llama3 or yarn scaling),
// causal GQA attention with optional q/k/v biases and sliding window, SiLU-gated MLP, final norm
// and (tied) lm_head.
#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "model/attention.h"

namespace cskv::model {

at::ScalarType default_compute_dtype(at::Device device) {
  return device.is_cuda() ? at::kBFloat16 : at::kFloat;
}

LlamaModel::LlamaModel(ModelConfig config, std::shared_ptr<const SafetensorsModel> weights,
                       at::ScalarType compute_dtype, at::Device device)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      compute_dtype_(compute_dtype),
      device_(device) {
  CSKV_CHECK(weights_ != nullptr, "LlamaModel: no weights given");
}

at::Tensor LlamaModel::weight(const std::string& name) const {
  const at::Tensor w = weights_->get(name);
  if (w.scalar_type() == compute_dtype_ && w.device() == device_) return w;
  return w.to(device_, compute_dtype_);
}

LayerWeights LlamaModel::layer_weights(int64_t layer) const {
  const bool keep = device_.is_cuda() || keep_converted_;
  if (keep) {
    auto it = device_cache_.find(layer);
    if (it != device_cache_.end()) return it->second;
  }
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  LayerWeights w;
  w.input_norm = weight(p + "input_layernorm.weight");
  w.q = weight(p + "self_attn.q_proj.weight");
  w.k = weight(p + "self_attn.k_proj.weight");
  w.v = weight(p + "self_attn.v_proj.weight");
  if (config_.attention_bias) {
    w.q_bias = weight(p + "self_attn.q_proj.bias");
    w.k_bias = weight(p + "self_attn.k_proj.bias");
    w.v_bias = weight(p + "self_attn.v_proj.bias");
  }
  w.o = weight(p + "self_attn.o_proj.weight");
  w.post_norm = weight(p + "post_attention_layernorm.weight");
  w.gate = weight(p + "mlp.gate_proj.weight");
  w.up = weight(p + "mlp.up_proj.weight");
  w.down = weight(p + "mlp.down_proj.weight");
  if (keep) device_cache_.emplace(layer, w);
  return w;
}

at::Tensor LlamaModel::rms_norm(const at::Tensor& x, const at::Tensor& w) const {
  const auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * at::rsqrt(var + config_.rms_norm_eps) * w;
}

namespace {

// HF _compute_llama3_parameters: low frequencies divided by factor, high ones kept, the band
// between interpolated smoothly.
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeScaling& r) {
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor;
  const double high_wavelen = old_len / r.high_freq_factor;
  const auto wavelen = 2 * M_PI / inv_freq;
  auto out = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
  const auto smooth =
      (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  const auto smoothed = (1 - smooth) * out / r.factor + smooth * out;
  const auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, out);
}

// HF _compute_yarn_parameters: a linear ramp over the dimension pairs between the correction
// dimensions of beta_fast and beta_slow blends interpolated and extrapolated frequencies.
at::Tensor yarn_inv_freq(const at::Tensor& pos_freqs, int64_t dim, double base,
                         const RopeScaling& r) {
  auto correction_dim = [&](double rotations) {
    return dim * std::log(r.original_max_position_embeddings / (rotations * 2 * M_PI)) /
           (2 * std::log(base));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const auto ramp = ((at::arange(dim / 2, pos_freqs.options()) - low) / (high - low)).clamp(0, 1);
  const auto extrapolation_factor = 1 - ramp;
  return (1.0 / (r.factor * pos_freqs)) * (1 - extrapolation_factor) +
         (1.0 / pos_freqs) * extrapolation_factor;
}

// HF _compute_dynamic_ntk_parameters with dynamic_rope_update: a forward over seq positions
// (HF's seq_len = max(position_ids) + 1) longer than max_position_embeddings m raises the base to
// base·(factor·seq/m − (factor − 1))^(dim/(dim − 2)); up to m the base is the original one.
double dynamic_ntk_base(const ModelConfig& c, int64_t seq) {
  const int64_t m = c.max_position_embeddings;
  if (seq <= m) return c.rope_theta;
  const double factor = c.rope_scaling.factor, dim = static_cast<double>(c.head_dim);
  return c.rope_theta *
         std::pow(factor * static_cast<double>(seq) / static_cast<double>(m) - (factor - 1),
                  dim / (dim - 2));
}

}  // namespace

std::pair<at::Tensor, at::Tensor> LlamaModel::rope_tables(int64_t seq) const {
  const int64_t hd = config_.head_dim;
  const RopeScaling& r = config_.rope_scaling;
  const double base = r.type == "dynamic" ? dynamic_ntk_base(config_, seq) : config_.rope_theta;
  // inv_freq_i = base^(-2i/hd), computed in float64 (HF computes in float32).
  const auto idx = at::arange(0, hd, 2, at::TensorOptions().dtype(at::kDouble));
  const auto pos_freqs = at::pow(base, idx / static_cast<double>(hd));
  at::Tensor inv_freq = 1.0 / pos_freqs;
  double attention_factor = 1.0;
  if (r.type == "llama3") {
    inv_freq = llama3_inv_freq(inv_freq, r);
  } else if (r.type == "yarn") {
    inv_freq = yarn_inv_freq(pos_freqs, hd, config_.rope_theta, r);
    attention_factor = r.attention_factor;
  }
  const auto pos =
      at::arange(seq, at::TensorOptions().dtype(at::kDouble)) / config_.rope_scaling_factor;
  const auto freqs = at::outer(pos, inv_freq);   // [seq, hd/2]
  const auto emb = at::cat({freqs, freqs}, -1);  // [seq, hd]
  return {(emb.cos() * attention_factor).to(device_, compute_dtype_),
          (emb.sin() * attention_factor).to(device_, compute_dtype_)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const auto x1 = x.narrow(-1, 0, half);
  const auto x2 = x.narrow(-1, half, half);
  const auto rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

at::Tensor LlamaModel::layer_forward(int64_t layer, const LayerWeights& w, const at::Tensor& h,
                                     const at::Tensor& cos, const at::Tensor& sin,
                                     const LayerHook& hook) const {
  const auto& c = config_;
  const int64_t batch = h.size(0), seq = h.size(1);
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;

  const at::Tensor x = rms_norm(h, w.input_norm);
  if (hook) hook(layer, x.reshape({batch * seq, c.hidden_size}).contiguous());

  auto proj = [&](const at::Tensor& weight, const at::Tensor& bias) {
    return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
  };
  auto q = proj(w.q, w.q_bias).view({batch, seq, nh, hd}).transpose(1, 2);
  auto k = proj(w.k, w.k_bias).view({batch, seq, nkv, hd}).transpose(1, 2);
  auto v = proj(w.v, w.v_bias).view({batch, seq, nkv, hd}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  // One sequence at a time (forward passes batch 1; an empty batch keeps its shape).
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) {
    rows.push_back(causal_attention(q[b], k[b], v[b], c.sliding_window).unsqueeze(0));
  }
  const auto attn = batch == 1   ? rows[0]
                    : batch == 0 ? at::empty({0, seq, nh * hd}, h.options())
                                 : at::cat(rows, 0);
  const auto h1 = h + at::linear(attn, w.o);

  const auto x2 = rms_norm(h1, w.post_norm);
  const auto gate = at::linear(x2, w.gate);
  const auto up = at::linear(x2, w.up);
  return h1 + at::linear(at::silu(gate) * up, w.down);
}

std::pair<at::Tensor, at::Tensor> LlamaModel::rope_tables_cached(int64_t seq) const {
  // Dynamic NTK: HF rotates each new key with the base of the length reached when it is appended
  // and keeps it rotated, so a cached key's rotation depends on the decoding history. The
  // compressed cache keeps keys before RoPE and rotates them again at every step with one table;
  // it can honour that only where the base is still the original one.
  const bool dynamic = config_.rope_scaling.type == "dynamic";
  const int64_t limit = config_.max_position_embeddings;
  CSKV_CHECK_INPUT(!dynamic || seq <= limit,
                   "rope_scaling type 'dynamic': cached decoding (LlamaModel::forward_cached, as "
                   "cskv eval decodes) over "
                       << seq << " positions is not supported beyond max_position_embeddings "
                       << limit
                       << ": dynamic NTK changes every frequency with the sequence length, and "
                          "the compressed cache rotates its keys again at each step with one "
                          "table; decode at most "
                       << limit << " positions, or run the one-shot forward");
  if (!rope_cos_.defined() || rope_cos_.size(0) < seq) {
    const int64_t have = rope_cos_.defined() ? rope_cos_.size(0) : 0;
    int64_t rows = std::max<int64_t>(seq, 2 * have);
    if (dynamic) rows = std::min(rows, limit);  // rows past the limit would rescale every row
    std::tie(rope_cos_, rope_sin_) = rope_tables(rows);
  }
  return {rope_cos_.narrow(0, 0, seq), rope_sin_.narrow(0, 0, seq)};
}

at::Tensor LlamaModel::layer_forward_cached(const LayerWeights& w, const at::Tensor& h,
                                            const at::Tensor& cos, const at::Tensor& sin,
                                            KvCache& cache) const {
  // A prefill (empty cache) runs layer_forward's ops in the same order (bitwise the same result);
  // later calls attend over the cache's keys and weighted values plus the new tokens' own.
  const auto& c = config_;
  const int64_t seq = h.size(1), past = cache.size();
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  CSKV_CHECK(h.dim() == 3 && h.size(0) == 1,
             "forward_cached: expected hidden states [1, n, H], found " << h.sizes());
  CSKV_CHECK(cos.size(0) >= past + seq, "forward_cached: RoPE tables of "
                                            << cos.size(0) << " positions, " << past + seq
                                            << " needed");

  const at::Tensor x = rms_norm(h, w.input_norm);
  auto proj = [&](const at::Tensor& weight, const at::Tensor& bias) {
    return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
  };
  auto q = proj(w.q, w.q_bias).view({1, seq, nh, hd}).transpose(1, 2);
  auto k = proj(w.k, w.k_bias).view({1, seq, nkv, hd}).transpose(1, 2);
  auto v = proj(w.v, w.v_bias).view({1, seq, nkv, hd}).transpose(1, 2);
  const at::Tensor cos_new = cos.narrow(0, past, seq), sin_new = sin.narrow(0, past, seq);
  q = apply_rope(q, cos_new, sin_new);
  k = apply_rope(k, cos_new, sin_new);
  at::Tensor attn;
  if (past == 0) {  // a prefill: exactly layer_forward's attention
    attn = causal_attention(q[0], k[0], v[0], c.sliding_window).unsqueeze(0);
  } else {
    // Query heads grouped by their kv head ([n_kv, group·seq, hd]), so no key or value is
    // copied per query head; the cached tokens' scores and values come from the cache.
    const int64_t group = nh / nkv;
    const at::Tensor qg = q[0].reshape({nkv, group * seq, hd});
    const double norm = std::sqrt(static_cast<double>(hd));
    const at::Tensor k_old = cache.keys(cos.narrow(0, 0, past), sin.narrow(0, 0, past));
    at::Tensor scores =
        at::cat({at::matmul(qg, k_old.transpose(-2, -1)), at::matmul(qg, k[0].transpose(-2, -1))},
                -1) /
        norm;  // [n_kv, group·seq, past + seq]
    const auto opts = at::TensorOptions().dtype(at::kLong).device(device_);
    const auto qi = at::arange(past, past + seq, opts).unsqueeze(1);
    const auto kj = at::arange(past + seq, opts).unsqueeze(0);
    auto hidden = kj > qi;
    if (c.sliding_window > 0) hidden = hidden.logical_or(qi - kj >= c.sliding_window);
    scores = scores.view({nkv, group, seq, past + seq})
                 .masked_fill(hidden, -std::numeric_limits<double>::infinity());
    const at::Tensor probs = at::softmax(scores, -1).view({nkv, group * seq, past + seq});
    const at::Tensor out = cache.weighted_values(probs.narrow(-1, 0, past)) +
                           at::matmul(probs.narrow(-1, past, seq), v[0]);
    attn = out.view({nh, seq, hd}).transpose(0, 1).reshape({1, seq, nh * hd});
  }
  const auto h1 = h + at::linear(attn, w.o);

  cache.append(x.reshape({seq, c.hidden_size}), k[0], v[0]);

  const auto x2 = rms_norm(h1, w.post_norm);
  const auto gate = at::linear(x2, w.gate);
  const auto up = at::linear(x2, w.up);
  return h1 + at::linear(at::silu(gate) * up, w.down);
}

at::Tensor LlamaModel::forward_cached(const at::Tensor& tokens, const std::vector<KvCache*>& caches,
                                      int64_t logits_from) const {
  const auto& c = config_;
  CSKV_CHECK_INPUT(tokens.dim() == 2 && tokens.size(0) == 1 && tokens.size(1) > 0 &&
                       tokens.scalar_type() == at::kLong,
                   "forward_cached: expected int64 tokens [1, n] with n >= 1, found "
                       << tokens.scalar_type() << " " << tokens.sizes());
  CSKV_CHECK(
      logits_from >= 0 && logits_from <= tokens.size(1),
      "forward_cached: logits_from " << logits_from << " outside [0, " << tokens.size(1) << "]");
  CSKV_CHECK(static_cast<int64_t>(caches.size()) == c.num_hidden_layers,
             "forward_cached: " << caches.size() << " caches given, the model has "
                                << c.num_hidden_layers << " layers");
  const int64_t past = caches.front()->size();
  for (size_t l = 0; l < caches.size(); ++l) {
    CSKV_CHECK(caches[l]->size() == past, "forward_cached: layer "
                                              << l << "'s cache holds " << caches[l]->size()
                                              << " tokens, layer 0's " << past);
  }
  const int64_t max_id = tokens.max().item<int64_t>(), min_id = tokens.min().item<int64_t>();
  CSKV_CHECK_INPUT(min_id >= 0 && max_id < c.vocab_size, "forward_cached: token id "
                                                             << (min_id < 0 ? min_id : max_id)
                                                             << " outside the vocabulary [0, "
                                                             << c.vocab_size << ")");
  const at::Tensor embed = weights_->get("model.embed_tokens.weight");
  at::Tensor h =
      embed.index_select(0, tokens.reshape({-1}).to(embed.device())).to(device_, compute_dtype_);
  h = h.view({1, tokens.size(1), c.hidden_size});
  const auto [cos, sin] = rope_tables_cached(past + tokens.size(1));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    h = layer_forward_cached(layer_weights(l), h, cos, sin, *caches[static_cast<size_t>(l)]);
  }
  at::Tensor norm_w = final_norm_, head_w = lm_head_;
  if (!head_w.defined()) {
    norm_w = weight("model.norm.weight");
    head_w = weight(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    if (keep_converted_ || device_.is_cuda()) {
      final_norm_ = norm_w;
      lm_head_ = head_w;
    }
  }
  return at::linear(rms_norm(h.narrow(1, logits_from, h.size(1) - logits_from), norm_w), head_w);
}

at::Tensor LlamaModel::forward(const at::Tensor& tokens, const LayerHook& hook,
                               const ForwardOptions& options) const {
  const auto& c = config_;
  CSKV_CHECK_INPUT(
      tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
      "forward: expected int64 tokens [batch, seq], found " << tokens.dim() << "-d tensor");
  const int64_t last = options.last_layer < 0 ? c.num_hidden_layers - 1 : options.last_layer;
  CSKV_CHECK_INPUT(last < c.num_hidden_layers, "forward: layer "
                                                   << last << " requested, the model has "
                                                   << c.num_hidden_layers << " layers");
  CSKV_CHECK(
      options.logits_from >= 0 && options.logits_from <= tokens.size(1),
      "forward: logits_from " << options.logits_from << " outside [0, " << tokens.size(1) << "]");
  if (tokens.numel() > 0) {
    const int64_t max_id = tokens.max().item<int64_t>();
    const int64_t min_id = tokens.min().item<int64_t>();
    CSKV_CHECK_INPUT(min_id >= 0 && max_id < c.vocab_size,
                     "forward: token id " << (min_id < 0 ? min_id : max_id)
                                          << " outside the vocabulary [0, " << c.vocab_size << ")");
  }
  // Embedding lookup touches only the rows it needs, in the checkpoint dtype.
  const at::Tensor embed = weights_->get("model.embed_tokens.weight");
  at::Tensor h =
      embed.index_select(0, tokens.reshape({-1}).to(embed.device())).to(device_, compute_dtype_);
  h = h.view({tokens.size(0), tokens.size(1), c.hidden_size});
  const auto [cos, sin] = rope_tables(tokens.size(1));
  // Every op runs on one sequence at a time. With batched shapes a row's result would depend on
  // how many sequences share the batch: OpenBLAS picks its small-matrix sgemm kernels by M*N*K,
  // and ATen's vectorised elementwise loops (silu, exp) finish a tensor's tail in scalar code.
  // Per-sequence shapes make the logits and every hook call bitwise independent of the batch.
  const int64_t batch = tokens.size(0);
  std::vector<at::Tensor> hs;
  for (int64_t b = 0; b < batch; ++b) hs.push_back(h.narrow(0, b, 1));
  if (hs.empty()) hs.push_back(h);  // an empty batch keeps its shape
  for (int64_t l = 0; l <= last; ++l) {
    const LayerWeights w = layer_weights(l);  // converted once per layer, shared by sequences
    if (hs.size() == 1) {
      hs[0] = layer_forward(l, w, hs[0], cos, sin, hook);
      continue;
    }
    std::vector<at::Tensor> xs;
    LayerHook collect;
    if (hook) collect = [&xs](int64_t, const at::Tensor& x) { xs.push_back(x); };
    for (auto& hb : hs) hb = layer_forward(l, w, hb, cos, sin, collect);
    if (hook) hook(l, at::cat(xs, 0));  // rows of sequence 0, then 1, ... as documented
  }
  if (options.last_layer >= 0) return {};
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  const at::Tensor head_w = weight(head);
  std::vector<at::Tensor> logits;
  const at::Tensor norm_w = weight("model.norm.weight");
  const int64_t from = options.logits_from, kept = tokens.size(1) - from;
  for (const auto& hb : hs) {
    logits.push_back(at::linear(rms_norm(hb.narrow(1, from, kept), norm_w), head_w));
  }
  return logits.size() == 1 ? logits[0] : at::cat(logits, 0);
}

}  // namespace cskv::model
