// Toy model generator (LLM-like random weights written as a HF directory) and the toy token
// stream; everything is a pure function of the spec and seed.
#include "model/toy_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/fs.h"
#include "common/log.h"

namespace cskv::model {
namespace {

namespace fs = std::filesystem;

// Bound of the generated toy token files (built in memory first): 2^30 tokens (4 GiB of ids).
// The parameter bound is kMaxToyParams (toy_model.h).
constexpr int64_t kMaxToyTokens = int64_t{1} << 30;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// One generator per (seed, tensor name): a tensor's values never depend on the others.
at::Generator generator_for(uint64_t seed, const std::string& name) {
  return at::make_generator<at::CPUGeneratorImpl>(splitmix64(seed ^ splitmix64(fnv1a64(name))));
}

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);

// rows x cols matrix U·diag(s)·Vᵀ with s_i ∝ i^-alpha and ‖W‖²_F = rows (float64).
at::Tensor power_law_matrix(int64_t rows, int64_t cols, double alpha, at::Generator& gen) {
  const int64_t r = std::min(rows, cols);
  const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({rows, r}, gen, kF64)));
  const at::Tensor v = std::get<0>(at::linalg_qr(at::randn({cols, r}, gen, kF64)));
  std::vector<double> s(static_cast<size_t>(r));
  double energy = 0;
  for (int64_t i = 0; i < r; ++i) {
    s[static_cast<size_t>(i)] = std::pow(static_cast<double>(i + 1), -alpha);
    energy += s[static_cast<size_t>(i)] * s[static_cast<size_t>(i)];
  }
  const double scale = std::sqrt(static_cast<double>(rows) / energy);
  for (double& x : s) x *= scale;
  const at::Tensor sv = at::from_blob(s.data(), {r}, kF64).clone();
  return at::matmul(u * sv, v.t());
}

// RMSNorm weight: 1 + 0.02·N(0,1), with the outlier channels set to large gains.
at::Tensor norm_weight(int64_t hidden, const std::vector<int64_t>& outliers, at::Generator& gen) {
  at::Tensor w = 1.0 + 0.02 * at::randn({hidden}, gen, kF64);
  if (outliers.empty()) return w;
  const at::Tensor gains =
      ToySpectrum::kOutlierMin + (ToySpectrum::kOutlierMax - ToySpectrum::kOutlierMin) *
                                     at::rand({static_cast<int64_t>(outliers.size())}, gen, kF64);
  auto wa = w.accessor<double, 1>();
  auto ga = gains.accessor<double, 1>();
  for (size_t i = 0; i < outliers.size(); ++i) wa[outliers[i]] = ga[static_cast<int64_t>(i)];
  return w;
}

