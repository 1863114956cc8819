// ActivationShardWriter (write to "<path>.partial", fsync, rename) and the shard header reader.
// Layer datasets are chunked one sequence per chunk and extended along tokens on every append.
#include "data/activation_shard.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/fs.h"
#include "data/checksum.h"

namespace cskv::data {

namespace fs = std::filesystem;

const char* activation_dtype_name(ActivationDtype d) {
  return d == ActivationDtype::kFloat16 ? "float16" : "float32";
}

at::ScalarType to_scalar_type(ActivationDtype d) {
  return d == ActivationDtype::kFloat16 ? at::kHalf : at::kFloat;
}

at::Tensor round_to_storage(const at::Tensor& x, ActivationDtype d) {
  if (d == ActivationDtype::kFloat32) return x.to(at::kFloat);
  return x.to(at::kHalf).to(at::kFloat);
}

void check_split(const std::string& split) {
  CSKV_CHECK_INPUT(split == "train" || split == "holdout",
                   "split must be train or holdout, got '" << split << "'");
}

std::string shard_file_name(int rank, int world_size, const std::string& split) {
  check_split(split);
  CSKV_CHECK(world_size >= 1 && rank >= 0 && rank < world_size && world_size <= 99999,
             "shard_file_name: rank " << rank << " of world size " << world_size);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%05d-of-%05d.h5", split == "train" ? "shard" : "holdout", rank,
                world_size);
  return buf;
}

namespace {

std::string layer_dataset_name(int64_t layer) { return "/layers/" + std::to_string(layer) + "/x"; }

hid_t file_type(ActivationDtype d) {
  return d == ActivationDtype::kFloat16 ? h5::float16_type() : H5T_IEEE_F32LE;
}

// Dims of a 2-D dataset; throws an input error naming the file and dataset otherwise.
std::vector<hsize_t> dims_2d(hid_t dataset, const std::string& path, const std::string& name) {
  h5::Guard g;
  h5::Handle space(H5_CHECK(H5Dget_space(dataset), path, name), h5::Handle::Kind::kDataspace);
  const int rank = H5_CHECK(H5Sget_simple_extent_ndims(space.get()), path, name);
  CSKV_CHECK_INPUT(rank == 2,
                   path << ": dataset " << name << " has " << rank << " dimensions, expected 2");
  std::vector<hsize_t> dims(2);
  H5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), path, name);
  return dims;
}

}  // namespace

ActivationShardWriter::ActivationShardWriter(std::string path, ShardHeader header)
    : path_(std::move(path)), header_(std::move(header)) {
  const ShardHeader& h = header_;
  check_split(h.split);
  CSKV_CHECK(h.hidden_size > 0 && h.seq_len > 0 && h.num_layers > 0,
             path_ << ": shard header needs hidden_size, seq_len, num_layers > 0 (got "
                   << h.hidden_size << ", " << h.seq_len << ", " << h.num_layers << ")");
  CSKV_CHECK(!h.layers.empty(), path_ << ": a shard needs at least one layer");
  for (size_t i = 0; i < h.layers.size(); ++i) {
    CSKV_CHECK(
        h.layers[i] >= 0 && h.layers[i] < h.num_layers && (i == 0 || h.layers[i] > h.layers[i - 1]),
        path_ << ": layers must be ascending and in [0, " << h.num_layers << "), got "
              << h.layers[i] << " at index " << i);
  }
  header_.token_count = 0;
  header_.sequence_ids.clear();

  const fs::path parent = fs::path(path_).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  const std::string tmp = partial_path();

  h5::Guard g;
  // No object times anywhere (see h5::file_create_plist): identical captures, identical bytes.
  const h5::Handle fcpl = h5::file_create_plist(tmp);
  file_ = h5::Handle(
      H5_CHECK(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), tmp, "file"),
      h5::Handle::Kind::kFile);
  for (const int64_t layer : h.layers) {
    const std::string name = layer_dataset_name(layer);
    h5::create_groups(file_.get(), "/layers/" + std::to_string(layer), tmp);
    const hsize_t dims[2] = {0, static_cast<hsize_t>(h.hidden_size)};
    const hsize_t maxdims[2] = {H5S_UNLIMITED, static_cast<hsize_t>(h.hidden_size)};
    const hsize_t chunk[2] = {static_cast<hsize_t>(h.seq_len), static_cast<hsize_t>(h.hidden_size)};
    h5::Handle space(H5_CHECK(H5Screate_simple(2, dims, maxdims), tmp, name),
                     h5::Handle::Kind::kDataspace);
    h5::Handle dcpl = h5::dataset_create_plist(tmp, name);
    H5_CHECK(H5Pset_chunk(dcpl.get(), 2, chunk), tmp, name);
    H5_CHECK(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), tmp, name);
    h5::Handle ds(H5_CHECK(H5Dcreate2(file_.get(), name.c_str(), file_type(h.dtype), space.get(),
                                      H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                           tmp, name),
                  h5::Handle::Kind::kDataset);
    layers_[layer] = LayerDataset{std::move(ds), 0};
  }
  {
    const hsize_t dims[2] = {0, static_cast<hsize_t>(h.seq_len)};
    const hsize_t maxdims[2] = {H5S_UNLIMITED, static_cast<hsize_t>(h.seq_len)};
    const hsize_t rows = static_cast<hsize_t>(std::max<int64_t>(1, (1 << 18) / h.seq_len));
    const hsize_t chunk[2] = {std::min<hsize_t>(rows, 64), static_cast<hsize_t>(h.seq_len)};
    h5::Handle space(H5_CHECK(H5Screate_simple(2, dims, maxdims), tmp, "/tokens"),
                     h5::Handle::Kind::kDataspace);
    h5::Handle dcpl = h5::dataset_create_plist(tmp, "/tokens");
    H5_CHECK(H5Pset_chunk(dcpl.get(), 2, chunk), tmp, "/tokens");
    tokens_ = h5::Handle(H5_CHECK(H5Dcreate2(file_.get(), "/tokens", H5T_STD_U32LE, space.get(),
                                             H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                  tmp, "/tokens"),
                         h5::Handle::Kind::kDataset);
  }
}

