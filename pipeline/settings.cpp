// The capture and train setting rows with their bindings to the stage options, the checks the
// tables share, and the dtype vocabulary of every subcommand.
#include "pipeline/settings.h"

#include <filesystem>

#include "common/device.h"
#include "common/error.h"
#include "data/activation_shard.h"
#include "data/token_source.h"
#include "trainer/init.h"

namespace cskv::pipeline {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using T = SettingType;

void check_bits(const json& v, const std::string& flag) {
  const int b = v.get<int>();
  CSKV_CHECK_USAGE(b == 2 || b == 3 || b == 4 || b == 8 || b == 16,
                   "--" << flag << ": expected one of 2, 3, 4, 8, 16, found " << b);
}

void check_budget(const json& v, const std::string& flag) {
  const double b = v.get<double>();
  CSKV_CHECK_USAGE(b >= 0 && b <= 1,
                   "--" << flag << ": expected a value in (0, 1] (or 0 = off), found " << b);
}

data::ActivationDtype capture_dtype(const json& v, const std::string& flag) {
  const FloatDtype d =
      float_dtype_setting(flag, v.get<std::string>(), {FloatDtype::kF32, FloatDtype::kF16});
  return d == FloatDtype::kF32 ? data::ActivationDtype::kFloat32 : data::ActivationDtype::kFloat16;
}

// An input path as the capture identity records it: absolute, or "" when not given.
json absolute_or_empty(const std::string& path) {
  return path.empty() ? "" : fs::absolute(path).string();
}

using C = CaptureOptions;
using Tr = TrainRunOptions;

BoundTable<C> capture_input_rows() {
  return {
      {{"input", "tokens", T::kString, "", "Flat little-endian token file", {}, true},
       [](C& o, const json& v) { o.tokens_path = v.get<std::string>(); },
       [](const C& o) { return absolute_or_empty(o.tokens_path); }},
      {{"input", "token-dtype", T::kString, "u16", "Width of --tokens ids: u16|u32",
        [](const json& v, const std::string&) { data::parse_token_dtype(v.get<std::string>()); },
        true},
       [](C& o, const json& v) { o.token_dtype = data::parse_token_dtype(v.get<std::string>()); },
       [](const C& o) { return json(data::token_dtype_name(o.token_dtype)); }},
      {{"input",
        "text",
        T::kString,
        "",
        "UTF-8 text file to tokenize instead of --tokens",
        {},
        true},
       [](C& o, const json& v) { o.text_path = v.get<std::string>(); },
       [](const C& o) { return absolute_or_empty(o.text_path); }},
      {{"input",
        "tokenizer",
        T::kString,
        "",
        "SentencePiece .model or tokenizer.json for --text",
        {},
        true},
       [](C& o, const json& v) { o.tokenizer_path = v.get<std::string>(); },
       [](const C& o) { return absolute_or_empty(o.tokenizer_path); }},
      {{"input", "text-docs", T::kString, "blank-lines",
        "How --text and --holdout-text split into documents, each tokenized on its own with the "
        "tokenizer's BOS at its start: blank-lines (separated by blank lines) | lines (one per "
        "line) | whole (the file is one document)",
        [](const json& v, const std::string& f) { data::parse_text_docs(v.get<std::string>(), f); },
        true},
       [](C& o, const json& v) { o.text_docs = data::parse_text_docs(v.get<std::string>()); },
       // Recorded only when a text is tokenized into documents: a --tokens capture and one of the
       // whole file (what --text did before documents) keep the identity they had.
       [](const C& o) {
         const bool text = !o.text_path.empty() || !o.holdout_text_path.empty();
         return !text || o.text_docs == data::TextDocs::kWhole
                    ? json()
                    : json(data::text_docs_name(o.text_docs));
       }},
      {{"input",
        "holdout-tokens",
        T::kString,
        "",
        "Separate token file (same --token-dtype) for the held-out sequences: its first "
        "--holdout-seqs chunks (default: the end of the training stream, never sampled for "
        "training)",
        {},
        true},
       [](C& o, const json& v) { o.holdout_tokens_path = v.get<std::string>(); },
       [](const C& o) { return absolute_or_empty(o.holdout_tokens_path); }},
      {{"input",
        "holdout-text",
        T::kString,
        "",
        "Separate UTF-8 text file, tokenized with --tokenizer, for the held-out sequences",
        {},
        true},
       [](C& o, const json& v) { o.holdout_text_path = v.get<std::string>(); },
       [](const C& o) { return absolute_or_empty(o.holdout_text_path); }},
  };
}

BoundTable<C> capture_sampling_rows() {
  return {
      {{"sampling", "num-seqs", T::kInt64, "256", "Training sequences", in_range(1, kMaxSequences),
        true},
       [](C& o, const json& v) { o.num_seqs = v.get<int64_t>(); },
       [](const C& o) { return json(o.num_seqs); }},
      {{"sampling", "seq-len", T::kInt64, "2048", "Tokens per sequence",
        in_range(2, kMaxTokensPerSequence), true},
       [](C& o, const json& v) { o.seq_len = v.get<int64_t>(); },
       [](const C& o) { return json(o.seq_len); }},
      {{"sampling", "holdout-seqs", T::kInt64, "16",
        "Held-out sequences for evaluation (stored apart, not in the statistics)",
        in_range(0, kMaxSequences), true},
       [](C& o, const json& v) { o.holdout_seqs = v.get<int64_t>(); },
       [](const C& o) { return json(o.holdout_seqs); }},
      {{"sampling", "sampling", T::kString, "random",
        "random (uniform offsets, the paper's way) | contiguous (chunks 0, L, 2L, ...)",
        [](const json& v, const std::string&) { data::parse_sampling(v.get<std::string>()); },
        true},
       [](C& o, const json& v) { o.sampling = data::parse_sampling(v.get<std::string>()); },
       [](const C& o) {
         return json(o.sampling == data::Sampling::kRandom ? "random" : "contiguous");
       }},
  };
}

BoundTable<C> capture_compute_rows() {
  return {
      {{"capture", "dtype", T::kString, "fp16",
        "Stored activation dtype: f32|f16 (also fp32, float32, float, fp16, float16, half)",
        [](const json& v, const std::string& f) { capture_dtype(v, f); }, true},
       [](C& o, const json& v) { o.dtype = capture_dtype(v, "dtype"); },
       [](const C& o) { return json(data::activation_dtype_name(o.dtype)); }},
      {{"capture", "batch", T::kInt64, "1", "Sequences per forward pass", in_range(1, 4096)},
       [](C& o, const json& v) { o.batch = v.get<int64_t>(); },
       [](const C& o) { return json(o.batch); }},
      {device_setting("capture"), [](C& o, const json& v) { o.device = v.get<std::string>(); },
       [](const C& o) { return json(o.device); }},
  };
}

}  // namespace

