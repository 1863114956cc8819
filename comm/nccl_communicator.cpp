// NcclCommunicator: NCCL collectives on a private CUDA stream, polled against a deadline
// (non-blocking NCCL communicators, cudaStreamQuery, ncclCommGetAsyncError), MPI for the rest.
#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "comm/mpi_communicator.h"
#include "common/error.h"
#include "common/log.h"

namespace cskv::comm {

namespace {

using Clock = std::chrono::steady_clock;

int process_rank() { return error_rank(); }

std::string function_name(const char* call) {
  std::string function = call;
  return function.substr(0, function.find('('));
}

[[noreturn]] void throw_nccl_error(ncclResult_t result, const char* call, const char* file,
                                   int line) {
  std::ostringstream os;
  os << function_name(call) << " failed";
  if (process_rank() >= 0) os << " on rank " << process_rank();
  os << ": " << ncclGetErrorString(result);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') os << " (" << last << ")";
  os << "; run with NCCL_DEBUG=WARN for NCCL's own report";
  ::cskv::detail::throw_error(ErrorKind::kComm, file, line, call, os.str());
}

[[noreturn]] void throw_cuda_error(cudaError_t result, const char* call, const char* file,
                                   int line) {
  std::ostringstream os;
  os << function_name(call) << " failed";
  if (process_rank() >= 0) os << " on rank " << process_rank();
  os << ": " << cudaGetErrorName(result) << ": " << cudaGetErrorString(result);
  ::cskv::detail::throw_error(ErrorKind::kComm, file, line, call, os.str());
}

}  // namespace

// NCCL_CHECK / CUDA_CHECK: cskv::Error(kComm) naming the call, file, line, rank and the
// library's message. ncclInProgress is not an error: communicators here are non-blocking.
#define NCCL_CHECK(call)                                                   \
  do {                                                                     \
    const ncclResult_t cskv_nccl_rc_ = (call);                             \
    if (cskv_nccl_rc_ != ncclSuccess && cskv_nccl_rc_ != ncclInProgress) { \
      throw_nccl_error(cskv_nccl_rc_, #call, __FILE__, __LINE__);          \
    }                                                                      \
  } while (0)

#define CUDA_CHECK(call)                                          \
  do {                                                            \
    const cudaError_t cskv_cuda_rc_ = (call);                     \
    if (cskv_cuda_rc_ != cudaSuccess) {                           \
      throw_cuda_error(cskv_cuda_rc_, #call, __FILE__, __LINE__); \
    }                                                             \
  } while (0)

namespace {

// The waiting policy of the MPI backend: spin, then yield, then sleep up to kMaxPause.
constexpr std::chrono::microseconds kSpinTime{50};
constexpr std::chrono::microseconds kYieldTime{5000};
constexpr std::chrono::microseconds kMaxPause{1000};

std::chrono::steady_clock::time_point deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::min(seconds, 1e9)));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::unique_ptr<MpiCommunicator> mpi, int device, bool is_world)
      : mpi_(std::move(mpi)), device_(device), is_world_(is_world) {
    try {
      initialise();
    } catch (...) {
      if (stream_ != nullptr) cudaStreamDestroy(stream_);  // the destructor will not run
      throw;
    }
    log::get("comm")->debug("nccl communicator: {} on cuda:{}", describe(), device_);
  }

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (broken_.empty()) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return mpi_->rank(); }
  int size() const override { return mpi_->size(); }
  int local_rank() const override { return mpi_->local_rank(); }
  int local_size() const override { return mpi_->local_size(); }
  std::string backend_name() const override { return "nccl"; }
  double timeout_s() const override { return mpi_->timeout_s(); }

  // A host-side barrier over MPI; it does not wait for queued GPU work.
  void barrier() override { mpi_->barrier(); }

  void broadcast(at::Tensor& tensor, int root) override {
    detail::check_root(*this, "broadcast", root);
    detail::check_dense_contiguous(*this, "broadcast", tensor);
    if (!tensor.is_cuda()) return mpi_->broadcast(tensor, root);
    check_device("broadcast", tensor);
    run_collective("broadcast", [&](Clock::time_point deadline) {
      NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.nbytes(), ncclUint8,
                               root, comm_, stream_));
      wait_for_stream("broadcast", deadline);
    });
  }

  void allreduce(at::Tensor& tensor, ReduceOp op) override {
    const char* name = allreduce_name(op);
    detail::check_dense_contiguous(*this, name, tensor);
    detail::check_allreduce_dtype(*this, tensor, op);
    if (!tensor.is_cuda()) return mpi_->allreduce(tensor, op);
    check_device(name, tensor);
    const auto dtype = tensor.scalar_type();
    const ncclDataType_t type =
        dtype == at::kFloat ? ncclFloat32 : (dtype == at::kDouble ? ncclFloat64 : ncclInt64);
    const ncclRedOp_t nccl_op =
        op == ReduceOp::kSum ? ncclSum : (op == ReduceOp::kMax ? ncclMax : ncclMin);
    run_collective(name, [&](Clock::time_point deadline) {
      NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(),
                               static_cast<size_t>(tensor.numel()), type, nccl_op, comm_, stream_));
      wait_for_stream(name, deadline);
    });
  }

  std::vector<std::string> gather_bytes(const std::string& mine, int root) override {
    return mpi_->gather_bytes(mine, root);
  }
  std::vector<std::string> allgather_bytes(const std::string& mine) override {
    return mpi_->allgather_bytes(mine);
  }
  void broadcast_bytes(std::string& bytes, int root) override {
    mpi_->broadcast_bytes(bytes, root);
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    detail::check_split_color(*this, color);
    return std::make_unique<NcclCommunicator>(mpi_->split_mpi(color, key), device_,
                                              /*is_world=*/false);
  }

  void abort(const std::string& message) override {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    mpi_->abort(message);
  }

 private:
  // Device, stream and the NCCL communicator, bootstrapped from an id broadcast over MPI.
  void initialise() {
    CUDA_CHECK(cudaSetDevice(device_));
    // A blocking stream: it waits for work queued earlier on the legacy default stream, where
    // LibTorch computes unless told otherwise, so the tensors are ready when NCCL reads them.
    CUDA_CHECK(cudaStreamCreate(&stream_));
    ncclUniqueId id;
    std::string id_bytes(sizeof(id), '\0');
    if (mpi_->rank() == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id));
      std::memcpy(id_bytes.data(), &id, sizeof(id));
    }
    mpi_->broadcast_bytes(id_bytes, 0);
    std::memcpy(&id, id_bytes.data(), sizeof(id));
    run_collective("NCCL initialisation", [&](Clock::time_point deadline) {
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;  // calls return at once; wait_for_comm() bounds the wait
      NCCL_CHECK(ncclCommInitRankConfig(&comm_, mpi_->size(), id, mpi_->rank(), &config));
      wait_for_comm("NCCL initialisation", deadline);
    });
  }

  std::string describe() const {
    std::ostringstream os;
    os << "rank " << rank() << " of " << size();
    if (!is_world_) os << " (world rank " << error_rank() << ")";
    return os.str();
  }

  void check_device(const char* op, const at::Tensor& tensor) const {
    CSKV_CHECK(tensor.device().index() == device_, op << ": expected a tensor on cuda:" << device_
                                                      << " (this rank's NCCL device), "
                                                      << "found one on " << tensor.device());
  }

  template <typename Fn>
  void run_collective(const char* op, Fn&& fn) {
    CSKV_CHECK_KIND(broken_.empty(), ErrorKind::kComm,
                    op << " refused on " << describe()
                       << ": the communicator is unusable after an earlier failure: " << broken_);
    try {
      fn(deadline_after(timeout_s()));
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kComm) throw;
      broken_ = e.message();
      mark_communication_failed();
      // Peers may be gone: abort instead of letting NCCL kernels wait for them forever.
      if (comm_ != nullptr) ncclCommAbort(comm_);
      comm_ = nullptr;
      if (e.message().rfind(op, 0) == 0) throw;
      throw Error(ErrorKind::kComm, std::string(op) + ": " + e.message(), e.where());
    }
  }

  [[noreturn]] void throw_timeout(const char* op) const {
    CSKV_CHECK_KIND(false, ErrorKind::kComm,
                    op << " timed out after " << format_seconds(timeout_s()) << " s on "
                       << describe() << " (a peer may have died)");
  }

  template <typename Done>
  void poll(const char* op, Clock::time_point deadline, Done&& done) {
    const auto start = Clock::now();
    auto pause = std::chrono::microseconds(50);
    while (!done()) {
      const auto now = Clock::now();
      if (now >= deadline) throw_timeout(op);
      if (now - start < kSpinTime) continue;
      if (now - start < kYieldTime) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, kMaxPause);
      }
    }
  }

  // Non-blocking communicators: an operation is issued once the async state leaves InProgress.
  void wait_for_comm(const char* op, Clock::time_point deadline) {
    poll(op, deadline, [&] {
      ncclResult_t state = ncclInProgress;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress) {
        throw_nccl_error(state, "ncclCommGetAsyncError(comm)", __FILE__, __LINE__);
      }
      return state == ncclSuccess;
    });
  }

  void wait_for_stream(const char* op, Clock::time_point deadline) {
    wait_for_comm(op, deadline);
    poll(op, deadline, [&] {
      const cudaError_t query = cudaStreamQuery(stream_);
      if (query == cudaSuccess) return true;
      if (query != cudaErrorNotReady) CUDA_CHECK(query);
      ncclResult_t state = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress) {
        throw_nccl_error(state, "ncclCommGetAsyncError(comm)", __FILE__, __LINE__);
      }
      return false;
    });
  }

  std::unique_ptr<MpiCommunicator> mpi_;
  int device_;
  bool is_world_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::string broken_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<MpiCommunicator> mpi) {
  int devices = 0;
  CUDA_CHECK(cudaGetDeviceCount(&devices));
  CSKV_CHECK_USAGE(mpi->local_rank() < devices,
                   "backend 'nccl' needs one CUDA device per rank: rank "
                       << mpi->rank() << " is local rank " << mpi->local_rank() << " of "
                       << mpi->local_size() << " on its node, but " << devices
                       << " CUDA device(s) are visible");
  const int device = mpi->local_rank();
  return std::make_unique<NcclCommunicator>(std::move(mpi), device, /*is_world=*/true);
}

std::unique_ptr<Communicator> make_nccl_group(MpiCommunicator& world, int color, int key,
                                              int device) {
  int devices = 0;
  CUDA_CHECK(cudaGetDeviceCount(&devices));
  CSKV_CHECK_USAGE(
      device >= 0 && device < devices,
      "a NCCL group on cuda:" << device << ", but " << devices << " CUDA device(s) are visible");
  return std::make_unique<NcclCommunicator>(world.split_mpi(color, key), device,
                                            /*is_world=*/false);
}

std::string nccl_library_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  return std::to_string(v / 10000) + "." + std::to_string(v % 10000 / 100) + "." +
         std::to_string(v % 100) + " (headers " + std::to_string(NCCL_MAJOR) + "." +
         std::to_string(NCCL_MINOR) + "." + std::to_string(NCCL_PATCH) + ")";
}

}  // namespace cskv::comm
