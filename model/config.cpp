// Parsing and validation of HF config.json for Llama/Mistral/Qwen2, its stable hash, and the
// weight names/shapes a config implies (HF layouts: Linear weights are [out, in]).
#include "model/config.h"

#include <nlohmann/json.hpp>

#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/json_bounds.h"

namespace cskv::model {
namespace {

using nlohmann::json;

constexpr const char* kSupportedArchs = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// "an integer (12)", "a string (\"x\")", "null": what a JSON value is, for error messages.
std::string describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean (" + v.dump() + ")";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer (" + v.dump() + ")";
    case json::value_t::number_float:
      return "a float (" + v.dump() + ")";
    case json::value_t::string:
      return "a string (" + v.dump() + ")";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    default:
      return "an unsupported JSON value";
  }
}

// Typed accessors over the top-level object; every error names the file and the key.
class Fields {
 public:
  Fields(const json& obj, const std::string& path) : obj_(obj), path_(path) {}

  // Absent and explicit null are both "not given".
  bool given(const char* key) const { return obj_.contains(key) && !obj_.at(key).is_null(); }

  int64_t positive_int(const char* key) const {
    CSKV_CHECK_INPUT(obj_.contains(key),
                     path_ << ": missing required key '" << key << "' (expected an integer)");
    return positive_int_value(key, obj_.at(key));
  }
  int64_t positive_int_or(const char* key, int64_t fallback) const {
    return given(key) ? positive_int_value(key, obj_.at(key)) : fallback;
  }
  double positive_number_or(const char* key, double fallback) const {
    if (!given(key)) return fallback;
    return positive_number_value(key, obj_.at(key));
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!given(key)) return fallback;
    const json& v = obj_.at(key);
    CSKV_CHECK_INPUT(v.is_boolean(),
                     path_ << ": key '" << key << "': expected a boolean, found " << describe(v));
    return v.get<bool>();
  }
  int64_t non_negative_int_or(const char* key, int64_t fallback) const {
    if (!given(key)) return fallback;
    const json& v = obj_.at(key);
    const bool ok = v.is_number_unsigned()  ? v.get<uint64_t>() <= INT64_MAX
                    : v.is_number_integer() ? v.get<int64_t>() >= 0
                                            : false;
    CSKV_CHECK_INPUT(ok, path_ << ": key '" << key << "': expected a non-negative integer, found "
                               << describe(v));
    return v.get<int64_t>();
  }

  int64_t positive_int_value(const std::string& key, const json& v) const {
    CSKV_CHECK_INPUT(v.is_number_integer(),
                     path_ << ": key '" << key << "': expected an integer, found " << describe(v));
    const bool positive = v.is_number_unsigned()
                              ? v.get<uint64_t>() > 0 && v.get<uint64_t>() <= INT64_MAX
                              : v.get<int64_t>() > 0;
    CSKV_CHECK_INPUT(positive, path_ << ": key '" << key << "': expected a positive integer, found "
                                     << v.dump());
    return v.get<int64_t>();
  }
  double positive_number_value(const std::string& key, const json& v) const {
    CSKV_CHECK_INPUT(v.is_number(),
                     path_ << ": key '" << key << "': expected a number, found " << describe(v));
    const double d = v.get<double>();
    CSKV_CHECK_INPUT(
        d > 0, path_ << ": key '" << key << "': expected a positive number, found " << v.dump());
    return d;
  }

 private:
  const json& obj_;
  const std::string& path_;
};

// model_type, when given next to architectures, must name the same family.
Arch check_model_type(const json& obj, const std::string& path, Arch arch) {
  if (!obj.contains("model_type") || obj.at("model_type").is_null()) return arch;
  const json& t = obj.at("model_type");
  CSKV_CHECK_INPUT(t.is_string(),
                   path << ": key 'model_type': expected a string, found " << describe(t));
  CSKV_CHECK_INPUT(t.get<std::string>() == model_type_name(arch),
                   path << ": model_type '" << t.get<std::string>()
                        << "' contradicts architectures [" << arch_name(arch)
                        << "] (expected model_type '" << model_type_name(arch) << "')");
  return arch;
}

