// LayerStats accumulation (float64 addmm of each rounded batch) and stats.h5 read/write.
// Writes go through "<path>.partial" so a killed capture never leaves a stats file behind.
#include "data/layer_stats.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <sstream>
#include <utility>

#include "common/error.h"
#include "common/fs.h"
#include "common/log.h"
#include "data/capture_identity.h"
#include "data/manifest.h"

namespace cskv::data {

namespace fs = std::filesystem;

LayerStats::LayerStats(std::vector<int64_t> layers, int64_t hidden_size, ActivationDtype stored)
    : layers_(std::move(layers)), hidden_size_(hidden_size), stored_(stored) {
  CSKV_CHECK(hidden_size_ > 0, "LayerStats: hidden_size must be > 0, got " << hidden_size_);
  std::sort(layers_.begin(), layers_.end());
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  for (const int64_t l : layers_) {
    CSKV_CHECK(sums_.count(l) == 0, "LayerStats: layer " << l << " listed twice");
    sums_[l] = LayerSums{at::zeros({hidden_size_, hidden_size_}, opts),
                         at::zeros({hidden_size_}, opts), at::zeros({1}, opts)};
  }
}

LayerSums& LayerStats::sums(int64_t layer) {
  auto it = sums_.find(layer);
  CSKV_CHECK(it != sums_.end(), "LayerStats: layer " << layer << " is not tracked");
  return it->second;
}

const LayerSums& LayerStats::sums(int64_t layer) const {
  auto it = sums_.find(layer);
  CSKV_CHECK(it != sums_.end(), "LayerStats: layer " << layer << " is not tracked");
  return it->second;
}

void LayerStats::add(int64_t layer, const at::Tensor& x) {
  LayerSums& s = sums(layer);
  CSKV_CHECK(x.dim() == 2 && x.size(1) == hidden_size_,
             "LayerStats: layer " << layer << " expects [n, " << hidden_size_
                                  << "] activations, got " << x.sizes());
  if (x.size(0) == 0) return;
  const at::Tensor xd = round_to_storage(x.to(at::kCPU), stored_).to(at::kDouble);
  s.gram.addmm_(xd.t(), xd);
  s.abs_sum.add_(xd.abs().sum(0));
  s.token_count.add_(static_cast<double>(x.size(0)));
}

std::vector<at::Tensor> LayerStats::reduction_tensors() {
  std::vector<at::Tensor> out;
  for (const int64_t l : layers_) {
    LayerSums& s = sums_.at(l);
    out.push_back(s.gram);
    out.push_back(s.abs_sum);
    out.push_back(s.token_count);
  }
  return out;
}

int64_t LayerStats::token_count(int64_t layer) const {
  return static_cast<int64_t>(sums(layer).token_count.item<double>());
}

at::Tensor LayerStats::abs_mean(int64_t layer) const {
  const LayerSums& s = sums(layer);
  const double n = s.token_count.item<double>();
  CSKV_CHECK(n > 0, "LayerStats: layer " << layer << " has no tokens, mean |x| is undefined");
  return s.abs_sum / n;
}

namespace {

void write_f64_dataset(hid_t file, const std::string& name, const at::Tensor& t,
                       const std::string& path) {
  h5::Guard g;
  const at::Tensor c = t.to(at::kDouble).contiguous();
  std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
  h5::Handle space(
      H5_CHECK(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), path, name),
      h5::Handle::Kind::kDataspace);
  const h5::Handle dcpl = h5::dataset_create_plist(path, name);  // no object times
  h5::Handle ds(H5_CHECK(H5Dcreate2(file, name.c_str(), H5T_IEEE_F64LE, space.get(), H5P_DEFAULT,
                                    dcpl.get(), H5P_DEFAULT),
                         path, name),
                h5::Handle::Kind::kDataset);
  H5_CHECK(H5Dwrite(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.data_ptr()), path,
           name);
  ds.close(path, name);
}

at::Tensor read_f64_dataset(hid_t file, const std::string& name,
                            const std::vector<int64_t>& expected, const std::string& path) {
  h5::Guard g;
  CSKV_CHECK_INPUT(H5_CHECK(H5Lexists(file, name.c_str(), H5P_DEFAULT), path, name) > 0,
                   path << ": dataset " << name << " is missing");
  h5::Handle ds(H5_CHECK(H5Dopen2(file, name.c_str(), H5P_DEFAULT), path, name),
                h5::Handle::Kind::kDataset);
  h5::Handle space(H5_CHECK(H5Dget_space(ds.get()), path, name), h5::Handle::Kind::kDataspace);
  const int rank = H5_CHECK(H5Sget_simple_extent_ndims(space.get()), path, name);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), path, name);
  const std::vector<int64_t> found(dims.begin(), dims.end());
  CSKV_CHECK_INPUT(found == expected, path << ": dataset " << name << " has shape "
                                           << at::IntArrayRef(found) << ", expected "
                                           << at::IntArrayRef(expected));
  at::Tensor t = at::empty(expected, at::kDouble);
  H5_CHECK(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()), path,
           name);
  return t;
}