// The outlier channels shared by every layer's norms (massive activations sit in fixed channels).
std::vector<int64_t> outlier_channels(int64_t hidden, uint64_t seed) {
  const int64_t n = std::max<int64_t>(
      1,
      static_cast<int64_t>(std::lround(ToySpectrum::kOutlierShare * static_cast<double>(hidden))));
  at::Generator gen = generator_for(seed, "outlier_channels");
  const at::Tensor perm = at::randperm(hidden, gen, at::TensorOptions().dtype(at::kLong));
  std::vector<int64_t> channels(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + n);
  std::sort(channels.begin(), channels.end());
  return channels;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Makes the toy model's tensors. Every projection is a signed permutation of rows and columns
// (drawn per tensor) of a base matrix U·diag(s)·Vᵀ shared by all tensors of the same shape and
// spectrum: signed permutations are orthogonal, so each weight keeps the exact power-law spectrum
// while the costly QRs and the rows x cols x rank product happen once per model, not per layer.
class ToyWeightFactory {
 public:
  ToyWeightFactory(const ToyModelSpec& spec, int64_t hidden)
      : spec_(spec), outliers_(outlier_channels(hidden, spec.seed)) {}

  at::Tensor make(const std::string& name, const WeightShape& shape) {
    at::Generator gen = generator_for(spec_.seed, name);
    if (ends_with(name, "layernorm.weight")) return norm_weight(shape[0], outliers_, gen);
    if (name == "model.norm.weight") return norm_weight(shape[0], {}, gen);
    if (ends_with(name, ".bias")) return 0.1 * at::randn(shape, gen, kF64);
    // Embeddings N(0, 1); lm_head Gaussian with unit-variance logits (float32 draws: these are the
    // largest tensors and their spectra do not matter here).
    if (name == "model.embed_tokens.weight") return at::randn(shape, gen, at::kFloat);
    if (name == "lm_head.weight") {
      return at::randn(shape, gen, at::kFloat) / std::sqrt(static_cast<float>(shape[1]));
    }
    double alpha = ToySpectrum::kOther;
    if (ends_with(name, "q_proj.weight")) alpha = ToySpectrum::kQuery;
    if (ends_with(name, "k_proj.weight")) alpha = ToySpectrum::kKey;
    if (ends_with(name, "v_proj.weight")) alpha = ToySpectrum::kValue;
    const at::Tensor& b = base(shape[0], shape[1], alpha);
    const auto long_opts = at::TensorOptions().dtype(at::kLong);
    const at::Tensor rows = at::randperm(shape[0], gen, long_opts);
    const at::Tensor cols = at::randperm(shape[1], gen, long_opts);
    const at::Tensor row_sign = (at::rand({shape[0], 1}, gen, kF64) < 0.5).to(at::kDouble) * 2 - 1;
    const at::Tensor col_sign = (at::rand({1, shape[1]}, gen, kF64) < 0.5).to(at::kDouble) * 2 - 1;
    return b.index_select(0, rows).index_select(1, cols) * row_sign * col_sign;
  }

 private:
  const at::Tensor& base(int64_t rows, int64_t cols, double alpha) {
    char key[96];
    std::snprintf(key, sizeof key, "base %lldx%lld alpha %.4f", static_cast<long long>(rows),
                  static_cast<long long>(cols), alpha);
    auto it = bases_.find(key);
    if (it == bases_.end()) {
      at::Generator gen = generator_for(spec_.seed, key);
      it = bases_.emplace(key, power_law_matrix(rows, cols, alpha, gen)).first;
    }
    return it->second;
  }

  const ToyModelSpec& spec_;
  const std::vector<int64_t> outliers_;
  std::map<std::string, at::Tensor> bases_;
};

std::string shard_name(int64_t k, int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05lld-of-%05lld.safetensors", static_cast<long long>(k),
                static_cast<long long>(n));
  return buf;
}

uint64_t nbytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel() * t.element_size()); }

}  // namespace

ModelConfig toy_config(const ToyModelSpec& spec) {
  // Upper bounds keep a toy a toy: the weights are generated in memory before any is written.
  struct Size {
    const char* name;
    int64_t value, max;
  };
  const Size sizes[] = {{"hidden", spec.hidden, 16384},
                        {"layers", spec.layers, 256},
                        {"heads", spec.heads, 256},
                        {"kv-heads", spec.kv_heads, 256},
                        {"intermediate", spec.intermediate, 65536},
                        {"vocab", spec.vocab, 1 << 20},
                        {"shards", spec.shards, 1024}};
  for (const auto& [name, value, max] : sizes) {
    CSKV_CHECK_USAGE(value > 0, "toy model: --" << name << " must be positive, found " << value);
    CSKV_CHECK_USAGE(value <= max,
                     "toy model: --" << name << " must be at most " << max << ", found " << value);
  }
  // Before anything is allocated: the parameters the sizes make (in floating point, so no
  // product overflows) against what the generator builds in memory.
  const long double h = spec.hidden, i = spec.intermediate, v = spec.vocab;
  const long double params = v * h * (spec.tie_word_embeddings ? 1 : 2) + h +
                             spec.layers * (2 * h + 4 * h * h + 3 * h * i + 3 * h);
  CSKV_CHECK_USAGE(params <= static_cast<long double>(kMaxToyParams),
                   "toy model: --hidden "
                       << spec.hidden << ", --layers " << spec.layers << ", --intermediate "
                       << spec.intermediate << " and --vocab " << spec.vocab << " make about "
                       << static_cast<double>(params)
                       << " parameters, more than the toy generator's limit of " << kMaxToyParams);
  CSKV_CHECK_USAGE(spec.hidden % spec.heads == 0,
                   "toy model: --hidden (" << spec.hidden << ") is not divisible by --heads ("
                                           << spec.heads << ")");
  CSKV_CHECK_USAGE(spec.heads % spec.kv_heads == 0,
                   "toy model: --heads (" << spec.heads << ") is not divisible by --kv-heads ("
                                          << spec.kv_heads << ")");
  ModelConfig c;
  c.arch = spec.arch;
  c.hidden_size = spec.hidden;
  c.num_hidden_layers = spec.layers;
  c.num_attention_heads = spec.heads;
  c.num_key_value_heads = spec.kv_heads;
  c.head_dim = spec.hidden / spec.heads;
  c.intermediate_size = spec.intermediate;
  c.vocab_size = spec.vocab;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = spec.arch == Arch::kLlama ? 10000.0 : 1000000.0;
  c.tie_word_embeddings = spec.tie_word_embeddings;
  c.attention_bias = spec.arch == Arch::kQwen2;
  c.torch_dtype = spec.dtype == StDType::kF32   ? "float32"
                  : spec.dtype == StDType::kF16 ? "float16"
                                                : "bfloat16";
  c.bos_token_id = spec.vocab > 1 ? 1 : 0;
  const int64_t tensors = static_cast<int64_t>(expected_weight_list(c).size());
  CSKV_CHECK_USAGE(spec.shards <= tensors, "toy model: --shards (" << spec.shards
                                                                   << ") exceeds the number of "
                                                                      "tensors ("
                                                                   << tensors << ")");
  return c;
}