Arch arch_from_config(const json& obj, const std::string& path) {
  if (obj.contains("architectures")) {
    const json& a = obj.at("architectures");
    CSKV_CHECK_INPUT(a.is_array() && !a.empty() && a.at(0).is_string(),
                     path << ": key 'architectures': expected a non-empty array of strings, found "
                          << (a.is_array() && !a.empty() ? describe(a.at(0)) + " as first element"
                                                         : describe(a)));
    const std::string name = a.at(0).get<std::string>();
    for (Arch arch : {Arch::kLlama, Arch::kMistral, Arch::kQwen2}) {
      if (name == arch_name(arch)) return check_model_type(obj, path, arch);
    }
    CSKV_FAIL_INPUT(path << ": architecture '" << name
                         << "' is not supported (supported: " << kSupportedArchs << ")");
  }
  CSKV_CHECK_INPUT(obj.contains("model_type"),
                   path << ": missing required key 'architectures' (or 'model_type')");
  const json& t = obj.at("model_type");
  CSKV_CHECK_INPUT(t.is_string(),
                   path << ": key 'model_type': expected a string, found " << describe(t));
  const std::string name = t.get<std::string>();
  for (Arch arch : {Arch::kLlama, Arch::kMistral, Arch::kQwen2}) {
    if (name == model_type_name(arch)) return arch;
  }
  CSKV_FAIL_INPUT(path << ": model_type '" << name
                       << "' is not supported (supported: llama, mistral, qwen2)");
}

// RoPE parameters live in `rope_scaling` (transformers 4.x) or `rope_parameters` (5.x): `where`
// names the object in messages.
double rope_number(const json& rs, const std::string& path, const Fields& f,
                   const std::string& where, const char* key) {
  CSKV_CHECK_INPUT(rs.contains(key) && !rs.at(key).is_null(), path << ": missing required key '"
                                                                   << where << "." << key
                                                                   << "' (expected a number)");
  return f.positive_number_value(where + "." + key, rs.at(key));
}

double rope_number_or(const json& rs, const Fields& f, const std::string& where, const char* key,
                      double fallback) {
  if (!rs.contains(key) || rs.at(key).is_null()) return fallback;
  return f.positive_number_value(where + "." + key, rs.at(key));
}

// HF _compute_yarn_parameters: attention_factor given, or 0.1·mscale·ln(factor) + 1 (ratio of
// two such terms when both mscale and mscale_all_dim are given).
double yarn_attention_factor(const json& rs, const Fields& f, const std::string& where,
                             double factor) {
  if (rs.contains("attention_factor") && !rs.at("attention_factor").is_null()) {
    return f.positive_number_value(where + ".attention_factor", rs.at("attention_factor"));
  }
  auto get_mscale = [&](double m) { return factor <= 1 ? 1.0 : 0.1 * m * std::log(factor) + 1.0; };
  const double mscale = rope_number_or(rs, f, where, "mscale", 0);
  const double mscale_all_dim = rope_number_or(rs, f, where, "mscale_all_dim", 0);
  if (mscale != 0 && mscale_all_dim != 0) return get_mscale(mscale) / get_mscale(mscale_all_dim);
  return get_mscale(1.0);
}