ActivationShardWriter::~ActivationShardWriter() {
  if (!finished_) abandon();
}

void ActivationShardWriter::abandon() noexcept {
  try {
    layers_.clear();
    tokens_.reset();
    file_.reset();
  } catch (...) {  // closing after an earlier failure: the partial file is removed below anyway
  }
  std::error_code ec;
  fs::remove(partial_path(), ec);
}

namespace {
// Extends a 2-D dataset from `rows` to `rows + n` rows and writes buf into the new rows.
void append_rows(hid_t dataset, int64_t rows, int64_t n, int64_t width, hid_t mem_type,
                 const void* buf, const std::string& path, const std::string& name) {
  h5::Guard g;
  const hsize_t new_dims[2] = {static_cast<hsize_t>(rows + n), static_cast<hsize_t>(width)};
  H5_CHECK(H5Dset_extent(dataset, new_dims), path, name);
  h5::Handle fspace(H5_CHECK(H5Dget_space(dataset), path, name), h5::Handle::Kind::kDataspace);
  const hsize_t start[2] = {static_cast<hsize_t>(rows), 0};
  const hsize_t count[2] = {static_cast<hsize_t>(n), static_cast<hsize_t>(width)};
  H5_CHECK(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), path,
           name);
  h5::Handle mspace(H5_CHECK(H5Screate_simple(2, count, nullptr), path, name),
                    h5::Handle::Kind::kDataspace);
  H5_CHECK(H5Dwrite(dataset, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, buf), path, name);
}
}  // namespace

void ActivationShardWriter::append(int64_t layer, const at::Tensor& x) {
  CSKV_CHECK(!finished_, path_ << ": append after finish()");
  auto it = layers_.find(layer);
  CSKV_CHECK(it != layers_.end(), path_ << ": layer " << layer << " is not stored in this shard");
  const std::string name = layer_dataset_name(layer);
  CSKV_CHECK(x.dim() == 2 && x.size(1) == header_.hidden_size,
             path_ << ": " << name << " expects rows of " << header_.hidden_size
                   << " values, got a tensor of shape " << x.sizes());
  CSKV_CHECK(x.size(0) % header_.seq_len == 0, path_ << ": " << name << " takes whole sequences of "
                                                     << header_.seq_len << " rows, got "
                                                     << x.size(0) << " rows");
  CSKV_CHECK(x.is_floating_point(),
             path_ << ": " << name << " expects a floating tensor, got " << x.scalar_type());
  if (x.size(0) == 0) return;
  const at::Tensor stored = x.to(at::kCPU).to(to_scalar_type(header_.dtype)).contiguous();
  const hid_t mem_type =
      header_.dtype == ActivationDtype::kFloat16 ? h5::float16_type() : H5T_NATIVE_FLOAT;
  append_rows(it->second.dataset.get(), it->second.rows, x.size(0), header_.hidden_size, mem_type,
              stored.data_ptr(), partial_path(), name);
  it->second.rows += x.size(0);
}

