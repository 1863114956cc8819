// The reference code's view of a run: which of its arguments reproduce it, what it cannot load.
#include "checkpoint/reference_run.h"

#include <charconv>
#include <cmath>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace cskv::checkpoint {

namespace {

using json = nlohmann::json;
using trainer::KvKind;

template <class T>
T config_value(const json& config, const char* key) {
  CSKV_CHECK_INPUT(config.contains(key),
                   "--export-cskv: the training config has no '" << key << "'");
  return config.at(key).get<T>();
}

// The reference builds Llama/Mistral attention with head_dim = hidden_size / num_attention_heads.
void check_reference_architecture(const model::ModelConfig& model, ErrorKind kind) {
  CSKV_CHECK_KIND(model.arch != model::Arch::kQwen2, kind,
                  "--export-cskv: the reference code builds LlamaForCausalLM and "
                  "MistralForCausalLM attention only, this model is "
                      << model::arch_name(model.arch));
  CSKV_CHECK_KIND(model.head_dim * model.num_attention_heads == model.hidden_size, kind,
                  "--export-cskv: the reference code takes head_dim = hidden_size / "
                  "num_attention_heads = "
                      << model.hidden_size / model.num_attention_heads
                      << ", this model's head_dim is " << model.head_dim);
}

void check_reference_model(const json& config, const model::ModelConfig& model) {
  const auto trained_for = config_value<std::string>(config, "model_config_hash");
  CSKV_CHECK_INPUT(trained_for == model.hash(), "--export-cskv: the factors were trained for model "
                                                    << trained_for << ", --model has hash "
                                                    << model.hash());
  check_reference_architecture(model, ErrorKind::kInput);
}

// The per-head latent channels r / n_kv of one kind: one rank for every model layer 0..L-1.
int64_t channels_per_head(const FactorMap& factors, KvKind kind, const model::ModelConfig& model) {
  const char* name = kind == KvKind::kKey ? "K" : "V";
  std::string ranks;
  bool uniform = true;
  int64_t rank = -1;
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    const auto it = factors.find({l, kind});
    CSKV_CHECK_INPUT(it != factors.end(),
                     "--export-cskv: the reference code loads an entry for "
                     "every one of the model's "
                         << model.num_hidden_layers << " layers, there are no " << name
                         << " factors of layer " << l);
    const int64_t r = it->second.a.size(0);
    uniform = uniform && (rank < 0 || r == rank);
    rank = rank < 0 ? r : rank;
    ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  CSKV_CHECK_INPUT(uniform, "--export-cskv: the reference code has one "
                                << name << " rank for all layers, this run's " << name
                                << " ranks per layer are " << ranks
                                << " (--budget): train with --k-density/--v-density instead");
  const int64_t n_kv = model.num_key_value_heads;
  CSKV_CHECK_INPUT(rank % n_kv == 0, "--export-cskv: " << name << " rank " << rank
                                                       << " is not a multiple of the model's "
                                                       << n_kv << " KV heads");
  CSKV_CHECK_INPUT(rank < model.kv_dim(),
                   "--export-cskv: " << name << " keeps all " << model.head_dim
                                     << " channels per head; the reference code accepts "
                                        "densities in (0, 1) only");
  return rank / n_kv;
}

// A density the reference turns into c channels per head (int(density * head_dim) == c): the
// run's own when it does, else the smallest double from c / head_dim up that does.
double density_for(int64_t c, int64_t head_dim, double given) {
  const auto channels = [&](double d) { return static_cast<int64_t>(d * head_dim); };
  if (channels(given) == c) return given;
  double d = static_cast<double>(c) / static_cast<double>(head_dim);
  while (channels(d) < c) d = std::nextafter(d, 1.0);
  return d;
}

// What the reference does otherwise than training did, as warnings.
std::vector<std::string> reference_differences(const json& config, int64_t ck, int64_t cv) {
  std::vector<std::string> out;
  const auto group = config_value<int64_t>(config, "group_size");
  const auto window = config_value<int64_t>(config, "window");
  const auto k_bits = config_value<int>(config, "k_bits");
  const auto v_bits = config_value<int>(config, "v_bits");
  const auto differs = [&](const char* kind, int64_t c) {
    out.push_back(std::string("--group-size ") + std::to_string(group) + ": the reference code " +
                  "quantizes " + kind + " per token in groups of r/n_kv = " + std::to_string(c) +
                  " channels; these factors were trained with groups of " + std::to_string(group) +
                  " (train with --group-size 0 to match)");
  };
  if (group != 0 && v_bits < 16 && group != cv) differs("V", cv);
  if (group != 0 && k_bits < 16 && window == 0 && group != ck) differs("K", ck);
  if ((k_bits < 16 || v_bits < 16) && config_value<std::string>(config, "quant_compat") != "cskv") {
    out.push_back(
        "--quant-compat none: the reference code clamps the zero point to [0, 2^bits-1], these "
        "factors were trained without the clamp (train with --quant-compat cskv to match)");
  }
  return out;
}

}  // namespace

