// Validation of safetensors weights against config.json, and the model summary text.
#include "model/weights.h"

#include <filesystem>
#include <iomanip>
#include <set>
#include <sstream>

#include "common/error.h"

namespace cskv::model {

std::string format_shape(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

WeightsReport validate_weights(const ModelConfig& config, const SafetensorsModel& weights,
                               const std::string& model_dir) {
  WeightsReport report;
  std::set<std::string> dtypes, files, expected_names;
  for (const auto& [name, shape] : expected_weight_list(config)) {
    CSKV_CHECK_INPUT(weights.contains(name),
                     model_dir << ": tensor '" << name << "' is missing (expected shape "
                               << format_shape(shape) << " from config.json)");
    const TensorEntry& e = weights.entry(name);
    CSKV_CHECK_INPUT(e.shape == shape, weights.file_of(name)
                                           << ": tensor '" << name << "' has shape "
                                           << format_shape(e.shape) << ", expected "
                                           << format_shape(shape) << " from config.json");
    expected_names.insert(name);
    report.tensors += 1;
    report.params += static_cast<int64_t>(e.numel());
    report.data_bytes += e.end - e.begin;
    dtypes.insert(dtype_name(e.dtype));
    files.insert(std::filesystem::path(weights.file_of(name)).filename().string());
  }
  for (const auto& name : weights.names()) {
    if (!expected_names.count(name)) report.unexpected.push_back(name);
  }
  report.dtypes.assign(dtypes.begin(), dtypes.end());
  report.files.assign(files.begin(), files.end());
  return report;
}

int64_t count_params(const ModelConfig& config) {
  int64_t n = 0;
  for (const auto& [name, shape] : expected_weight_list(config)) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    n += numel;
  }
  return n;
}

int64_t kv_cache_bytes_per_token_fp16(const ModelConfig& config) {
  return 2 * config.num_hidden_layers * config.kv_dim() * 2;
}

std::string format_model_summary(const ModelConfig& c, const WeightsReport& r) {
  std::ostringstream s;
  const auto row = [&s](const char* key) -> std::ostream& {
    return s << std::left << std::setw(17) << key;
  };
  std::string dtypes;
  for (const auto& d : r.dtypes) dtypes += (dtypes.empty() ? "" : ", ") + d;
  std::string files;
  for (const auto& f : r.files) files += (files.empty() ? "" : ", ") + f;
  row("architecture") << arch_name(c.arch) << "\n";
  row("layers") << c.num_hidden_layers << "\n";
  row("hidden") << c.hidden_size << "\n";
  row("heads") << c.num_attention_heads << " (kv heads " << c.num_key_value_heads << ", head_dim "
               << c.head_dim << ")\n";
  row("kv dim (D)") << c.kv_dim() << "\n";
  row("intermediate") << c.intermediate_size << "\n";
  row("vocab") << c.vocab_size << "\n";
  row("tied embeddings") << (c.tie_word_embeddings ? "yes" : "no") << "\n";
  row("attention bias") << (c.attention_bias ? "yes" : "no") << "\n";
  row("dtype") << c.torch_dtype << " (tensors: " << dtypes << ")\n";
  row("params") << r.params << "\n";
  row("bytes") << r.data_bytes << "\n";
  row("files") << r.files.size() << " (" << files << ")\n";
  if (!r.unexpected.empty()) row("extra tensors") << r.unexpected.size() << " (ignored)\n";
  row("config hash") << c.hash() << "\n";
  row("kv cache/token") << kv_cache_bytes_per_token_fp16(c) << " bytes (fp16 K+V, "
                        << c.num_hidden_layers << " layers)\n";
  return s.str();
}

}  // namespace cskv::model