// The RoPE variant of the object obj[where] ("rope_scaling" or "rope_parameters"; absent or null:
// none).
RopeScaling parse_rope_scaling(const json& obj, const std::string& path, const Fields& f,
                               const std::string& where) {
  RopeScaling r;
  if (!f.given(where.c_str())) return r;
  const json& rs = obj.at(where);
  CSKV_CHECK_INPUT(rs.is_object(), path << ": key '" << where
                                        << "': expected an object or null, found " << describe(rs));
  const char* type_key = rs.contains("type") ? "type" : "rope_type";
  CSKV_CHECK_INPUT(rs.contains(type_key),
                   path << ": key '" << where << "': missing 'type' (or 'rope_type')");
  const json& type = rs.at(type_key);
  CSKV_CHECK_INPUT(type.is_string(), path << ": key '" << where << "." << type_key
                                          << "': expected a string, found " << describe(type));
  r.type = type.get<std::string>();
  if (r.type == "default") return RopeScaling{};
  CSKV_CHECK_INPUT(
      r.type == "linear" || r.type == "dynamic" || r.type == "llama3" || r.type == "yarn",
      path << ": " << where << " type '" << r.type
           << "' is not supported (supported: linear, dynamic, llama3, yarn)");
  r.factor = rope_number(rs, path, f, where, "factor");
  // dynamic (HF _compute_dynamic_ntk_parameters) reads factor and the top-level
  // max_position_embeddings only (checked in parse_config_json).
  if (r.type == "linear" || r.type == "dynamic") return r;
  const char* omp = "original_max_position_embeddings";
  CSKV_CHECK_INPUT(rs.contains(omp), path << ": missing required key '" << where << "." << omp
                                          << "' (expected an integer)");
  r.original_max_position_embeddings = f.positive_int_value(where + "." + omp, rs.at(omp));
  if (r.type == "llama3") {
    r.low_freq_factor = rope_number(rs, path, f, where, "low_freq_factor");
    r.high_freq_factor = rope_number(rs, path, f, where, "high_freq_factor");
    CSKV_CHECK_INPUT(r.high_freq_factor > r.low_freq_factor,
                     path << ": " << where << ".high_freq_factor (" << r.high_freq_factor
                          << ") must exceed low_freq_factor (" << r.low_freq_factor << ")");
    return r;
  }
  r.beta_fast = rope_number_or(rs, f, where, "beta_fast", 32);
  r.beta_slow = rope_number_or(rs, f, where, "beta_slow", 1);
  if (rs.contains("truncate") && !rs.at("truncate").is_null()) {
    CSKV_CHECK_INPUT(rs.at("truncate").is_boolean(),
                     path << ": key '" << where << ".truncate': expected a boolean, found "
                          << describe(rs.at("truncate")));
    r.truncate = rs.at("truncate").get<bool>();
  }
  r.attention_factor = yarn_attention_factor(rs, f, where, r.factor);
  return r;
}

// RoPE base and variant: transformers 5.x writes them together as `rope_parameters` (rope_type,
// rope_theta and the variant's keys; rope_theta/rope_scaling at the top level null or absent),
// 4.x as `rope_theta` and `rope_scaling`. Both forms at once must agree.
void parse_rope(const json& obj, const std::string& path, const Fields& f, ModelConfig& c) {
  c.rope_theta = f.positive_number_or("rope_theta", 10000.0);
  c.rope_scaling = parse_rope_scaling(obj, path, f, "rope_scaling");
  if (!f.given("rope_parameters")) return;
  const RopeScaling p = parse_rope_scaling(obj, path, f, "rope_parameters");
  const json& rp = obj.at("rope_parameters");
  const double theta = rope_number_or(rp, f, "rope_parameters", "rope_theta", 10000.0);
  CSKV_CHECK_INPUT(!f.given("rope_theta") || theta == c.rope_theta,
                   path << ": rope_parameters.rope_theta (" << theta << ") contradicts rope_theta ("
                        << c.rope_theta << ")");
  CSKV_CHECK_INPUT(!f.given("rope_scaling") ||
                       (p.type == c.rope_scaling.type && p.factor == c.rope_scaling.factor),
                   path << ": rope_parameters (type '" << p.type << "', factor " << p.factor
                        << ") contradicts rope_scaling (type '" << c.rope_scaling.type
                        << "', factor " << c.rope_scaling.factor << ")");
  c.rope_theta = theta;
  c.rope_scaling = p;
}

std::string torch_dtype_of(const json& obj, const std::string& path) {
  // transformers >= 4.56 writes "dtype"; older versions "torch_dtype".
  const char* key = obj.contains("torch_dtype") ? "torch_dtype" : "dtype";
  if (!obj.contains(key) || obj.at(key).is_null()) return "float32";
  const json& v = obj.at(key);
  CSKV_CHECK_INPUT(v.is_string(), path << ": key '" << key
                                       << "': expected float32|float16|bfloat16, found "
                                       << describe(v));
  const std::string s = v.get<std::string>();
  CSKV_CHECK_INPUT(
      s == "float32" || s == "float16" || s == "bfloat16",
      path << ": key '" << key << "': expected float32|float16|bfloat16, found '" << s << "'");
  return s;
}

