// The stage flags: declared from the setting tables (launch/settings.h), checked there, and
// converted here into the stage options.
#include "launch/stage_flags.h"

#include "common/error.h"
#include "launch/cli.h"
#include "launch/settings.h"
#include "model/config.h"

namespace cskv::cli {

namespace {
std::vector<int64_t> layers_flag(const cxxopts::ParseResult& r, const std::string& model_dir) {
  const std::string spec = r["layers"].as<std::string>();
  if (spec == "all") return {};
  const auto config = model::load_config(model_dir);
  return pipeline::parse_layer_list(spec, config.num_hidden_layers);
}

data::ActivationDtype activation_dtype(const cxxopts::ParseResult& r) {
  const FloatDtype d = float_dtype_setting("dtype", r["dtype"].as<std::string>(),
                                           {FloatDtype::kF32, FloatDtype::kF16});
  return d == FloatDtype::kF32 ? data::ActivationDtype::kFloat32 : data::ActivationDtype::kFloat16;
}
}  // namespace

void add_capture_flags(cxxopts::Options& options) { add_settings(options, capture_settings()); }

pipeline::CaptureOptions capture_options(const cxxopts::ParseResult& r,
                                         const std::string& seed_flag) {
  pipeline::CaptureOptions o;
  o.model_dir = required<std::string>(r, "model");
  check_settings(r, capture_settings());
  o.tokens_path = r["tokens"].as<std::string>();
  o.text_path = r["text"].as<std::string>();
  o.tokenizer_path = r["tokenizer"].as<std::string>();
  o.token_dtype = data::parse_token_dtype(r["token-dtype"].as<std::string>());
  o.num_seqs = r["num-seqs"].as<int64_t>();
  o.seq_len = r["seq-len"].as<int64_t>();
  o.holdout_seqs = r["holdout-seqs"].as<int64_t>();
  o.sampling = data::parse_sampling(r["sampling"].as<std::string>());
  o.seed = r[seed_flag].as<uint64_t>();
  o.dtype = activation_dtype(r);
  o.batch = r["batch"].as<int64_t>();
  o.device = r["device"].as<std::string>();
  const auto config = model::load_config(o.model_dir);
  o.layers = pipeline::parse_layer_list(r["layers"].as<std::string>(), config.num_hidden_layers);
  return o;
}

void add_train_flags(cxxopts::Options& options) { add_settings(options, train_settings()); }

pipeline::TrainRunOptions train_options(const cxxopts::ParseResult& r) {
  pipeline::TrainRunOptions o;
  o.model_dir = required<std::string>(r, "model");
  check_settings(r, train_settings());
  o.k_density = r["k-density"].as<double>();
  o.v_density = r["v-density"].as<double>();
  o.budget = r["budget"].as<double>();
  o.rank_multiple = r["rank-multiple"].as<int64_t>();
  o.context = r["context"].as<int64_t>();
  auto& c = o.cfg;
  c.init = trainer::parse_init_method(r["init"].as<std::string>());
  c.asvd_alpha = r["asvd-alpha"].as<double>();
  c.rotate_hadamard = r["rotate"].as<std::string>() == "hadamard";
  c.k_bits = r["k-bits"].as<int>();
  c.v_bits = r["v-bits"].as<int>();
  c.group_size = r["group-size"].as<int64_t>();
  c.window = r["window"].as<int64_t>();
  c.quant_compat_cskv = r["quant-compat"].as<std::string>() == "cskv";
  c.lr = r["lr"].as<double>();
  c.warmup = r["warmup"].as<int64_t>();
  c.steps = r["steps"].as<int64_t>();
  c.epochs = r["epochs"].as<int64_t>();
  c.batch_tokens = r["batch-tokens"].as<int64_t>();
  c.seed = r["seed"].as<uint64_t>();
  o.layers = layers_flag(r, o.model_dir);
  o.threads = r["threads"].as<int>();
  o.save_every = r["save-every"].as<int64_t>();
  o.keep = r["keep"].as<int64_t>();
  o.dp = r["dp"].as<int>();
  return o;
}

void add_eval_flags(cxxopts::Options& options, const std::string& prefix) {
  add_settings(options, eval_settings(prefix));
}

void eval_options(const cxxopts::ParseResult& r, const std::string& prefix,
                  pipeline::EvalOptions& o) {
  check_settings(r, eval_settings(prefix));
  o.context = r[prefix + "context"].as<int64_t>();
  o.decode = r[prefix + "decode"].as<int64_t>();
  o.max_sequences = r[prefix + "sequences"].as<int64_t>();
  o.memory_contexts = parse_memory_contexts(r["memory-contexts"].as<std::string>());
}

}  // namespace cskv::cli
