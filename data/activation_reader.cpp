// Streaming reader of one layer's activations: one hyperslab read per shard segment of a batch
// (never per row), fp16 converted to float32 by ATen, NaN/Inf located to shard and row.
#include "data/activation_reader.h"

#include <algorithm>

#include "common/error.h"
#include "common/log.h"
#include "data/manifest.h"

namespace cskv::data {

ActivationReader::ActivationReader(ActivationReaderOptions options) : opt_(std::move(options)) {
  check_split(opt_.split);
  CSKV_CHECK_USAGE(opt_.batch_tokens >= 1, "batch_tokens must be >= 1, got " << opt_.batch_tokens);
  CSKV_CHECK_USAGE(opt_.prefetch_batches >= 0,
                   "prefetch_batches must be >= 0, got " << opt_.prefetch_batches);
  ShardExpectation expect = opt_.expect;
  expect.split = opt_.split;

  std::vector<ManifestEntry> entries;
  for (auto& e : read_manifest(opt_.acts_dir)) {
    if (e.split == opt_.split) entries.push_back(std::move(e));
  }
  CSKV_CHECK_INPUT(!entries.empty(), manifest_path(opt_.acts_dir)
                                         << " lists no shard of split " << opt_.split);
  const std::vector<ShardHeader> headers =
      validate_manifest(opt_.acts_dir, entries, expect, opt_.verify_checksums);

  const std::string dataset = "/layers/" + std::to_string(opt_.layer) + "/x";
  int64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const ShardHeader& h = headers[i];
    const std::string path = opt_.acts_dir + "/" + entries[i].file;
    if (i == 0) {
      hidden_size_ = h.hidden_size;
      dtype_ = h.dtype;
    }
    CSKV_CHECK_INPUT(h.hidden_size == hidden_size_ && h.dtype == dtype_,
                     path << ": hidden_size " << h.hidden_size << " / dtype "
                          << activation_dtype_name(h.dtype) << " differ from " << paths_.front()
                          << " (" << hidden_size_ << " / " << activation_dtype_name(dtype_) << ")");
    CSKV_CHECK_INPUT(std::find(h.layers.begin(), h.layers.end(), opt_.layer) != h.layers.end(),
                     path << ": layer " << opt_.layer << " was not captured (shard holds "
                          << h.layers.size() << " layers)");
    Shard s;
    s.path = path;
    {
      h5::Guard g;
      s.file = h5::open_file_readonly(path);
      s.dataset =
          h5::Handle(H5_CHECK(H5Dopen2(s.file.get(), dataset.c_str(), H5P_DEFAULT), path, dataset),
                     h5::Handle::Kind::kDataset);
    }
    s.rows = h.token_count;
    s.first_row = total;
    total += s.rows;
    paths_.push_back(path);
    shards_.push_back(std::move(s));
  }
  row_begin_ = opt_.row_begin;
  row_end_ = opt_.row_end < 0 ? total : opt_.row_end;
  CSKV_CHECK_USAGE(0 <= row_begin_ && row_begin_ < row_end_ && row_end_ <= total,
                   "reader rows [" << row_begin_ << ", " << row_end_ << ") are not a non-empty "
                                   << "range inside the " << total << " rows of layer "
                                   << opt_.layer << " (split " << opt_.split << ")");
  log::get("data")->debug("reader: layer {} split {}: {} shards, {} rows, H {}, {}", opt_.layer,
                          opt_.split, shards_.size(), total, hidden_size_,
                          activation_dtype_name(dtype_));
}

ActivationReader::~ActivationReader() { stop_prefetch(); }

void ActivationReader::read_rows(int64_t begin, int64_t n, void* out) const {
  const int64_t width = hidden_size_;
  const size_t elem = dtype_ == ActivationDtype::kFloat16 ? 2 : 4;
  const hid_t mem_type =
      dtype_ == ActivationDtype::kFloat16 ? h5::float16_type() : H5T_NATIVE_FLOAT;
  auto* dst = static_cast<char*>(out);
  // First shard whose range ends after `begin`.
  auto it =
      std::upper_bound(shards_.begin(), shards_.end(), begin,
                       [](int64_t row, const Shard& s) { return row < s.first_row + s.rows; });
  int64_t row = begin;
  const int64_t end = begin + n;
  h5::Guard g;
  for (; row < end; ++it) {
    CSKV_CHECK(it != shards_.end(), "reader: row " << row << " is past the last shard");
    const int64_t local = row - it->first_row;
    const int64_t take = std::min(end - row, it->rows - local);
    if (take <= 0) continue;
    const std::string object = "/layers/" + std::to_string(opt_.layer) + "/x";
    h5::Handle fspace(H5_CHECK(H5Dget_space(it->dataset.get()), it->path, object),
                      h5::Handle::Kind::kDataspace);
    const hsize_t start[2] = {static_cast<hsize_t>(local), 0};
    const hsize_t count[2] = {static_cast<hsize_t>(take), static_cast<hsize_t>(width)};
    H5_CHECK(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
             it->path, object);
    h5::Handle mspace(H5_CHECK(H5Screate_simple(2, count, nullptr), it->path, object),
                      h5::Handle::Kind::kDataspace);
    H5_CHECK(H5Dread(it->dataset.get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT,
                     dst + static_cast<size_t>(row - begin) * static_cast<size_t>(width) * elem),
             it->path, object);
    row += take;
  }
}

namespace {

// float16 bits -> float32 for all 65536 patterns (exact; ATen's serial Half copy is ~5x slower).
const float* half_to_float_table() {
  static const std::vector<float> table = [] {
    at::Tensor bits = at::arange(0, 65536, at::kInt).to(at::kShort);
    at::Tensor f = bits.view(at::kHalf).to(at::kFloat);
    return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + 65536);
  }();
  return table.data();
}