const BoundTable<CaptureOptions>& capture_bound_settings() {
  static const BoundTable<C> table = [] {
    BoundTable<C> t = capture_input_rows();
    for (auto* part : {capture_sampling_rows, capture_compute_rows}) {
      for (auto& row : part()) t.push_back(std::move(row));
    }
    return t;
  }();
  return table;
}

namespace {

BoundTable<Tr> train_rank_rows() {
  return {
      {{"ranks", "k-density", T::kDouble, "0.5",
        "Key latent width as a share of D: r = floor(density*hd)*n_kv", number_in(0, 1, true)},
       [](Tr& o, const json& v) { o.k_density = v.get<double>(); },
       [](const Tr& o) { return json(o.k_density); }},
      {{"ranks", "v-density", T::kDouble, "0.5", "Value latent width (same rule)",
        number_in(0, 1, true)},
       [](Tr& o, const json& v) { o.v_density = v.get<double>(); },
       [](const Tr& o) { return json(o.v_density); }},
      {{"ranks", "budget", T::kDouble, "0",
        "Instead of densities: keep this share of the total K+V width, allocated per layer by "
        "greedy marginal eigenvalue gain (0 = off)",
        check_budget},
       [](Tr& o, const json& v) { o.budget = v.get<double>(); },
       [](const Tr& o) { return json(o.budget); }},
      {{"ranks", "rank-multiple", T::kInt64, "0", "Budget granularity in channels (0 = n_kv*8)",
        in_range(0, kMaxChannels)},
       [](Tr& o, const json& v) { o.rank_multiple = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.rank_multiple); }},
  };
}