// Mistral: `sliding_window` (null or absent: full attention). Qwen2 configs carry a
// `sliding_window` that HF applies only with `use_sliding_window: true` (and then only from layer
// `max_window_layers` on), which cskv does not implement. Llama has no sliding window.
int64_t sliding_window(const json& obj, const std::string& path, const Fields& f, Arch arch) {
  if (arch == Arch::kQwen2) {
    CSKV_CHECK_INPUT(!f.boolean_or("use_sliding_window", false),
                     path << ": key 'use_sliding_window': true is not supported (Qwen2 "
                             "per-layer sliding-window attention); expected false");
    return 0;
  }
  if (arch != Arch::kMistral || !f.given("sliding_window")) return 0;
  return f.positive_int_value("sliding_window", obj.at("sliding_window"));
}

// Upper bounds of the size fields, far above any released model (Llama-3.1-405B: 126 layers,
// hidden 16384, intermediate 53248, vocab 128256): what cskv will build weight lists and
// allocate for before the safetensors headers are compared with the config.
struct SizeLimit {
  const char* key;
  int64_t ModelConfig::*field;
  int64_t limit;
};
constexpr SizeLimit kSizeLimits[] = {
    {"hidden_size", &ModelConfig::hidden_size, int64_t{1} << 20},
    {"num_hidden_layers", &ModelConfig::num_hidden_layers, int64_t{1} << 12},
    {"num_attention_heads", &ModelConfig::num_attention_heads, int64_t{1} << 14},
    {"num_key_value_heads", &ModelConfig::num_key_value_heads, int64_t{1} << 14},
    {"head_dim", &ModelConfig::head_dim, int64_t{1} << 14},
    {"intermediate_size", &ModelConfig::intermediate_size, int64_t{1} << 22},
    {"vocab_size", &ModelConfig::vocab_size, int64_t{1} << 24},
};

void check_size_limits(const ModelConfig& c, const std::string& path) {
  for (const SizeLimit& s : kSizeLimits) {
    CSKV_CHECK_INPUT(c.*s.field <= s.limit, path << ": key '" << s.key << "': " << c.*s.field
                                                 << " exceeds cskv's limit of " << s.limit);
  }
  CSKV_CHECK_INPUT(c.head_dim % 2 == 0, path << ": head_dim " << c.head_dim
                                             << " is odd (RoPE rotates pairs of channels; "
                                                "expected an even head_dim)");
  CSKV_CHECK_INPUT(c.bos_token_id < c.vocab_size, path << ": bos_token_id " << c.bos_token_id
                                                       << " is not below vocab_size "
                                                       << c.vocab_size);
}

// Keys whose values change the forward in ways cskv does not compute: refused by name, with
// what was found and what cskv computes, instead of being silently computed differently.
void check_unimplemented(const json& obj, const std::string& path, const Fields& f) {
  if (f.given("hidden_act")) {
    const json& v = obj.at("hidden_act");
    CSKV_CHECK_INPUT(v.is_string(),
                     path << ": key 'hidden_act': expected a string, found " << describe(v));
    const std::string act = v.get<std::string>();
    CSKV_CHECK_INPUT(
        act == "silu" || act == "swish",
        path << ": hidden_act '" << act << "' is not implemented (cskv computes silu)");
  }
  CSKV_CHECK_INPUT(!f.boolean_or("mlp_bias", false),
                   path << ": mlp_bias true is not implemented (cskv computes MLPs without "
                           "biases)");
  if (f.given("partial_rotary_factor")) {
    const double p =
        f.positive_number_value("partial_rotary_factor", obj.at("partial_rotary_factor"));
    CSKV_CHECK_INPUT(p == 1.0,
                     path << ": partial_rotary_factor " << obj.at("partial_rotary_factor").dump()
                          << " is not implemented (cskv rotates the whole head_dim: 1.0)");
  }
  CSKV_CHECK_INPUT(!f.given("quantization_config"),
                   path << ": quantization_config is not implemented (cskv reads float32, float16 "
                           "or bfloat16 weights; dequantize the model first)");
}

