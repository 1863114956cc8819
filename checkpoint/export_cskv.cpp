// The reference-format export: per kind, a pickled list over layers of (a.state_dict(),
// b.state_dict()) via torch::pickle_save, written atomically. The only <torch/serialize.h> user.
#include "checkpoint/export_cskv.h"

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <torch/serialize.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/output_dir.h"

namespace cskv::checkpoint {

namespace fs = std::filesystem;
using trainer::KvKind;

namespace {

c10::IValue state_dict(const at::Tensor& weight) {
  c10::Dict<std::string, at::Tensor> d;
  d.insert("weight", weight.contiguous());
  return c10::IValue(d);
}

// The layers of one kind, checked to be exactly 0..n-1 and to match the other kind's.
int64_t layer_count(const FactorMap& factors) {
  std::vector<int64_t> k_layers, v_layers;
  for (const auto& [key, lf] : factors) {
    (key.second == KvKind::kKey ? k_layers : v_layers).push_back(key.first);
  }
  const auto show = [](const std::vector<int64_t>& v) {
    std::string s;
    for (const int64_t l : v) s += (s.empty() ? "" : ", ") + std::to_string(l);
    return s.empty() ? std::string("none") : s;
  };
  bool contiguous = !k_layers.empty() && k_layers == v_layers;
  for (size_t i = 0; contiguous && i < k_layers.size(); ++i) {
    contiguous = k_layers[i] == static_cast<int64_t>(i);
  }
  CSKV_CHECK_INPUT(contiguous,
                   "--export-cskv: the reference format is a list indexed by layer, so it needs "
                   "K and V factors of every layer 0..n-1; found K layers "
                       << show(k_layers) << " and V layers " << show(v_layers));
  return static_cast<int64_t>(k_layers.size());
}

}  // namespace

bool is_cskv_export(const std::string& path) {
  try {
    const std::string bytes = files::read_whole_file(path, files::kDefaultMaxReadBytes, "export");
    const c10::IValue v = torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
    if (!v.isList()) return false;
    for (const c10::IValue& item : v.toListRef()) {
      if (!item.isTuple() || item.toTupleRef().elements().size() != 2) return false;
      for (const c10::IValue& d : item.toTupleRef().elements()) {
        if (!d.isGenericDict()) return false;
        const auto dict = d.toGenericDict();
        if (dict.size() != 1 || !dict.contains("weight") || !dict.at("weight").isTensor()) {
          return false;
        }
      }
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

void check_export_outputs(const std::string& dir, const std::string& name, bool overwrite) {
  CSKV_CHECK_INPUT(!name.empty() && name.find('/') == std::string::npos,
                   "--name: expected a plain file-name prefix, found '" << name << "'");
  if (overwrite) return;
  for (const char* kind : {"_k.ckpt", "_v.ckpt"}) {
    const std::string path = dir + "/" + name + kind;
    std::error_code ec;
    if (fs::exists(fs::symlink_status(path, ec)) && !is_cskv_export(path)) {
      files::refuse_foreign_file(path, "expected a cskv --export-cskv file", "--export-cskv");
    }
  }
}

ExportedFiles export_cskv(const FactorMap& factors, const std::string& dir, const std::string& name,
                          bool overwrite) {
  for (const auto& [key, lf] : factors) {
    CSKV_CHECK_USAGE(lf.codes.empty(),
                     "--export-cskv: the factors are coded with --quant waterfill (a width and "
                     "static range per latent channel), which the reference CSKV format cannot "
                     "hold; evaluate them with `cskv eval`, or train with --quant uniform to "
                     "export");
  }
  check_export_outputs(dir, name, overwrite);
  const int64_t n = layer_count(factors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  CSKV_CHECK(!ec, dir << ": cannot create the directory: " << ec.message());

  const auto dict_type = c10::DictType::create(c10::StringType::get(), c10::TensorType::get());
  const auto tuple_type = c10::TupleType::create({dict_type, dict_type});
  ExportedFiles out{dir + "/" + name + "_k.ckpt", dir + "/" + name + "_v.ckpt"};
  for (const KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    c10::impl::GenericList list(tuple_type);
    for (int64_t l = 0; l < n; ++l) {
      const LinearFactors& lf = factors.at({l, kind});
      CSKV_CHECK_INPUT(lf.a.scalar_type() == at::kFloat && lf.b.scalar_type() == at::kFloat,
                       "--export-cskv: layer " << l << " " << trainer::kv_kind_name(kind)
                                               << " factors must be float32");
      list.push_back(c10::ivalue::Tuple::create(state_dict(lf.a), state_dict(lf.b)));
    }
    const std::vector<char> bytes = torch::pickle_save(c10::IValue(list));
    files::write_file_atomic(kind == KvKind::kKey ? out.k_path : out.v_path,
                             std::string(bytes.begin(), bytes.end()));
  }
  log::get("checkpoint")->info("exported {} layer(s) to {} and {}", n, out.k_path, out.v_path);
  return out;
}

ExportedFiles export_cskv(const std::string& compressor_path, const std::string& dir,
                          const std::string& name, bool overwrite) {
  return export_cskv(read_merged_factors(compressor_path), dir, name, overwrite);
}

}  // namespace cskv::checkpoint