BoundTable<Tr> train_init_rows() {
  return {
      {{"init", "init", T::kString, "pca",
        "Initialisation: pca (exact 16-bit optimum) | asvd | svd",
        [](const json& v, const std::string&) {
          trainer::parse_init_method(v.get<std::string>());
        }},
       [](Tr& o, const json& v) { o.cfg.init = trainer::parse_init_method(v.get<std::string>()); },
       [](const Tr& o) { return json(trainer::init_method_name(o.cfg.init)); }},
      {{"init", "asvd-alpha", T::kDouble, "0.5", "ASVD exponent alpha of S = diag(mean|x|^alpha)",
        number_in(0, 4, false)},
       [](Tr& o, const json& v) { o.cfg.asvd_alpha = v.get<double>(); },
       [](const Tr& o) { return json(o.cfg.asvd_alpha); }},
      {{"init", "rotate", T::kString, "none",
        "Latent rotation: none | hadamard (seeded randomized Hadamard)",
        one_of({"none", "hadamard"})},
       [](Tr& o, const json& v) { o.cfg.rotate_hadamard = v.get<std::string>() == "hadamard"; },
       [](const Tr& o) { return json(o.cfg.rotate_hadamard ? "hadamard" : "none"); },
       "rotation"},
  };
}

BoundTable<Tr> train_quantization_rows() {
  return {
      {{"quantization", "k-bits", T::kInt, "16", "Key latent bits: 2|3|4|8|16 (16 = off)",
        check_bits},
       [](Tr& o, const json& v) { o.cfg.k_bits = v.get<int>(); },
       [](const Tr& o) { return json(o.cfg.k_bits); }},
      {{"quantization", "v-bits", T::kInt, "16", "Value latent bits: 2|3|4|8|16", check_bits},
       [](Tr& o, const json& v) { o.cfg.v_bits = v.get<int>(); },
       [](const Tr& o) { return json(o.cfg.v_bits); }},
      {{"quantization", "group-size", T::kInt64, "0",
        "Latent channels per quantization group (0 = r/n_kv)", in_range(0, kMaxChannels)},
       [](Tr& o, const json& v) { o.cfg.group_size = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.group_size); }},
      {{"quantization", "window", T::kInt64, "32",
        "Full-precision recent window; keys are quantized per channel over groups of this many "
        "tokens (0 = per-token key groups, no window)",
        in_range(0, kMaxTokensPerSequence)},
       [](Tr& o, const json& v) { o.cfg.window = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.window); }},
      {{"quantization", "quant-compat", T::kString, "none",
        "none | cskv (reference code: zero point clamped to [0, 2^b-1])", one_of({"none", "cskv"})},
       [](Tr& o, const json& v) { o.cfg.quant_compat_cskv = v.get<std::string>() == "cskv"; },
       [](const Tr& o) { return json(o.cfg.quant_compat_cskv ? "cskv" : "none"); }},
  };
}

// The waterfill rows leave the identity of a uniform run as it was (null: no key), so
// checkpoints written before them still resume.
BoundTable<Tr> train_waterfill_rows() {
  const auto bits_per_token = [](const char* kind) {
    return std::string("waterfill: bits per token of every ") + kind +
           " latent, allocated over its PCA channels (0 = off)";
  };
  return {
      {{"quantization", "quant", T::kString, "uniform",
        "Latent code: uniform (r channels at --k/v-bits, min-max groups; the paper's) | waterfill "
        "(every PCA channel at its own width 0..8 with a static range, under "
        "--k/v-bits-per-token or --cache-budget; densities do not apply)",
        one_of({"uniform", "waterfill"})},
       [](Tr& o, const json& v) { o.cfg.quant = trainer::parse_quant_mode(v.get<std::string>()); },
       [](const Tr& o) {
         return o.cfg.quant == trainer::QuantMode::kUniform
                    ? json()
                    : json(trainer::quant_mode_name(o.cfg.quant));
       }},
      {{"quantization", "k-bits-per-token", T::kInt64, "0", bits_per_token("key"),
        in_range(0, 8 * kMaxChannels)},
       [](Tr& o, const json& v) { o.cfg.k_bits_per_token = v.get<int64_t>(); },
       [](const Tr& o) { return o.cfg.k_bits_per_token ? json(o.cfg.k_bits_per_token) : json(); }},
      {{"quantization", "v-bits-per-token", T::kInt64, "0", bits_per_token("value"),
        in_range(0, 8 * kMaxChannels)},
       [](Tr& o, const json& v) { o.cfg.v_bits_per_token = v.get<int64_t>(); },
       [](const Tr& o) { return o.cfg.v_bits_per_token ? json(o.cfg.v_bits_per_token) : json(); }},
      {{"quantization", "cache-budget", T::kDouble, "0",
        "waterfill: one budget over every layer's K and V as a share of their fp16 bytes per "
        "token (0.1 = 10x smaller), allocated to minimise the summed relative error (0 = off)",
        check_budget},
       [](Tr& o, const json& v) { o.cfg.cache_budget = v.get<double>(); },
       [](const Tr& o) { return o.cfg.cache_budget > 0 ? json(o.cfg.cache_budget) : json(); }},
  };
}

