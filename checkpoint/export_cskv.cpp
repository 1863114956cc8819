// The reference-format export: per kind, a pickled list over layers of (a.state_dict(),
// b.state_dict()) in torch.save's zip layout without TorchScript type tags, written atomically.
// The only user of LibTorch's pickler.
#include "checkpoint/export_cskv.h"

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
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

// What Python's torch.save writes for `value`: a zip of byteorder, data.pkl (pickle protocol 2 of
// lists, tuples, dicts and tensors as torch._utils._rebuild_tensor_v2 of a persistent storage id)
// and data/<key> per storage. torch::pickle_save would wrap every list and dict in
// torch.jit._pickle.restore_type_tag, which torch.load refuses under weights_only=True.
std::string torch_save_bytes(const c10::IValue& value) {
  std::string pickle;
  torch::jit::Pickler pickler([&](const char* p, size_t n) { pickle.append(p, n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
                              /*memoized_class_types=*/nullptr, /*get_tensor_id=*/nullptr,
                              /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  std::string zip;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* p, size_t n) {
    zip.append(static_cast<const char*>(p), n);
    return n;
  });
  const std::string byteorder = "little";
  writer.writeRecord("byteorder", byteorder.data(), byteorder.size());
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(),
                                     writer);
  writer.writeEndOfFile();
  return zip;
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
  if (name.empty()) return;
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

namespace {
// The reference format has one quantizer for every channel: waterfill codes cannot go there.
void refuse_waterfill(const FactorMap& factors) {
  for (const auto& [key, lf] : factors) {
    CSKV_CHECK_USAGE(lf.codes.empty(),
                     "--export-cskv: the factors are coded with --quant waterfill (a width and "
                     "static range per latent channel), which the reference CSKV format cannot "
                     "hold; evaluate them with `cskv eval`, or train with --quant uniform to "
                     "export");
  }
}
}  // namespace

ExportedFiles export_cskv(const FactorMap& factors, const std::string& dir, const std::string& name,
                          bool overwrite) {
  refuse_waterfill(factors);
  CSKV_CHECK_INPUT(!name.empty(), "--name: expected a plain file-name prefix, found ''");
  check_export_outputs(dir, name, overwrite);
  const int64_t n = layer_count(factors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  CSKV_CHECK(!ec, dir << ": cannot create the directory: " << ec.message());

  const auto dict_type = c10::DictType::create(c10::StringType::get(), c10::TensorType::get());
  const auto tuple_type = c10::TupleType::create({dict_type, dict_type});
  ExportedFiles out{dir + "/" + name + "_k.ckpt", dir + "/" + name + "_v.ckpt", ""};
  for (const KvKind kind : {KvKind::kKey, KvKind::kValue}) {
    c10::impl::GenericList list(tuple_type);
    for (int64_t l = 0; l < n; ++l) {
      const LinearFactors& lf = factors.at({l, kind});
      CSKV_CHECK_INPUT(lf.a.scalar_type() == at::kFloat && lf.b.scalar_type() == at::kFloat,
                       "--export-cskv: layer " << l << " " << trainer::kv_kind_name(kind)
                                               << " factors must be float32");
      list.push_back(c10::ivalue::Tuple::create(state_dict(lf.a), state_dict(lf.b)));
    }
    files::write_file_atomic(kind == KvKind::kKey ? out.k_path : out.v_path,
                             torch_save_bytes(c10::IValue(list)));
  }
  log::get("checkpoint")->info("exported {} layer(s) to {} and {}", n, out.k_path, out.v_path);
  return out;
}

ExportedFiles export_for_reference(const FactorMap& factors, const nlohmann::json& config,
                                   const model::ModelConfig& model, const std::string& dir,
                                   const std::string& name, bool overwrite) {
  refuse_waterfill(factors);
  const ReferenceRun ref = reference_run(factors, config, model);
  for (const std::string& w : ref.warnings) log::get("checkpoint")->warn("--export-cskv: {}", w);
  ExportedFiles out = export_cskv(factors, dir, name.empty() ? ref.file_name() : name, overwrite);
  const fs::path absolute = fs::absolute(dir).lexically_normal();
  const fs::path leaf = absolute.has_filename() ? absolute : absolute.parent_path();
  out.reference_arguments = "--kv_ckpt_root_path " + leaf.parent_path().string() + " --model_id " +
                            leaf.filename().string() + " " + ref.arguments();
  return out;
}

ExportedFiles export_cskv(const std::string& compressor_path, const std::string& dir,
                          const std::string& name, bool overwrite) {
  return export_cskv(read_merged_factors(compressor_path), dir, name, overwrite);
}

}  // namespace cskv::checkpoint
