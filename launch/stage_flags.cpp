// The stage flags: declarations (help texts, defaults) and their validated conversion.
#include "launch/stage_flags.h"

#include <sstream>

#include "common/error.h"
#include "launch/cli.h"
#include "model/config.h"

namespace cskv::cli {

namespace {
std::vector<int64_t> parse_contexts(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CSKV_CHECK_USAGE(used == item.size() && !item.empty() && v >= 1,
                     "--memory-contexts: expected comma-separated token counts >= 1, found '"
                         << item << "' in '" << text << "'");
    out.push_back(v);
  }
  CSKV_CHECK_USAGE(!out.empty(), "--memory-contexts: expected at least one token count");
  return out;
}

int parse_bits(const cxxopts::ParseResult& r, const std::string& flag) {
  const int b = r[flag].as<int>();
  CSKV_CHECK_USAGE(b == 2 || b == 3 || b == 4 || b == 8 || b == 16,
                   "--" << flag << ": expected one of 2, 3, 4, 8, 16, found " << b);
  return b;
}

std::vector<int64_t> layers_flag(const cxxopts::ParseResult& r, const std::string& model_dir) {
  const std::string spec = r["layers"].as<std::string>();
  if (spec == "all") return {};
  const auto config = model::load_config(model_dir);
  return pipeline::parse_layer_list(spec, config.num_hidden_layers);
}
}  // namespace

void add_capture_flags(cxxopts::Options& options) {
  options.add_options("input")("tokens", "Flat little-endian token file",
                               cxxopts::value<std::string>()->default_value(""))(
      "token-dtype", "Width of --tokens ids: u16|u32",
      cxxopts::value<std::string>()->default_value("u16"))(
      "text", "UTF-8 text file to tokenize instead of --tokens",
      cxxopts::value<std::string>()->default_value(""))(
      "tokenizer", "SentencePiece tokenizer.model for --text",
      cxxopts::value<std::string>()->default_value(""));
  options.add_options("sampling")("num-seqs", "Training sequences",
                                  cxxopts::value<int64_t>()->default_value("256"))(
      "seq-len", "Tokens per sequence", cxxopts::value<int64_t>()->default_value("2048"))(
      "holdout-seqs", "Held-out sequences for evaluation (stored apart, not in the statistics)",
      cxxopts::value<int64_t>()->default_value("16"))(
      "sampling", "random (uniform offsets, the paper's way) | contiguous (chunks 0, L, 2L, ...)",
      cxxopts::value<std::string>()->default_value("random"));
  options.add_options("capture")("dtype", "Stored activation dtype: fp16|fp32",
                                 cxxopts::value<std::string>()->default_value("fp16"))(
      "batch", "Sequences per forward pass", cxxopts::value<int64_t>()->default_value("1"))(
      "device",
      "cpu (float32 compute) | cuda (bfloat16 compute on GPU <local rank mod GPUs>; needs a "
      "LibTorch with CUDA)",
      cxxopts::value<std::string>()->default_value("cpu"));
}

pipeline::CaptureOptions capture_options(const cxxopts::ParseResult& r, const std::string& seed_flag) {
  pipeline::CaptureOptions o;
  o.model_dir = required<std::string>(r, "model");
  o.tokens_path = r["tokens"].as<std::string>();
  o.text_path = r["text"].as<std::string>();
  o.tokenizer_path = r["tokenizer"].as<std::string>();
  o.token_dtype = data::parse_token_dtype(r["token-dtype"].as<std::string>());
  o.num_seqs = r["num-seqs"].as<int64_t>();
  o.seq_len = r["seq-len"].as<int64_t>();
  o.holdout_seqs = r["holdout-seqs"].as<int64_t>();
  o.sampling = data::parse_sampling(r["sampling"].as<std::string>());
  o.seed = r[seed_flag].as<uint64_t>();
  o.dtype = data::parse_activation_dtype(r["dtype"].as<std::string>());
  o.batch = r["batch"].as<int64_t>();
  o.device = r["device"].as<std::string>();
  const auto config = model::load_config(o.model_dir);
  o.layers = pipeline::parse_layer_list(r["layers"].as<std::string>(), config.num_hidden_layers);
  return o;
}