BoundTable<Tr> train_optimizer_rows() {
  return {
      {{"optimizer", "lr", T::kDouble, "5e-05", "AdamW learning rate (linear decay)",
        number_in(0, 1, true)},
       [](Tr& o, const json& v) { o.cfg.lr = v.get<double>(); },
       [](const Tr& o) { return json(o.cfg.lr); }},
      {{"optimizer", "warmup", T::kInt64, "0", "Linear warmup steps", in_range(0, kMaxSteps)},
       [](Tr& o, const json& v) { o.cfg.warmup = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.warmup); }},
      {{"optimizer", "steps", T::kInt64, "0",
        "Optimizer steps per job (0 = --epochs passes over the training split)",
        in_range(0, kMaxSteps)},
       [](Tr& o, const json& v) { o.cfg.steps = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.steps); }},
      {{"optimizer", "epochs", T::kInt64, "1", "Passes over the training split when --steps is 0",
        in_range(1, kMaxEpochs)},
       [](Tr& o, const json& v) { o.cfg.epochs = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.epochs); }},
      {{"optimizer", "batch-tokens", T::kInt64, "4096", "Tokens per optimizer step",
        in_range(1, int64_t{1} << 30)},
       [](Tr& o, const json& v) { o.cfg.batch_tokens = v.get<int64_t>(); },
       [](const Tr& o) { return json(o.cfg.batch_tokens); }},
  };
}

// The device and the matmul precision decide the numbers (identity); residency does not.
BoundTable<Tr> train_device_rows() {
  return {
      {device_setting("device"), [](Tr& o, const json& v) { o.device = v.get<std::string>(); },
       [](const Tr& o) { return json(o.device); }},
      {{"device", "precision", T::kString, "fp32",
        "Matmul precision of the training step and the errors: fp32 | tf32 (CUDA tensor cores) "
        "| bf16 (bf16 operands, float32 accumulation)",
        one_of({"fp32", "tf32", "bf16"})},
       [](Tr& o, const json& v) {
         o.cfg.precision = device::parse_precision(v.get<std::string>());
       },
       [](const Tr& o) { return json(device::precision_name(o.cfg.precision)); }},
      {{"device", "resident", T::kString, "auto",
        "Hold a layer's activations in device memory (read once, shared by its K and V job, "
        "every epoch from there): auto (on CUDA when they fit in --resident-share of the free "
        "GPU memory) | on | off (stream from the shards every epoch)",
        one_of({"auto", "on", "off"})},
       [](Tr& o, const json& v) { o.resident = trainer::parse_residency(v.get<std::string>()); },
       {}},
      {{"device", "resident-share", T::kDouble, "0.5",
        "Share of the device's free memory --resident auto may fill", number_in(0, 1, true)},
       [](Tr& o, const json& v) { o.resident_share = v.get<double>(); },
       {}},
  };
}