NamedTensors toy_weights(const ToyModelSpec& spec) {
  const ModelConfig c = toy_config(spec);
  ToyWeightFactory factory(spec, c.hidden_size);
  const at::ScalarType dtype = to_scalar_type(spec.dtype);
  NamedTensors out;
  for (const auto& [name, shape] : expected_weight_list(c)) {
    out.emplace_back(name, factory.make(name, shape).to(dtype).contiguous());
  }
  return out;
}

namespace {
bool is_model_file_name(const std::string& f) {
  return f == "config.json" || f == "model.safetensors.index.json" ||
         (f.rfind("model", 0) == 0 && ends_with(f, ".safetensors"));
}

bool is_toy_safetensors(const std::string& path) {
  try {
    const auto file = SafetensorsFile::open(path);  // owns the header read below
    const auto& m = file->header().metadata;
    const auto it = m.find(kToyModelMarker);
    return it != m.end() && it->second == "1";
  } catch (const std::exception&) {
    return false;
  }
}
}  // namespace

std::optional<std::string> foreign_model_file(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return std::nullopt;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string f = entry.path().filename().string();
    if (is_model_file_name(f)) names.push_back(f);
  }
  std::sort(names.begin(), names.end());
  bool all_toy = false;
  for (const auto& f : names) {
    if (!ends_with(f, ".safetensors")) continue;
    if (!is_toy_safetensors(dir + "/" + f)) return dir + "/" + f;
    all_toy = true;
  }
  if (!all_toy && !names.empty()) return dir + "/" + names.front();
  return std::nullopt;
}

std::vector<std::string> write_toy_model(const ToyModelSpec& spec, const std::string& dir) {
  const ModelConfig config = toy_config(spec);
  std::error_code ec;
  fs::create_directories(dir, ec);
  CSKV_CHECK(!ec, dir << ": cannot create the directory: " << ec.message());
  // A stale index or shard set from an earlier run would shadow or mix with the new files.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string f = entry.path().filename().string();
    if (f == "config.json" || f == "model.safetensors.index.json" ||
        (f.rfind("model", 0) == 0 && ends_with(f, ".safetensors"))) {
      fs::remove(entry.path());
    }
  }

  const NamedTensors tensors = toy_weights(spec);
  const Metadata metadata{{"format", "pt"}, {kToyModelMarker, "1"}};
  std::vector<std::string> files;
  if (spec.shards == 1) {
    write_safetensors(dir + "/model.safetensors", tensors, metadata);
    files.push_back("model.safetensors");
  } else {
    // Contiguous runs of about total/shards bytes each, never empty.
    uint64_t total = 0;
    for (const auto& [name, t] : tensors) total += nbytes(t);
    const int64_t n = spec.shards;
    nlohmann::json weight_map = nlohmann::json::object();
    size_t next = 0;
    uint64_t written = 0;
    for (int64_t k = 1; k <= n; ++k) {
      const std::string file = shard_name(k, n);
      const uint64_t target = total * static_cast<uint64_t>(k) / static_cast<uint64_t>(n);
      const size_t must_leave = static_cast<size_t>(n - k);  // one tensor per later shard
      NamedTensors part;
      do {
        part.push_back(tensors[next]);
        written += nbytes(tensors[next].second);
        weight_map[tensors[next].first] = file;
        ++next;
      } while (next < tensors.size() - must_leave && (written < target || k == n));
      write_safetensors(dir + "/" + file, part, metadata);
      files.push_back(file);
    }
    nlohmann::json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    files::write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
    files.push_back("model.safetensors.index.json");
  }
  files::write_file_atomic(dir + "/config.json", config.to_json());
  files.push_back("config.json");
  log::get("model")->debug("toy model written to {} ({} files)", dir, files.size());
  return files;
}

