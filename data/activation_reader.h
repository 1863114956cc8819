// ActivationReader: streams one layer's rows from every shard of a split (manifest order) as
// float32 batches, read ahead by a prefetch thread; seekable for checkpoint resume.
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/activation_shard.h"
#include "data/hdf5_util.h"

namespace cskv::data {

struct ActivationReaderOptions {
  std::string acts_dir;
  int64_t layer = 0;
  std::string split = "train";
  int64_t batch_tokens = 4096;
  int prefetch_batches = 2;  // bounded queue length; 0 reads synchronously inside next()
  int64_t num_epochs = 1;    // -1: no end
  // Rows [row_begin, row_end) of the concatenated split form one epoch (row_end -1: to the end),
  // so ranks sharing a layer can each stream their own slice.
  int64_t row_begin = 0;
  int64_t row_end = -1;
  ShardExpectation expect;        // its split is replaced by `split`
  bool verify_checksums = false;  // re-hash every shard when opening (a full read)
  // false: batches hold the rows as stored (float16 or float32), neither converted nor checked;
  // the consumer converts them where it computes and calls check_finite() there.
  bool convert = true;
  // Batches in page-locked host memory (what a CUDA device copies from asynchronously).
  bool pinned = false;
};

struct ActivationBatch {
  at::Tensor x;          // [rows, H] float32 (stored dtype without convert), rows <= batch_tokens
                         // (shorter at an epoch's end)
  int64_t position = 0;  // epoch * epoch_tokens() + row
  int64_t epoch = 0;
  int64_t row = 0;  // first row within the epoch
};

class ActivationReader {
 public:
  // Reads and validates the manifest and the headers of the split's shards (all must share H
  // and dtype, and hold the layer); throws input errors naming the shard.
  explicit ActivationReader(ActivationReaderOptions options);
  ~ActivationReader();
  ActivationReader(const ActivationReader&) = delete;
  ActivationReader& operator=(const ActivationReader&) = delete;

  int64_t epoch_tokens() const { return row_end_ - row_begin_; }
  int64_t hidden_size() const { return hidden_size_; }
  ActivationDtype dtype() const { return dtype_; }
  const std::vector<std::string>& shard_paths() const { return paths_; }

  // The next batch, or nullopt once num_epochs epochs are done. A batch holding NaN/Inf throws
  // "<shard>: layer 3 row 17 channel 5 is nan (non-finite activation)" (row within the shard).
  std::optional<ActivationBatch> next();
  // Position of the first row next() returns; seek(position()) after a restart resumes the
  // exact same stream of batches.
  int64_t position() const { return position_; }
  void seek(int64_t position);

  // For batches read without convert: `x` is the batch's rows in float32 on any device; a
  // non-finite value throws next()'s message for it.
  void check_finite(const ActivationBatch& batch, const at::Tensor& x) const;

 private:
  struct Shard {
    std::string path;
    h5::Handle file;
    h5::Handle dataset;
    int64_t rows = 0;
    int64_t first_row = 0;  // offset in the concatenation
  };
  struct Item {
    std::optional<ActivationBatch> batch;  // nullopt with no error: end of stream
    std::exception_ptr error;
  };

  Item read_at(int64_t position) const;
  ActivationBatch read_batch(int64_t position) const;
  void read_rows(int64_t begin, int64_t n, void* out) const;
  void check_finite(const at::Tensor& x, int64_t begin) const;
  [[noreturn]] void fail_non_finite(int64_t global_row, int64_t channel, float value) const;
  void start_prefetch();
  void stop_prefetch();
  void producer(int64_t position);

  ActivationReaderOptions opt_;
  std::vector<Shard> shards_;
  std::vector<std::string> paths_;
  int64_t hidden_size_ = 0;
  ActivationDtype dtype_ = ActivationDtype::kFloat16;
  int64_t row_begin_ = 0;
  int64_t row_end_ = 0;
  int64_t position_ = 0;
  bool done_ = false;              // end of stream or an error was delivered
  std::exception_ptr last_error_;  // delivered again by every later next()

  mutable std::vector<uint16_t> half_buffer_;  // raw float16 rows of the batch being read

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
};

}  // namespace cskv::data