void add_train_flags(cxxopts::Options& options) {
  options.add_options("ranks")("k-density",
                               "Key latent width as a share of D: r = floor(density*hd)*n_kv",
                               cxxopts::value<double>()->default_value("0.5"))(
      "v-density", "Value latent width (same rule)",
      cxxopts::value<double>()->default_value("0.5"))(
      "budget",
      "Instead of densities: keep this share of the total K+V width, allocated per layer by "
      "greedy marginal eigenvalue gain (0 = off)",
      cxxopts::value<double>()->default_value("0"))("rank-multiple",
                                                    "Budget granularity in channels (0 = n_kv*8)",
                                                    cxxopts::value<int64_t>()->default_value("0"));
  options.add_options("init")("init", "Initialisation: pca (exact 16-bit optimum) | asvd | svd",
                              cxxopts::value<std::string>()->default_value("pca"))(
      "asvd-alpha", "ASVD exponent alpha of S = diag(mean|x|^alpha)",
      cxxopts::value<double>()->default_value("0.5"))(
      "rotate", "Latent rotation: none | hadamard (seeded randomized Hadamard)",
      cxxopts::value<std::string>()->default_value("none"));
  options.add_options("quantization")("k-bits", "Key latent bits: 2|3|4|8|16 (16 = off)",
                                      cxxopts::value<int>()->default_value("16"))(
      "v-bits", "Value latent bits: 2|3|4|8|16", cxxopts::value<int>()->default_value("16"))(
      "group-size", "Latent channels per quantization group (0 = r/n_kv)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "window",
      "Full-precision recent window; keys are quantized per channel over groups of this many "
      "tokens (0 = per-token key groups, no window)",
      cxxopts::value<int64_t>()->default_value("32"))(
      "quant-compat", "none | cskv (reference code: zero point clamped to [0, 2^b-1])",
      cxxopts::value<std::string>()->default_value("none"));
  options.add_options("optimizer")("lr", "AdamW learning rate (linear decay)",
                                   cxxopts::value<double>()->default_value("5e-05"))(
      "warmup", "Linear warmup steps", cxxopts::value<int64_t>()->default_value("0"))(
      "steps", "Optimizer steps per job (0 = --epochs passes over the training split)",
      cxxopts::value<int64_t>()->default_value("0"))(
      "epochs", "Passes over the training split when --steps is 0",
      cxxopts::value<int64_t>()->default_value("1"))(
      "batch-tokens", "Tokens per optimizer step",
      cxxopts::value<int64_t>()->default_value("4096"));
  options.add_options("checkpoints")(
      "save-every",
      "Checkpoint every this many optimizer steps (of any rank; also when a job finishes and "
      "on SIGTERM/SIGUSR1/SIGINT); 0 = only then",
      cxxopts::value<int64_t>()->default_value("500"))(
      "keep", "Complete checkpoint steps to keep", cxxopts::value<int64_t>()->default_value("2"))(
      "dp",
      "Ranks per job (data parallelism inside a job: batch slices, gradient allreduce); 0 = "
      "auto: 1, or ranks/jobs when there are more ranks than jobs",
      cxxopts::value<int>()->default_value("0"));
  options.add_options("output")("context", "Context length the memory accounting is stated at",
                                cxxopts::value<int64_t>()->default_value("4096"));
}

pipeline::TrainRunOptions train_options(const cxxopts::ParseResult& r_) {
  const cxxopts::ParseResult* r = &r_;
  pipeline::TrainRunOptions o;
  o.model_dir = required<std::string>(*r, "model");
  o.k_density = (*r)["k-density"].as<double>();
  o.v_density = (*r)["v-density"].as<double>();
  o.budget = (*r)["budget"].as<double>();
  CSKV_CHECK_USAGE(o.budget >= 0 && o.budget <= 1,
                   "--budget: expected a value in (0, 1] (or 0 = off), found " << o.budget);
  o.rank_multiple = (*r)["rank-multiple"].as<int64_t>();
  o.context = (*r)["context"].as<int64_t>();
  auto& c = o.cfg;
  c.init = trainer::parse_init_method((*r)["init"].as<std::string>());
  c.asvd_alpha = (*r)["asvd-alpha"].as<double>();
  const auto rotate = (*r)["rotate"].as<std::string>();
  CSKV_CHECK_USAGE(rotate == "none" || rotate == "hadamard",
                   "--rotate: expected none|hadamard, found '" << rotate << "'");
  c.rotate_hadamard = rotate == "hadamard";
  c.k_bits = parse_bits(*r, "k-bits");
  c.v_bits = parse_bits(*r, "v-bits");
  c.group_size = (*r)["group-size"].as<int64_t>();
  c.window = (*r)["window"].as<int64_t>();
  CSKV_CHECK_USAGE(c.window >= 0, "--window: expected >= 0, found " << c.window);
  const auto compat = (*r)["quant-compat"].as<std::string>();
  CSKV_CHECK_USAGE(compat == "none" || compat == "cskv",
                   "--quant-compat: expected none|cskv, found '" << compat << "'");
  c.quant_compat_cskv = compat == "cskv";
  c.lr = (*r)["lr"].as<double>();
  c.warmup = (*r)["warmup"].as<int64_t>();
  c.steps = (*r)["steps"].as<int64_t>();
  c.epochs = (*r)["epochs"].as<int64_t>();
  c.batch_tokens = (*r)["batch-tokens"].as<int64_t>();
  CSKV_CHECK_USAGE(c.batch_tokens >= 1, "--batch-tokens: expected >= 1, found " << c.batch_tokens);
  c.seed = (*r)["seed"].as<uint64_t>();
  o.layers = layers_flag(*r, o.model_dir);
  o.threads = (*r)["threads"].as<int>();
  o.save_every = (*r)["save-every"].as<int64_t>();
  o.keep = (*r)["keep"].as<int64_t>();
  o.dp = (*r)["dp"].as<int>();
  return o;
}

void add_eval_flags(cxxopts::Options& options, const std::string& prefix) {
  options.add_options("end to end")(
      prefix + "context", "Prompt tokens before decoding (0 = held-out seq_len - decode - 1)",
      cxxopts::value<int64_t>()->default_value("0"))(
      prefix + "decode", "Teacher-forced decode steps per sequence",
      cxxopts::value<int64_t>()->default_value("64"))(
      prefix + "sequences", "Held-out sequences decoded (0 = all)",
      cxxopts::value<int64_t>()->default_value("0"));
  options.add_options("memory")(
      "memory-contexts", "Contexts (tokens) the caches are filled to and measured at",
      cxxopts::value<std::string>()->default_value("1024,2048,4096,8192,16384,32768"));
}

void eval_options(const cxxopts::ParseResult& r, const std::string& prefix, pipeline::EvalOptions& o) {
  o.context = r[prefix + "context"].as<int64_t>();
  o.decode = r[prefix + "decode"].as<int64_t>();
  o.max_sequences = r[prefix + "sequences"].as<int64_t>();
  o.memory_contexts = parse_contexts(r["memory-contexts"].as<std::string>());
}

}  // namespace cskv::cli