StatsFile read_header(hid_t file, const std::string& path, const std::string& expected_hash) {
  StatsFile s;
  const int64_t version = h5::read_attr_i64(file, "format_version", path);
  CSKV_CHECK_INPUT(version == kStatsFormatVersion, path << ": stats format_version is " << version
                                                        << ", this build reads version "
                                                        << kStatsFormatVersion);
  s.model_config_hash = h5::read_attr_string(file, "model_config_hash", path);
  CSKV_CHECK_INPUT(expected_hash.empty() || s.model_config_hash == expected_hash,
                   path << ": model_config_hash is '" << s.model_config_hash << "', expected '"
                        << expected_hash << "'");
  if (H5_CHECK(H5Aexists(file, "capture_identity"), path, "attribute capture_identity") > 0) {
    s.capture_identity = h5::read_attr_string(file, "capture_identity", path);
  }
  s.hidden_size = h5::read_attr_i64(file, "hidden_size", path);
  s.token_count = h5::read_attr_i64(file, "token_count", path);
  s.layers = h5::read_attr_i64_array(file, "layers", path);
  return s;
}

// Refuses a NaN or Inf anywhere in t (float64, contiguous), naming the layer, the matrix and
// the first such index.
void check_finite(const at::Tensor& t, int64_t layer, const char* matrix, const std::string& path) {
  const double* p = t.data_ptr<double>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(p[i])) continue;
    std::ostringstream index;
    if (t.dim() == 2) {
      index << i / t.size(1) << ", " << i % t.size(1);
    } else {
      index << i;
    }
    CSKV_FAIL_INPUT(path << ": layer " << layer << " " << matrix << " holds " << p[i] << " at ["
                         << index.str() << "] (non-finite statistics; re-run cskv capture)");
  }
}

LayerStatistics read_layer(hid_t file, int64_t layer, int64_t hidden, const std::string& path) {
  const std::string base = "/layers/" + std::to_string(layer);
  LayerStatistics l;
  l.gram = read_f64_dataset(file, base + "/gram", {hidden, hidden}, path);
  l.abs_mean = read_f64_dataset(file, base + "/abs_mean", {hidden}, path);
  check_finite(l.gram, layer, "gram", path);
  check_finite(l.abs_mean, layer, "abs_mean", path);
  return l;
}

}  // namespace

void write_stats(const std::string& path, const LayerStats& stats,
                 const std::string& model_config_hash, const std::string& capture_identity) {
  CSKV_CHECK(!stats.layers().empty(), path << ": no layers to write");
  const int64_t count = stats.token_count(stats.layers().front());
  for (const int64_t l : stats.layers()) {
    CSKV_CHECK(stats.token_count(l) == count, path << ": layer " << l << " saw "
                                                   << stats.token_count(l) << " tokens, layer "
                                                   << stats.layers().front() << " saw " << count);
  }
  const std::string tmp = path + ".partial";
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  try {
    h5::Guard g;
    const h5::Handle fcpl = h5::file_create_plist(tmp);  // byte-identical reruns
    h5::Handle file(
        H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), tmp, "file"),
        h5::Handle::Kind::kFile);
    h5::write_attr_i64(file.get(), "format_version", kStatsFormatVersion, tmp);
    h5::write_attr_string(file.get(), "model_config_hash", model_config_hash, tmp);
    if (!capture_identity.empty()) {
      h5::write_attr_string(file.get(), "capture_identity", capture_identity, tmp);
    }
    h5::write_attr_i64(file.get(), "hidden_size", stats.hidden_size(), tmp);
    h5::write_attr_i64_array(file.get(), "layers", stats.layers(), tmp);
    h5::write_attr_i64(file.get(), "token_count", count, tmp);
    for (const int64_t l : stats.layers()) {
      const std::string base = "/layers/" + std::to_string(l);
      h5::create_groups(file.get(), base, tmp);
      write_f64_dataset(file.get(), base + "/gram", stats.sums(l).gram, tmp);
      write_f64_dataset(
          file.get(), base + "/abs_mean",
          count > 0 ? stats.abs_mean(l) : at::zeros({stats.hidden_size()}, at::kDouble), tmp);
    }
    file.close(tmp, "file");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  files::commit_temp_file(tmp, path);
}