uint64_t fnv1a64(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama:
      return "LlamaForCausalLM";
    case Arch::kMistral:
      return "MistralForCausalLM";
    case Arch::kQwen2:
      return "Qwen2ForCausalLM";
  }
  return "?";
}

const char* model_type_name(Arch a) {
  switch (a) {
    case Arch::kLlama:
      return "llama";
    case Arch::kMistral:
      return "mistral";
    case Arch::kQwen2:
      return "qwen2";
  }
  return "?";
}

ModelConfig parse_config_json(const std::string& json_text, const std::string& path) {
  check_json_bounds(json_text, path);
  json obj;
  try {
    obj = json::parse(json_text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    const auto close = what.find("] ");
    if (what.rfind("[json.exception.", 0) == 0 && close != std::string::npos) {
      what = what.substr(close + 2);
    }
    CSKV_FAIL_INPUT(path << ": malformed JSON: " << what);
  }
  CSKV_CHECK_INPUT(obj.is_object(),
                   path << ": expected a JSON object at the top level, found " << describe(obj));
  const Fields f(obj, path);

  ModelConfig c;
  c.arch = arch_from_config(obj, path);
  c.hidden_size = f.positive_int("hidden_size");
  c.num_hidden_layers = f.positive_int("num_hidden_layers");
  c.num_attention_heads = f.positive_int("num_attention_heads");
  c.num_key_value_heads = f.positive_int_or("num_key_value_heads", c.num_attention_heads);
  c.intermediate_size = f.positive_int("intermediate_size");
  c.vocab_size = f.positive_int("vocab_size");
  CSKV_CHECK_INPUT(c.num_attention_heads % c.num_key_value_heads == 0,
                   path << ": num_attention_heads (" << c.num_attention_heads
                        << ") is not divisible by num_key_value_heads (" << c.num_key_value_heads
                        << ")");
  if (f.given("head_dim")) {
    c.head_dim = f.positive_int("head_dim");
  } else {
    CSKV_CHECK_INPUT(c.hidden_size % c.num_attention_heads == 0,
                     path << ": hidden_size (" << c.hidden_size
                          << ") is not divisible by num_attention_heads (" << c.num_attention_heads
                          << ") and head_dim is not given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = f.positive_number_or("rms_norm_eps", 1e-6);
  parse_rope(obj, path, f, c);
  if (c.rope_scaling.type == "linear") c.rope_scaling_factor = c.rope_scaling.factor;
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", false);
  // Qwen2 always has q/k/v biases; Llama/Mistral only with attention_bias (Llama's key).
  const bool bias_key = f.boolean_or("attention_bias", false);
  c.attention_bias = c.arch == Arch::kQwen2 ? true : bias_key;
  c.torch_dtype = torch_dtype_of(obj, path);
  c.bos_token_id = f.non_negative_int_or("bos_token_id", -1);
  c.sliding_window = sliding_window(obj, path, f, c.arch);
  c.max_position_embeddings = f.positive_int_or("max_position_embeddings", 0);
  // HF would take its class default (2048 for Llama); a silent default would change activations.
  CSKV_CHECK_INPUT(c.rope_scaling.type != "dynamic" || c.max_position_embeddings > 0,
                   path << ": rope_scaling type 'dynamic' needs key 'max_position_embeddings' "
                           "(the length beyond which dynamic NTK raises the RoPE base)");
  check_size_limits(c, path);
  check_unimplemented(obj, path, f);
  return c;
}

ModelConfig load_config(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "config");
  CSKV_CHECK_INPUT(text, path << ": cannot open file (expected a Hugging Face config.json)");
  return parse_config_json(*text, path);
}

std::string ModelConfig::canonical_json() const {
  json j;  // nlohmann's default object keeps keys sorted
  j["architecture"] = arch_name(arch);
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = intermediate_size;
  j["vocab_size"] = vocab_size;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling_factor"] = rope_scaling_factor;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["torch_dtype"] = torch_dtype;
  j["bos_token_id"] = bos_token_id;
  // Only when set, so that the hashes of models without a window stay what they were.
  if (sliding_window > 0) j["sliding_window"] = sliding_window;
  if (!rope_scaling.type.empty() && rope_scaling.type != "linear") j["rope_scaling"] = rope_json();
  // dynamic's base depends on the sequence length relative to max_position_embeddings.
  if (rope_scaling.type == "dynamic") {
    j["rope_scaling"]["max_position_embeddings"] = max_position_embeddings;
  }
  return j.dump();
}

nlohmann::json ModelConfig::rope_json() const {
  const RopeScaling& r = rope_scaling;
  json j{{"rope_type", r.type}, {"factor", r.factor}};
  if (r.type == "dynamic") return j;
  j["original_max_position_embeddings"] = r.original_max_position_embeddings;
  if (r.type == "llama3") {
    j["low_freq_factor"] = r.low_freq_factor;
    j["high_freq_factor"] = r.high_freq_factor;
  } else {
    j["beta_fast"] = r.beta_fast;
    j["beta_slow"] = r.beta_slow;
    j["truncate"] = r.truncate;
    j["attention_factor"] = r.attention_factor;
  }
  return j;
}

std::string ModelConfig::hash() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, fnv1a64(canonical_json()));
  return buf;
}

