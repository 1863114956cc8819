// BatchStream and the resident splits: the reader's batch arithmetic (position = epoch × tokens
// + row, a batch ends at its epoch's end) over either source.
#include "trainer/batch_source.h"

#include <algorithm>

#include "common/device.h"
#include "common/error.h"
#include "common/log.h"

namespace cskv::trainer {

Residency parse_residency(const std::string& text) {
  if (text == "auto") return Residency::kAuto;
  if (text == "on") return Residency::kOn;
  if (text == "off") return Residency::kOff;
  CSKV_FAIL_USAGE("--resident: expected auto|on|off, found '" << text << "'");
}

const char* residency_name(Residency residency) {
  switch (residency) {
    case Residency::kAuto:
      return "auto";
    case Residency::kOn:
      return "on";
    case Residency::kOff:
      return "off";
  }
  return "?";
}

namespace {
int64_t split_bytes(const data::ActivationReader& reader) {
  const int64_t elem = reader.dtype() == data::ActivationDtype::kFloat16 ? 2 : 4;
  return reader.epoch_tokens() * reader.hidden_size() * elem;
}
}  // namespace

bool use_resident(const data::ActivationReaderOptions& options, const TrainDevice& dev) {
  if (dev.resident != Residency::kAuto) return dev.resident == Residency::kOn;
  if (!dev.device.is_cuda()) return false;  // the page cache already holds the shards
  data::ActivationReaderOptions o = options;
  o.prefetch_batches = 0;
  const data::ActivationReader reader(o);
  const double budget =
      dev.resident_share * static_cast<double>(device::memory(dev.device).free_bytes);
  return static_cast<double>(split_bytes(reader)) <= budget;
}

std::shared_ptr<const ResidentSplit> load_resident(const data::ActivationReaderOptions& options,
                                                   at::Device device) {
  data::ActivationReaderOptions o = options;
  o.num_epochs = 1;
  o.convert = false;
  o.pinned = device.is_cuda();
  o.batch_tokens =
      std::max<int64_t>(1, (int64_t{64} << 20) / 2 / 4096);  // ~64 MiB chunks at H 4096
  data::ActivationReader reader(o);
  auto out = std::make_shared<ResidentSplit>();
  out->layer = options.layer;
  out->split = options.split;
  const at::ScalarType stored =
      reader.dtype() == data::ActivationDtype::kFloat16 ? at::kHalf : at::kFloat;
  out->rows = at::empty({reader.epoch_tokens(), reader.hidden_size()},
                        at::TensorOptions().dtype(stored).device(device));
  while (auto batch = reader.next()) {
    at::Tensor dst = out->rows.slice(0, batch->row, batch->row + batch->x.size(0));
    dst.copy_(batch->x, /*non_blocking=*/true);
    reader.check_finite(*batch, dst.to(at::kFloat));
  }
  log::get("trainer")->debug("layer {} {}: {} rows resident on {} ({:.1f} MiB)", options.layer,
                             options.split, out->rows.size(0), device.str(),
                             static_cast<double>(out->rows.nbytes()) / (1 << 20));
  return out;
}

BatchStream::BatchStream(data::ActivationReaderOptions options, const TrainDevice& dev,
                         std::shared_ptr<const ResidentSplit> resident)
    : options_(std::move(options)),
      device_(dev.device),
      host_convert_(dev.host_convert.value_or(dev.device.is_cpu())),
      resident_(std::move(resident)) {
  if (resident_) return;
  data::ActivationReaderOptions o = options_;
  o.convert = host_convert_;
  o.pinned = device_.is_cuda();
  reader_ = std::make_unique<data::ActivationReader>(o);
}

std::optional<at::Tensor> BatchStream::next() {
  if (!resident_) {
    auto batch = reader_->next();
    if (!batch) return std::nullopt;
    at::Tensor x = batch->x.to(device_, /*non_blocking=*/true);
    if (host_convert_) return x;
    x = x.to(at::kFloat);
    reader_->check_finite(*batch, x);
    return x;
  }
  const int64_t len = resident_->rows.size(0);
  CSKV_CHECK_INPUT(
      len > 0, "layer " << options_.layer << ": the " << options_.split << " split has no rows");
  if (options_.num_epochs >= 0 && position_ >= options_.num_epochs * len) return std::nullopt;
  const int64_t row = position_ % len;
  const int64_t n = std::min(options_.batch_tokens, len - row);
  position_ += n;
  return resident_->rows.slice(0, row, row + n).to(at::kFloat);
}

int64_t BatchStream::position() const { return resident_ ? position_ : reader_->position(); }

void BatchStream::seek(int64_t position) {
  if (resident_) {
    position_ = position;
  } else {
    reader_->seek(position);
  }
}

}  // namespace cskv::trainer