// ---- token stream ----------------------------------------------------------------------------

namespace {

// Uniform double in [0, 1) from 53 random bits.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Uniform integer in [0, n) without modulo bias (rejection sampling).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}

}  // namespace

std::vector<uint32_t> toy_tokens(int64_t vocab, int64_t count, uint64_t seed) {
  // The sampler holds two vocab-sized tables; 2^24 covers every real tokenizer.
  CSKV_CHECK_USAGE(vocab > 0 && vocab <= (int64_t{1} << 24),
                   "toy tokens: --vocab must be in [1, 16777216], found " << vocab);
  CSKV_CHECK_USAGE(count > 0, "toy tokens: --count must be positive, found " << count);
  CSKV_CHECK_USAGE(count <= kMaxToyTokens,
                   "toy tokens: --count must be at most " << kMaxToyTokens << ", found " << count);
  const uint64_t v = static_cast<uint64_t>(vocab);

  // Zipf CDF over ranks 0..v-1.
  std::vector<double> cdf(v);
  double acc = 0;
  for (uint64_t r = 0; r < v; ++r) {
    acc += std::pow(static_cast<double>(r + 1), -ToyTokenStream::kZipfExponent);
    cdf[r] = acc;
  }
  for (double& x : cdf) x /= acc;
  std::mt19937_64 rng(seed);
  const auto zipf_rank = [&]() -> uint64_t {
    const double u = uniform01(rng);
    const auto it = std::upper_bound(cdf.begin(), cdf.end(), u);
    return std::min<uint64_t>(static_cast<uint64_t>(it - cdf.begin()), v - 1);
  };

  // Global permutation (Fisher–Yates).
  std::vector<uint32_t> global(v);
  std::iota(global.begin(), global.end(), 0u);
  for (uint64_t i = v - 1; i > 0; --i) std::swap(global[i], global[uniform_below(rng, i + 1)]);

  // Token t's own permutation: rank -> (a_t·rank + b_t) mod v with gcd(a_t, v) = 1.
  const uint64_t salt = splitmix64(seed ^ 0x746f792d746f6b73ull);
  const auto successor = [&](uint64_t t, uint64_t rank) -> uint64_t {
    if (v == 1) return 0;
    uint64_t h = splitmix64(salt ^ t);
    uint64_t a = 1 + h % (v - 1);
    while (std::gcd(a, v) != 1) a = 1 + (a % (v - 1));  // next a, wrapping to 1 (coprime)
    const uint64_t b = splitmix64(h) % v;
    return (a % v * rank + b) % v;
  };

  std::vector<uint32_t> out(static_cast<size_t>(count));
  uint64_t t = global[zipf_rank()];
  out[0] = static_cast<uint32_t>(t);
  for (size_t i = 1; i < out.size(); ++i) {
    const bool local = uniform01(rng) < ToyTokenStream::kLocalWeight;
    const uint64_t rank = zipf_rank();
    t = local ? successor(t, rank) : global[rank];
    out[i] = static_cast<uint32_t>(t);
  }
  return out;
}

void write_tokens(const std::string& path, const std::vector<uint32_t>& tokens, int64_t vocab,
                  TokenDType dtype) {
  const int width = dtype == TokenDType::kU16 ? 2 : 4;
  CSKV_CHECK_USAGE(
      dtype == TokenDType::kU32 || vocab <= 65536,
      "toy tokens: --vocab " << vocab << " does not fit in u16 (at most 65536); use --dtype u32");
  std::string bytes(tokens.size() * static_cast<size_t>(width), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    for (int b = 0; b < width; ++b) {
      bytes[i * static_cast<size_t>(width) + static_cast<size_t>(b)] =
          static_cast<char>((tokens[i] >> (8 * b)) & 0xff);
    }
  }
  const fs::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    CSKV_CHECK(!ec, target.parent_path().string()
                        << ": cannot create the directory: " << ec.message());
  }
  files::write_file_atomic(path, bytes);
}

}  // namespace cskv::model
