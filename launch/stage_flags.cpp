// The stage flags: declared from the setting tables (launch/settings.h), checked there, and
// converted here into the stage options.
#include "launch/stage_flags.h"

#include "common/device.h"
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

// Stores every bound setting's value (given or default) in the stage options.
template <class Options>
void apply_settings(const cxxopts::ParseResult& r, const pipeline::BoundTable<Options>& table,
                    Options& o) {
  for (const auto& row : table) {
    const auto value = resolved_value(r, row.setting);
    if (!value.is_null()) row.set(o, value);
  }
}
}  // namespace

void add_capture_flags(cxxopts::Options& options) { add_settings(options, capture_settings()); }

pipeline::CaptureOptions capture_options(const cxxopts::ParseResult& r,
                                         const std::string& seed_flag) {
  pipeline::CaptureOptions o;
  o.model_dir = required<std::string>(r, "model");
  check_settings(r, capture_settings());
  apply_settings(r, pipeline::capture_bound_settings(), o);
  pipeline::check_tokenizer_use(o);  // before the runtime starts: one line
  device::check_choice(o.device);
  o.seed = r[seed_flag].as<uint64_t>();
  const auto config = model::load_config(o.model_dir);
  o.layers = pipeline::parse_layer_list(r["layers"].as<std::string>(), config.num_hidden_layers);
  return o;
}

void add_train_flags(cxxopts::Options& options) { add_settings(options, train_settings()); }

pipeline::TrainRunOptions train_options(const cxxopts::ParseResult& r) {
  pipeline::TrainRunOptions o;
  o.model_dir = required<std::string>(r, "model");
  check_settings(r, train_settings());
  apply_settings(r, pipeline::train_bound_settings(), o);
  o.cfg.seed = r["seed"].as<uint64_t>();
  o.layers = layers_flag(r, o.model_dir);
  o.threads = r["threads"].as<int>();
  device::check_choice(o.device, o.cfg.precision);  // before the runtime starts: one line
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
  o.sink_tokens = r[prefix + "sink-tokens"].as<int64_t>();
  o.pareto = r[prefix + "pareto"].as<bool>();
  o.memory_contexts = parse_memory_contexts(r["memory-contexts"].as<std::string>());
}

}  // namespace cskv::cli
