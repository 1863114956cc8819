// compressor.safetensors: tensor names, the __metadata__ schema (CompressorSettings), the writer
// used by training and merge, and the reader used by eval and merge.
#include "checkpoint/compressor_file.h"

#include <filesystem>

#include "common/error.h"

namespace cskv::checkpoint {
namespace {

using trainer::KvKind;

const std::string& meta_value(const model::Metadata& meta, const std::string& path,
                              const std::string& key) {
  const auto it = meta.find(key);
  CSKV_CHECK_INPUT(it != meta.end(),
                   path << ": __metadata__ has no '" << key
                        << "' (the quantization settings the factors were trained with); "
                           "expected a file written by `cskv merge` or `cskv train`");
  return it->second;
}

int64_t meta_int(const model::Metadata& meta, const std::string& path, const std::string& key) {
  const std::string& text = meta_value(meta, path, key);
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  CSKV_FAIL_INPUT(path << ": __metadata__ '" << key << "' is '" << text
                       << "', expected an integer");
  return 0;  // not reached
}

// Both factors present and a [r, H], b [D, r] with the same r.
void check_factor_pair(const JobKey& key, const LinearFactors& lf, const std::string& path) {
  for (const char w : {'a', 'b'}) {
    CSKV_CHECK_INPUT((w == 'a' ? lf.a : lf.b).defined(),
                     path << ": tensor '" << factor_name(key.first, key.second, w)
                          << "' is missing (its partner is present)");
  }
  CSKV_CHECK_INPUT(lf.a.size(0) == lf.b.size(1),
                   path << ": layer " << key.first << " " << trainer::kv_kind_name(key.second)
                        << ": a is " << lf.a.sizes() << " and b is " << lf.b.sizes()
                        << ", expected a [r, H] and b [D, r] with the same r");
}

void create_parent_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  CSKV_CHECK(!ec, parent.string() << ": cannot create the directory: " << ec.message());
}

}  // namespace

std::string factor_name(int64_t layer, KvKind kind, char which) {
  return "model.layers." + std::to_string(layer) + ".self_attn." +
         (kind == KvKind::kKey ? "k" : "v") + "_proj_" + std::string(1, which) + ".weight";
}

bool parse_factor_name(const std::string& name, int64_t& layer, KvKind& kind, char& which) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t pos = prefix.size();
  const size_t digits_end = name.find_first_not_of("0123456789", pos);
  if (digits_end == std::string::npos || digits_end == pos || digits_end - pos > 9) return false;
  const int64_t l = std::stoll(name.substr(pos, digits_end - pos));
  for (const KvKind k : {KvKind::kKey, KvKind::kValue}) {
    for (const char w : {'a', 'b'}) {
      if (factor_name(l, k, w) == name) {
        layer = l;
        kind = k;
        which = w;
        return true;
      }
    }
  }
  return false;
}

std::string latent_code_name(int64_t layer, KvKind kind, const char* what) {
  return "model.layers." + std::to_string(layer) + ".self_attn." +
         (kind == KvKind::kKey ? "k" : "v") + "_latent_" + what;
}

bool CompressorSettings::operator==(const CompressorSettings& o) const {
  return model_config_hash == o.model_config_hash && k_bits == o.k_bits && v_bits == o.v_bits &&
         group_size == o.group_size && window == o.window &&
         quant_compat_cskv == o.quant_compat_cskv && waterfill == o.waterfill;
}

CompressorSettings compressor_settings(const std::string& model_config_hash,
                                       const trainer::TrainConfig& cfg) {
  return {model_config_hash,
          cfg.k_bits,
          cfg.v_bits,
          cfg.group_size,
          cfg.window,
          cfg.quant_compat_cskv,
          cfg.quant == trainer::QuantMode::kWaterfill};
}

model::Metadata compressor_metadata(const CompressorSettings& s) {
  model::Metadata m = {{"model_config_hash", s.model_config_hash},
                       {"format", kCompressorFormat},
                       {"k_bits", std::to_string(s.k_bits)},
                       {"v_bits", std::to_string(s.v_bits)},
                       {"group_size", std::to_string(s.group_size)},
                       {"window", std::to_string(s.window)},
                       {"quant_compat", s.quant_compat_cskv ? "cskv" : "none"}};
  if (s.waterfill) m["quant"] = "waterfill";
  return m;
}

CompressorSettings parse_compressor_settings(const model::Metadata& meta, const std::string& path) {
  CompressorSettings s;
  s.model_config_hash = meta_value(meta, path, "model_config_hash");
  s.k_bits = static_cast<int>(meta_int(meta, path, "k_bits"));
  s.v_bits = static_cast<int>(meta_int(meta, path, "v_bits"));
  s.group_size = meta_int(meta, path, "group_size");
  s.window = meta_int(meta, path, "window");
  const std::string compat = meta_value(meta, path, "quant_compat");
  CSKV_CHECK_INPUT(
      compat == "none" || compat == "cskv",
      path << ": __metadata__ 'quant_compat' is '" << compat << "', expected none or cskv");
  s.quant_compat_cskv = compat == "cskv";
  const auto quant = meta.find("quant");
  if (quant != meta.end()) {
    CSKV_CHECK_INPUT(quant->second == "uniform" || quant->second == "waterfill",
                     path << ": __metadata__ 'quant' is '" << quant->second
                          << "', expected uniform or waterfill");
    s.waterfill = quant->second == "waterfill";
  }
  return s;
}