void check_reference_plan(const model::ModelConfig& model, double k_density, double v_density,
                          double budget) {
  check_reference_architecture(model, ErrorKind::kUsage);
  CSKV_CHECK_USAGE(budget == 0, "--export-cskv with --budget "
                                    << budget
                                    << ": the reference code has one K and one V rank for all "
                                       "layers, --budget chooses them per layer; give "
                                       "--k-density/--v-density, or turn --export-cskv off");
  const std::pair<const char*, double> densities[] = {{"--k-density", k_density},
                                                      {"--v-density", v_density}};
  for (const auto& [flag, density] : densities) {
    CSKV_CHECK_USAGE(static_cast<int64_t>(density * model.head_dim) < model.head_dim,
                     "--export-cskv with " << flag << " " << density
                                           << ": every channel of a head is kept; the reference "
                                              "code accepts densities in (0, 1) only");
  }
}

std::string python_float_str(double value) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  const std::string sci(buf, res.ptr);
  const size_t e_pos = sci.find('e');
  const int exponent = std::stoi(sci.substr(e_pos + 1));
  if (std::isnan(value) || std::isinf(value) || exponent < -4 || exponent >= 16) return sci;
  const bool negative = sci[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e_pos; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  std::string out;
  if (exponent < 0) {
    out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else {
    const auto int_len = static_cast<size_t>(exponent + 1);
    if (digits.size() < int_len + 1) digits.resize(int_len + 1, '0');
    out = digits.substr(0, int_len) + "." + digits.substr(int_len);
  }
  return negative ? "-" + out : out;
}

std::string ReferenceRun::file_name() const {
  std::string name = "density_k_" + python_float_str(k_density) + "_v_" +
                     python_float_str(v_density) + "_quant_k_" + std::to_string(k_bits) + "_v_" +
                     std::to_string(v_bits) + "_";
  if (use_asvd) name += "asvd_";
  if (q_window_size > 0) {
    name += "window_" + std::to_string(k_bits == 16 && v_bits == 16 ? 0 : q_window_size) + "_";
  }
  return name;
}

std::string ReferenceRun::arguments() const {
  std::ostringstream s;
  s << "--k_density " << python_float_str(k_density) << " --v_density "
    << python_float_str(v_density) << " --k_bits " << k_bits << " --v_bits " << v_bits;
  if (use_asvd) s << " --use_asvd";
  if (q_window_size > 0) s << " --use_window --q_window_size " << q_window_size;
  return s.str();
}

ReferenceRun reference_run(const FactorMap& factors, const json& config,
                           const model::ModelConfig& model) {
  check_reference_model(config, model);
  const int64_t ck = channels_per_head(factors, KvKind::kKey, model);
  const int64_t cv = channels_per_head(factors, KvKind::kValue, model);
  ReferenceRun r;
  r.k_density = density_for(ck, model.head_dim, config_value<double>(config, "k_density"));
  r.v_density = density_for(cv, model.head_dim, config_value<double>(config, "v_density"));
  r.k_bits = config_value<int>(config, "k_bits");
  r.v_bits = config_value<int>(config, "v_bits");
  r.use_asvd = config_value<std::string>(config, "init") == "asvd";
  r.q_window_size = config_value<int64_t>(config, "window");
  r.warnings = reference_differences(config, ck, cv);
  return r;
}

}  // namespace cskv::checkpoint