std::string ModelConfig::to_json() const {
  nlohmann::ordered_json j;
  j["architectures"] = {arch_name(arch)};
  j["model_type"] = model_type_name(arch);
  j["hidden_act"] = "silu";
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["vocab_size"] = vocab_size;
  if (max_position_embeddings > 0) j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (!rope_scaling.type.empty() && rope_scaling.type != "linear") {
    j["rope_scaling"] = nlohmann::ordered_json::parse(rope_json().dump());
  } else if (rope_scaling_factor == 1.0) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {{"type", "linear"}, {"factor", rope_scaling_factor}};
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (arch != Arch::kQwen2) j["attention_bias"] = attention_bias;
  j["torch_dtype"] = torch_dtype;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (arch == Arch::kMistral) {
    j["sliding_window"] = sliding_window > 0 ? nlohmann::ordered_json(sliding_window) : nullptr;
  }
  return j.dump(2) + "\n";
}

std::vector<std::pair<std::string, WeightShape>> expected_weight_list(const ModelConfig& c) {
  const int64_t H = c.hidden_size, D = c.kv_dim(), Q = c.q_dim(), I = c.intermediate_size;
  std::vector<std::pair<std::string, WeightShape>> w;
  w.emplace_back("model.embed_tokens.weight", WeightShape{c.vocab_size, H});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.emplace_back(p + "input_layernorm.weight", WeightShape{H});
    w.emplace_back(p + "self_attn.q_proj.weight", WeightShape{Q, H});
    if (c.attention_bias) w.emplace_back(p + "self_attn.q_proj.bias", WeightShape{Q});
    w.emplace_back(p + "self_attn.k_proj.weight", WeightShape{D, H});
    if (c.attention_bias) w.emplace_back(p + "self_attn.k_proj.bias", WeightShape{D});
    w.emplace_back(p + "self_attn.v_proj.weight", WeightShape{D, H});
    if (c.attention_bias) w.emplace_back(p + "self_attn.v_proj.bias", WeightShape{D});
    w.emplace_back(p + "self_attn.o_proj.weight", WeightShape{H, Q});
    w.emplace_back(p + "post_attention_layernorm.weight", WeightShape{H});
    w.emplace_back(p + "mlp.gate_proj.weight", WeightShape{I, H});
    w.emplace_back(p + "mlp.up_proj.weight", WeightShape{I, H});
    w.emplace_back(p + "mlp.down_proj.weight", WeightShape{H, I});
  }
  w.emplace_back("model.norm.weight", WeightShape{H});
  if (!c.tie_word_embeddings) w.emplace_back("lm_head.weight", WeightShape{c.vocab_size, H});
  return w;
}

std::map<std::string, WeightShape> expected_weights(const ModelConfig& c) {
  const auto list = expected_weight_list(c);
  return {list.begin(), list.end()};
}

}  // namespace cskv::model