StatsFile read_stats_header(const std::string& path, const std::string& expected_hash) {
  h5::Guard g;
  h5::Handle file = h5::open_file_readonly(path);
  return read_header(file.get(), path, expected_hash);
}

StatsFile read_stats(const std::string& path, const std::string& expected_hash) {
  h5::Guard g;
  h5::Handle file = h5::open_file_readonly(path);
  StatsFile s = read_header(file.get(), path, expected_hash);
  for (const int64_t l : s.layers) s.per_layer[l] = read_layer(file.get(), l, s.hidden_size, path);
  return s;
}

LayerStatistics read_layer_stats(const std::string& path, int64_t layer) {
  h5::Guard g;
  h5::Handle file = h5::open_file_readonly(path);
  StatsFile s = read_header(file.get(), path, "");
  CSKV_CHECK_INPUT(std::find(s.layers.begin(), s.layers.end(), layer) != s.layers.end(),
                   path << ": layer " << layer << " has no statistics");
  return read_layer(file.get(), layer, s.hidden_size, path);
}

namespace {

std::string layer_list(const std::vector<int64_t>& layers) {
  std::ostringstream out;
  for (size_t i = 0; i < layers.size(); ++i) out << (i ? "," : "") << layers[i];
  return out.str();
}

// The layers the capture's shards hold (the first listed shard's; every shard holds the same).
std::pair<std::string, std::vector<int64_t>> captured_layers(const std::string& acts_dir) {
  const auto entries = read_manifest(acts_dir);
  CSKV_CHECK_INPUT(!entries.empty(), manifest_path(acts_dir) << " lists no shard");
  const std::string shard = acts_dir + "/" + entries.front().file;
  return {shard, read_shard_header(shard).layers};
}

}  // namespace

StatsFile read_capture_stats_header(const std::string& acts_dir, const std::string& expected_hash) {
  const std::string path = acts_dir + "/stats.h5";
  StatsFile s = read_stats_header(path, expected_hash);
  const std::optional<std::string> capture = read_capture_identity(acts_dir);
  if (s.capture_identity.empty()) {
    if (log::rank() == 0) {  // every rank reads the same file: one warning for all
      log::get("data")->warn(
          "{} records no capture_identity (written by an older cskv), so it cannot be checked "
          "against {}; re-run cskv capture --overwrite to record it",
          path, capture_json_path(acts_dir));
    }
  } else {
    CSKV_CHECK_INPUT(capture, path << ": records capture_identity " << s.capture_identity
                                   << ", but " << capture_json_path(acts_dir)
                                   << " does not exist (cannot tell which capture it belongs to)");
    CSKV_CHECK_INPUT(*capture == s.capture_identity,
                     path << ": capture_identity is " << s.capture_identity << ", but "
                          << capture_json_path(acts_dir) << " gives " << *capture
                          << " (stats.h5 belongs to another capture; re-run cskv capture)");
  }
  const auto [shard, layers] = captured_layers(acts_dir);
  std::vector<int64_t> missing;
  for (const int64_t l : layers) {
    if (std::find(s.layers.begin(), s.layers.end(), l) == s.layers.end()) missing.push_back(l);
  }
  CSKV_CHECK_INPUT(missing.empty(), path << ": no statistics for layer(s) " << layer_list(missing)
                                         << " that " << shard << " holds (stats.h5 has "
                                         << layer_list(s.layers)
                                         << "; re-run cskv capture --overwrite)");
  return s;
}

}  // namespace cskv::data