void ActivationShardWriter::append_tokens(const std::vector<int64_t>& sequence_ids,
                                          const at::Tensor& tokens) {
  CSKV_CHECK(!finished_, path_ << ": append_tokens after finish()");
  CSKV_CHECK(tokens.dim() == 2 && tokens.size(1) == header_.seq_len &&
                 tokens.size(0) == static_cast<int64_t>(sequence_ids.size()),
             path_ << ": /tokens expects [" << sequence_ids.size() << ", " << header_.seq_len
                   << "] token ids, got shape " << tokens.sizes());
  CSKV_CHECK(!tokens.is_floating_point(),
             path_ << ": /tokens expects integer ids, got " << tokens.scalar_type());
  if (tokens.size(0) == 0) return;
  const at::Tensor ids = tokens.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t* src = ids.data_ptr<int64_t>();
  std::vector<uint32_t> buf(static_cast<size_t>(ids.numel()));
  for (size_t i = 0; i < buf.size(); ++i) {
    CSKV_CHECK(src[i] >= 0 && src[i] <= static_cast<int64_t>(UINT32_MAX),
               path_ << ": token id " << src[i] << " does not fit uint32");
    buf[i] = static_cast<uint32_t>(src[i]);
  }
  append_rows(tokens_.get(), token_rows_, tokens.size(0), header_.seq_len, H5T_NATIVE_UINT32,
              buf.data(), partial_path(), "/tokens");
  token_rows_ += tokens.size(0);
  header_.sequence_ids.insert(header_.sequence_ids.end(), sequence_ids.begin(), sequence_ids.end());
}

ShardSummary ActivationShardWriter::finish() {
  CSKV_CHECK(!finished_, path_ << ": finish() called twice");
  const std::string tmp = partial_path();
  const int64_t expected_rows = token_rows_ * header_.seq_len;
  for (const auto& [layer, ds] : layers_) {
    CSKV_CHECK(ds.rows == expected_rows, path_ << ": layer " << layer << " holds " << ds.rows
                                               << " rows but /tokens holds " << token_rows_
                                               << " sequences of " << header_.seq_len << " ("
                                               << expected_rows << " rows)");
  }
  header_.token_count = expected_rows;
  {
    h5::Guard g;
    const hid_t root = file_.get();
    h5::write_attr_i64(root, "format_version", header_.format_version, tmp);
    h5::write_attr_string(root, "model_config_hash", header_.model_config_hash, tmp);
    h5::write_attr_i64(root, "hidden_size", header_.hidden_size, tmp);
    h5::write_attr_i64(root, "num_layers", header_.num_layers, tmp);
    h5::write_attr_i64_array(root, "layers", header_.layers, tmp);
    h5::write_attr_i64(root, "seq_len", header_.seq_len, tmp);
    h5::write_attr_string(root, "dtype", activation_dtype_name(header_.dtype), tmp);
    h5::write_attr_i64(root, "token_count", header_.token_count, tmp);
    h5::write_attr_i64_array(root, "sequence_ids", header_.sequence_ids, tmp);
    h5::write_attr_u64(root, "seed", header_.seed, tmp);
    h5::write_attr_string(root, "split", header_.split, tmp);
    for (auto& [layer, ds] : layers_) ds.dataset.close(tmp, layer_dataset_name(layer));
    tokens_.close(tmp, "/tokens");
    file_.close(tmp, "file");
  }
  files::commit_temp_file(tmp, path_);
  finished_ = true;

  ShardSummary s;
  s.path = path_;
  s.bytes = static_cast<uint64_t>(fs::file_size(path_));
  s.checksum = format_checksum(xxh64_file(path_));
  s.split = header_.split;
  s.num_sequences = token_rows_;
  s.token_count = header_.token_count;
  return s;
}