// Not part of the identity: they decide when state is saved and where the numbers are stated,
// not the numbers (dp = 1, the default, gives the same numbers on any number of ranks).
BoundTable<Tr> train_checkpoint_rows() {
  return {
      {{"checkpoints", "save-every", T::kInt64, "500",
        "Checkpoint every this many optimizer steps (of any rank; also when a job finishes and "
        "on SIGTERM/SIGUSR1/SIGINT); 0 = only then",
        in_range(0, kMaxSteps)},
       [](Tr& o, const json& v) { o.save_every = v.get<int64_t>(); },
       {}},
      {{"checkpoints", "keep", T::kInt64, "2", "Complete checkpoint steps to keep",
        in_range(1, 1000)},
       [](Tr& o, const json& v) { o.keep = v.get<int64_t>(); },
       {}},
      {{"checkpoints", "dp", T::kInt, "0",
        "Ranks per job (data parallelism inside a job: batch slices, gradient allreduce); 0 = "
        "auto: 1, or ranks/jobs when there are more ranks than jobs",
        in_range(0, kMaxRanks)},
       [](Tr& o, const json& v) { o.dp = v.get<int>(); },
       {}},
      {{"output", "context", T::kInt64, "4096", "Context length the memory accounting is stated at",
        in_range(1, kMaxMemoryContext)},
       [](Tr& o, const json& v) { o.context = v.get<int64_t>(); },
       {}},
  };
}

}  // namespace

const BoundTable<TrainRunOptions>& train_bound_settings() {
  static const BoundTable<Tr> table = [] {
    BoundTable<Tr> t = train_rank_rows();
    for (auto* part : {train_init_rows, train_quantization_rows, train_waterfill_rows,
                       train_optimizer_rows, train_device_rows, train_checkpoint_rows}) {
      for (auto& row : part()) t.push_back(std::move(row));
    }
    return t;
  }();
  return table;
}

Setting device_setting(const std::string& group) {
  return {group,
          "device",
          T::kString,
          "cpu",
          "Compute device: cpu | cuda (GPU <local rank mod visible GPUs>; capture computes in "
          "bfloat16 there, train in --precision; needs a build with CUDA)",
          one_of({"cpu", "cuda"})};
}

SettingCheck one_of(std::vector<std::string> choices) {
  return [choices](const json& value, const std::string& flag) {
    const auto v = value.get<std::string>();
    std::string list;
    for (const auto& c : choices) {
      if (v == c) return;
      list += (list.empty() ? "" : "|") + c;
    }
    CSKV_FAIL_USAGE("--" << flag << ": expected " << list << ", found '" << v << "'");
  };
}

SettingCheck in_range(int64_t lo, int64_t hi) {
  return [lo, hi](const json& value, const std::string& flag) {
    const auto v = value.get<int64_t>();
    CSKV_CHECK_USAGE(v >= lo && v <= hi, "--" << flag << ": expected an integer in [" << lo << ", "
                                              << hi << "], found " << v);
  };
}

SettingCheck number_in(double lo, double hi, bool lo_open) {
  return [lo, hi, lo_open](const json& value, const std::string& flag) {
    const double v = value.get<double>();
    CSKV_CHECK_USAGE((lo_open ? v > lo : v >= lo) && v <= hi,
                     "--" << flag << ": expected a value in " << (lo_open ? "(" : "[") << lo << ", "
                          << hi << "], found " << v);
  };
}

std::optional<FloatDtype> parse_float_dtype(const std::string& text) {
  if (text == "f32" || text == "fp32" || text == "float32" || text == "float") {
    return FloatDtype::kF32;
  }
  if (text == "f16" || text == "fp16" || text == "float16" || text == "half") {
    return FloatDtype::kF16;
  }
  if (text == "bf16" || text == "bfloat16") return FloatDtype::kBF16;
  return std::nullopt;
}

const char* float_dtype_name(FloatDtype dtype) {
  switch (dtype) {
    case FloatDtype::kF32:
      return "f32";
    case FloatDtype::kF16:
      return "f16";
    case FloatDtype::kBF16:
      return "bf16";
  }
  return "?";
}

FloatDtype float_dtype_setting(const std::string& flag, const std::string& text,
                               const std::vector<FloatDtype>& allowed) {
  const auto dtype = parse_float_dtype(text);
  std::string list;
  for (const FloatDtype d : allowed) {
    if (dtype == d) return d;
    list += (list.empty() ? "" : "|") + std::string(float_dtype_name(d));
  }
  CSKV_FAIL_USAGE("--" << flag << ": expected " << list << ", found '" << text << "'");
}

}  // namespace cskv::pipeline