// Index of the first element whose exponent bits are all ones (NaN or +-Inf), or -1. Scans
// blocks with a branch-free OR (vectorised by the compiler) and locates inside a bad block only.
template <typename U>
int64_t first_non_finite(const U* p, int64_t n, U exponent_mask) {
  constexpr int64_t kBlock = 4096;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    U bad = 0;
    for (int64_t i = b; i < e; ++i) bad |= static_cast<U>((p[i] & exponent_mask) == exponent_mask);
    if (bad == 0) continue;
    for (int64_t i = b; i < e; ++i) {
      if ((p[i] & exponent_mask) == exponent_mask) return i;
    }
  }
  return -1;
}
}  // namespace

void ActivationReader::check_finite(const at::Tensor& x, int64_t begin) const {
  // x is float32 (already converted); its bit pattern tells finiteness without ATen passes.
  const int64_t bad = first_non_finite(reinterpret_cast<const uint32_t*>(x.data_ptr<float>()),
                                       x.numel(), static_cast<uint32_t>(0x7f800000u));
  if (bad < 0) return;
  const int64_t r = bad / hidden_size_;
  fail_non_finite(begin + r, bad % hidden_size_, x.data_ptr<float>()[bad]);
}

void ActivationReader::check_finite(const ActivationBatch& batch, const at::Tensor& x) const {
  const at::Tensor finite = at::isfinite(x);
  if (finite.all().item<bool>()) return;
  const int64_t bad = at::logical_not(finite).reshape({-1}).nonzero()[0][0].item<int64_t>();
  const float value = x.reshape({-1})[bad].item<float>();
  fail_non_finite(row_begin_ + batch.row + bad / hidden_size_, bad % hidden_size_, value);
}

void ActivationReader::fail_non_finite(int64_t global, int64_t channel, float value) const {
  auto it =
      std::upper_bound(shards_.begin(), shards_.end(), global,
                       [](int64_t row, const Shard& s) { return row < s.first_row + s.rows; });
  CSKV_FAIL_INPUT(it->path << ": layer " << opt_.layer << " row " << global - it->first_row
                           << " channel " << channel << " is " << value
                           << " (non-finite activation)");
}

ActivationBatch ActivationReader::read_batch(int64_t position) const {
  const int64_t len = epoch_tokens();
  ActivationBatch b;
  b.position = position;
  b.epoch = position / len;
  b.row = position % len;
  const int64_t n = std::min(opt_.batch_tokens, len - b.row);
  const int64_t begin = row_begin_ + b.row;
  const auto host = at::TensorOptions().pinned_memory(opt_.pinned);
  if (!opt_.convert) {
    const bool half = dtype_ == ActivationDtype::kFloat16;
    b.x = at::empty({n, hidden_size_}, host.dtype(half ? at::kHalf : at::kFloat));
    read_rows(begin, n, b.x.data_ptr());
    return b;
  }
  if (dtype_ == ActivationDtype::kFloat16) {
    // Reused across batches (only one thread reads at a time: the producer, or next() itself).
    std::vector<uint16_t>& raw = half_buffer_;
    raw.resize(static_cast<size_t>(n * hidden_size_));
    read_rows(begin, n, raw.data());
    b.x = at::empty({n, hidden_size_}, host.dtype(at::kFloat));
    const float* table = half_to_float_table();
    float* dst = b.x.data_ptr<float>();
    for (size_t i = 0; i < raw.size(); ++i) dst[i] = table[raw[i]];
  } else {
    b.x = at::empty({n, hidden_size_}, host.dtype(at::kFloat));
    read_rows(begin, n, b.x.data_ptr());
  }
  check_finite(b.x, begin);
  return b;
}

ActivationReader::Item ActivationReader::read_at(int64_t position) const {
  Item item;
  if (opt_.num_epochs >= 0 && position >= opt_.num_epochs * epoch_tokens()) return item;
  try {
    item.batch = read_batch(position);
  } catch (...) {
    item.error = std::current_exception();
  }
  return item;
}

void ActivationReader::producer(int64_t position) {
  for (;;) {
    Item item = read_at(position);
    const bool last = !item.batch.has_value();
    if (!last) position += item.batch->x.size(0);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock,
             [&] { return stop_ || static_cast<int64_t>(queue_.size()) < opt_.prefetch_batches; });
    if (stop_) return;
    queue_.push_back(std::move(item));
    cv_.notify_all();
    if (last) return;
  }
}

void ActivationReader::start_prefetch() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = false;
  queue_.clear();
  thread_ = std::thread([this, p = position_] { producer(p); });
}

void ActivationReader::stop_prefetch() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  queue_.clear();
}

std::optional<ActivationBatch> ActivationReader::next() {
  if (last_error_) std::rethrow_exception(last_error_);
  if (done_) return std::nullopt;
  Item item;
  if (opt_.prefetch_batches == 0) {
    item = read_at(position_);
  } else {
    if (!thread_.joinable()) start_prefetch();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty(); });
    item = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
  }
  if (item.error) {
    done_ = true;
    last_error_ = item.error;
    std::rethrow_exception(item.error);
  }
  if (!item.batch) {
    done_ = true;
    return std::nullopt;
  }
  position_ = item.batch->position + item.batch->x.size(0);
  return item.batch;
}

void ActivationReader::seek(int64_t position) {
  CSKV_CHECK_USAGE(position >= 0, "reader position must be >= 0, got " << position);
  stop_prefetch();
  position_ = position;
  done_ = false;
  last_error_ = nullptr;
}

}  // namespace cskv::data