ShardHeader read_shard_header(const std::string& path) {
  h5::Guard g;
  h5::Handle file = h5::open_file_readonly(path);
  const hid_t root = file.get();
  ShardHeader h;
  h.format_version = h5::read_attr_i64(root, "format_version", path);
  CSKV_CHECK_INPUT(h.format_version == kShardFormatVersion,
                   path << ": shard format_version is " << h.format_version
                        << ", this build reads version " << kShardFormatVersion);
  h.model_config_hash = h5::read_attr_string(root, "model_config_hash", path);
  h.hidden_size = h5::read_attr_i64(root, "hidden_size", path);
  h.num_layers = h5::read_attr_i64(root, "num_layers", path);
  h.layers = h5::read_attr_i64_array(root, "layers", path);
  h.seq_len = h5::read_attr_i64(root, "seq_len", path);
  const std::string dtype = h5::read_attr_string(root, "dtype", path);
  CSKV_CHECK_INPUT(dtype == "float16" || dtype == "float32",
                   path << ": attribute dtype is '" << dtype << "', expected float16 or float32");
  h.dtype = dtype == "float16" ? ActivationDtype::kFloat16 : ActivationDtype::kFloat32;
  h.token_count = h5::read_attr_i64(root, "token_count", path);
  h.sequence_ids = h5::read_attr_i64_array(root, "sequence_ids", path);
  h.seed = h5::read_attr_u64(root, "seed", path);
  h.split = h5::read_attr_string(root, "split", path);
  CSKV_CHECK_INPUT(h.split == "train" || h.split == "holdout",
                   path << ": attribute split is '" << h.split << "', expected train or holdout");

  // The datasets must agree with the attributes.
  const auto seqs = static_cast<hsize_t>(h.sequence_ids.size());
  {
    h5::Handle ds(H5_CHECK(H5Dopen2(root, "/tokens", H5P_DEFAULT), path, "/tokens"),
                  h5::Handle::Kind::kDataset);
    const auto dims = dims_2d(ds.get(), path, "/tokens");
    CSKV_CHECK_INPUT(dims[0] == seqs && dims[1] == static_cast<hsize_t>(h.seq_len),
                     path << ": /tokens is [" << dims[0] << ", " << dims[1] << "], expected ["
                          << seqs << ", " << h.seq_len << "] from the attributes");
  }
  CSKV_CHECK_INPUT(h.token_count == static_cast<int64_t>(seqs) * h.seq_len,
                   path << ": token_count " << h.token_count << " != " << seqs
                        << " sequences x seq_len " << h.seq_len);
  for (const int64_t layer : h.layers) {
    const std::string name = layer_dataset_name(layer);
    h5::Handle ds(H5_CHECK(H5Dopen2(root, name.c_str(), H5P_DEFAULT), path, name),
                  h5::Handle::Kind::kDataset);
    const auto dims = dims_2d(ds.get(), path, name);
    CSKV_CHECK_INPUT(dims[0] == static_cast<hsize_t>(h.token_count) &&
                         dims[1] == static_cast<hsize_t>(h.hidden_size),
                     path << ": " << name << " is [" << dims[0] << ", " << dims[1]
                          << "], expected [" << h.token_count << ", " << h.hidden_size << "]");
  }
  return h;
}

at::Tensor read_shard_tokens(const std::string& path) {
  const ShardHeader h = read_shard_header(path);  // checks /tokens against the attributes
  h5::Guard g;
  h5::Handle file = h5::open_file_readonly(path);
  at::Tensor tokens =
      at::empty({static_cast<int64_t>(h.sequence_ids.size()), h.seq_len}, at::kLong);
  h5::Handle ds(H5_CHECK(H5Dopen2(file.get(), "/tokens", H5P_DEFAULT), path, "/tokens"),
                h5::Handle::Kind::kDataset);
  if (tokens.numel() > 0) {
    H5_CHECK(H5Dread(ds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data_ptr()),
             path, "/tokens");
  }
  return tokens;
}

void check_shard_header(const std::string& path, const ShardHeader& h, const ShardExpectation& e) {
  CSKV_CHECK_INPUT(e.model_config_hash.empty() || h.model_config_hash == e.model_config_hash,
                   path << ": model_config_hash is '" << h.model_config_hash << "', expected '"
                        << e.model_config_hash
                        << "' (activations captured from another model or config)");
  CSKV_CHECK_INPUT(e.hidden_size < 0 || h.hidden_size == e.hidden_size,
                   path << ": hidden_size is " << h.hidden_size << ", expected " << e.hidden_size);
  CSKV_CHECK_INPUT(e.seq_len < 0 || h.seq_len == e.seq_len,
                   path << ": seq_len is " << h.seq_len << ", expected " << e.seq_len);
  CSKV_CHECK_INPUT(
      e.dtype.empty() || activation_dtype_name(h.dtype) == e.dtype,
      path << ": dtype is " << activation_dtype_name(h.dtype) << ", expected " << e.dtype);
  CSKV_CHECK_INPUT(e.split.empty() || h.split == e.split,
                   path << ": split is " << h.split << ", expected " << e.split);
}

}  // namespace cskv::data
