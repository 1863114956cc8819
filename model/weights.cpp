// Validation of safetensors weights against config.json, and the model summary text.
#include "model/weights.h"

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <ATen/Parallel.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/xxh64.h"

namespace cskv::model {

std::string format_shape(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

namespace {

// The number of decoder layers the files hold: 1 + the largest n of a "model.layers.<n>." name.
int64_t layers_in_files(const SafetensorsModel& weights) {
  const std::string prefix = "model.layers.";
  int64_t layers = 0;
  for (const auto& name : weights.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t end = name.find_first_not_of("0123456789", prefix.size());
    if (end == prefix.size() || end == std::string::npos || end - prefix.size() > 9) continue;
    layers = std::max<int64_t>(layers, std::stoll(name.substr(prefix.size())) + 1);
  }
  return layers;
}

}  // namespace

WeightsReport validate_weights(const ModelConfig& config, const SafetensorsModel& weights,
                               const std::string& model_dir) {
  // Before the expected list is built: the layer count against the files.
  const int64_t layers = layers_in_files(weights);
  CSKV_CHECK_INPUT(config.num_hidden_layers <= layers,
                   model_dir << ": config.json has num_hidden_layers " << config.num_hidden_layers
                             << ", but the safetensors hold " << layers
                             << " layer(s) (tensors model.layers.<n>.*)");
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
    CSKV_CHECK_INPUT(e.dtype != StDType::kU8, weights.file_of(name)
                                                  << ": tensor '" << name
                                                  << "' is U8; model weights must be F32, F16 or "
                                                     "BF16 (quantized checkpoints are not "
                                                     "supported)");
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

namespace {
// What identifies the bytes of the files that hold `list` without reading them: path, device,
// inode, size, modification and status-change times of each (any write changes the last two).
std::string files_key(const ModelConfig& config, const SafetensorsModel& weights,
                      const std::vector<std::pair<std::string, std::vector<int64_t>>>& list) {
  std::set<std::string> paths;
  for (const auto& [name, shape] : list) paths.insert(weights.file_of(name));
  std::ostringstream key;
  key << config.hash();
  for (const std::string& p : paths) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return "";  // not cacheable: compute
    key << '\n'
        << p << ' ' << st.st_dev << ' ' << st.st_ino << ' ' << st.st_size << ' '
        << st.st_mtim.tv_sec << '.' << st.st_mtim.tv_nsec << ' ' << st.st_ctim.tv_sec << '.'
        << st.st_ctim.tv_nsec;
  }
  return key.str();
}

std::string compute_fingerprint(const ModelConfig& config, const SafetensorsModel& weights) {
  const auto list = expected_weight_list(config);
  std::vector<uint64_t> digests(list.size());
  at::parallel_for(0, static_cast<int64_t>(list.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const at::Tensor t = weights.get(list[static_cast<size_t>(i)].first);
      digests[static_cast<size_t>(i)] = xxh64(t.data_ptr(), t.nbytes());
    }
  });
  Xxh64 all;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string& name = list[i].first;
    const TensorEntry& e = weights.entry(name);
    const std::string dtype = dtype_name(e.dtype);
    all.update(name.data(), name.size() + 1);  // with its terminating NUL
    all.update(dtype.data(), dtype.size() + 1);
    const uint64_t rank = e.shape.size();
    all.update(&rank, sizeof rank);
    all.update(e.shape.data(), e.shape.size() * sizeof(int64_t));
    all.update(&digests[i], sizeof digests[i]);
  }
  return format_xxh64(all.digest());
}
}  // namespace

std::string weights_fingerprint(const ModelConfig& config, const SafetensorsModel& weights) {
  // Every stage of `cskv run` asks for the same model's: its files are read once per process.
  static std::mutex mu;
  static std::map<std::string, std::string> known;
  const std::string key = files_key(config, weights, expected_weight_list(config));
  if (!key.empty()) {
    std::lock_guard<std::mutex> lock(mu);
    if (const auto it = known.find(key); it != known.end()) return it->second;
  }
  std::string fingerprint = compute_fingerprint(config, weights);
  if (!key.empty()) {
    std::lock_guard<std::mutex> lock(mu);
    known[key] = fingerprint;
  }
  return fingerprint;
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