void write_compressor_file(const std::string& path, const FactorList& factors,
                           const model::Metadata& metadata) {
  model::NamedTensors tensors;
  for (const auto& [key, lf] : factors) {
    tensors.emplace_back(factor_name(key.first, key.second, 'a'), lf.a);
    tensors.emplace_back(factor_name(key.first, key.second, 'b'), lf.b);
    if (lf.codes.empty()) continue;
    std::vector<uint8_t> bits;
    std::vector<float> scale, offset;
    for (const auto& c : lf.codes) {
      bits.push_back(static_cast<uint8_t>(c.bits));
      scale.push_back(c.scale);
      offset.push_back(c.offset);
    }
    tensors.emplace_back(latent_code_name(key.first, key.second, "bits"),
                         at::tensor(at::ArrayRef<uint8_t>(bits), at::kByte));
    tensors.emplace_back(latent_code_name(key.first, key.second, "scale"),
                         at::tensor(scale, at::kFloat));
    tensors.emplace_back(latent_code_name(key.first, key.second, "offset"),
                         at::tensor(offset, at::kFloat));
  }
  create_parent_directory(path);
  model::write_safetensors(path, tensors, metadata);
}

void write_trained_compressor(const std::string& path, const std::vector<trainer::JobState>& states,
                              const std::string& model_config_hash, const trainer::TrainConfig& cfg,
                              const model::Metadata& extra) {
  FactorList factors;
  for (const auto& s : states) {
    factors.push_back(
        {{s.job.layer, s.job.kind}, {s.A.t().contiguous(), s.B.t().contiguous(), s.job.codes}});
  }
  // The quantization settings travel with the factors (as in a merged file), so `cskv eval`
  // can build the cache they were trained for.
  model::Metadata metadata = compressor_metadata(compressor_settings(model_config_hash, cfg));
  for (const auto& [k, v] : extra) metadata[k] = v;
  write_compressor_file(path, factors, metadata);
}

namespace {

// One [r] tensor of a job's channel codes, of the given dtype.
at::Tensor read_code_tensor(const model::SafetensorsFile& f, const std::string& name,
                            model::StDType dtype, int64_t r, const std::string& path) {
  CSKV_CHECK_INPUT(f.contains(name), path << ": tensor '" << name
                                          << "' is missing (a waterfill file holds the code of "
                                             "every latent channel)");
  const auto& e = f.entry(name);
  CSKV_CHECK_INPUT(e.dtype == dtype && e.shape == std::vector<int64_t>{r},
                   path << ": tensor '" << name << "' is " << model::dtype_name(e.dtype) << " "
                        << at::IntArrayRef(e.shape) << ", expected " << model::dtype_name(dtype)
                        << " [" << r << "]");
  return f.get(name).clone();
}

std::vector<trainer::ChannelCode> read_codes(const model::SafetensorsFile& f, const JobKey& key,
                                             int64_t r, const std::string& path) {
  const auto [layer, kind] = key;
  const at::Tensor bits =
      read_code_tensor(f, latent_code_name(layer, kind, "bits"), model::StDType::kU8, r, path);
  const at::Tensor scale =
      read_code_tensor(f, latent_code_name(layer, kind, "scale"), model::StDType::kF32, r, path);
  const at::Tensor offset =
      read_code_tensor(f, latent_code_name(layer, kind, "offset"), model::StDType::kF32, r, path);
  std::vector<trainer::ChannelCode> codes;
  for (int64_t j = 0; j < r; ++j) {
    codes.push_back({bits[j].item<int>(), offset[j].item<float>(), scale[j].item<float>()});
  }
  trainer::QuantConfig q;
  q.channels = codes;
  try {
    trainer::validate_quant_config(q, r);
  } catch (const std::exception& e) {
    CSKV_FAIL_INPUT(path << ": layer " << layer << " " << trainer::kv_kind_name(kind)
                         << ": bad latent code: " << e.what());
  }
  return codes;
}

}  // namespace

FactorMap read_compressor_factors(const model::SafetensorsFile& f, const std::string& path,
                                  bool waterfill) {
  FactorMap out;
  for (const auto& [name, e] : f.header().tensors) {
    int64_t layer = 0;
    KvKind kind = KvKind::kKey;
    char which = 'a';
    if (!parse_factor_name(name, layer, kind, which)) continue;
    CSKV_CHECK_INPUT(e.dtype == model::StDType::kF32 && e.shape.size() == 2,
                     path << ": tensor '" << name << "' is " << model::dtype_name(e.dtype) << " "
                          << at::IntArrayRef(e.shape) << ", expected a 2-D F32 tensor");
    LinearFactors& lf = out[{layer, kind}];
    (which == 'a' ? lf.a : lf.b) = f.get(name).clone();
  }
  CSKV_CHECK_INPUT(!out.empty(), path << ": holds no cskv factors "
                                      << "(model.layers.<l>.self_attn.{k,v}_proj_{a,b}.weight)");
  for (auto& [key, lf] : out) {
    check_factor_pair(key, lf, path);
    if (waterfill) lf.codes = read_codes(f, key, lf.a.size(0), path);
  }
  return out;
}

CompressorFile read_compressor_file(const std::string& path) {
  const auto file = model::SafetensorsFile::open(path);
  CompressorFile c;
  c.path = path;
  c.metadata = file->header().metadata;
  c.settings = parse_compressor_settings(c.metadata, path);
  c.factors = read_compressor_factors(*file, path, c.settings.waterfill);
  return c;
}

bool is_compressor_file(const std::string& path) {
  try {
    const auto file = model::SafetensorsFile::open(path);  // owns the header read below
    const auto& metadata = file->header().metadata;
    const auto it = metadata.find("format");
    return it != metadata.end() && it->second == kCompressorFormat;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace cskv::checkpoint
