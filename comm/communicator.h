// The Communicator interface every distributed part of cskv talks to (rank, collectives, groups).
// Backends: local (size 1), MPI (CPU tensors), NCCL (CUDA tensors); comm/factory.h picks one.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace cskv::comm {

// Default bound on every blocking collective, overridable by CSKV_COMM_TIMEOUT_S.
inline constexpr double kDefaultTimeoutS = 300.0;
inline constexpr const char* kTimeoutEnvVar = "CSKV_COMM_TIMEOUT_S";

// How to build a communicator; declared in one place, resolved by resolve_timeout_s().
struct CommOptions {
  // "auto" (MPI when launched by mpirun/srun, local otherwise) | "local" | "mpi" | "nccl".
  std::string backend = "auto";
  // Seconds any collective may wait for its peers; unset: $CSKV_COMM_TIMEOUT_S, else 300 s.
  std::optional<double> timeout_s;
  // Largest element count handed to one MPI call; larger tensors are sent in chunks.
  // The default is the MPI limit (INT_MAX); smaller values exist so tests exercise chunking.
  std::int64_t max_chunk_elements = 2147483647;
};

// The timeout in effect: options.timeout_s, else $CSKV_COMM_TIMEOUT_S, else kDefaultTimeoutS.
// A non-positive or non-numeric value is a usage error naming where it came from.
double resolve_timeout_s(const CommOptions& options);

// Formats seconds the way timeout messages print them ("5", "0.25").
std::string format_seconds(double seconds);

// "float32", "float64", "int64", ... (PyTorch's names, used in error messages).
std::string dtype_name(at::ScalarType type);

// How allreduce combines the ranks' elements.
enum class ReduceOp { kSum, kMax, kMin };

// The operation's name in messages: "allreduce_sum", "allreduce_max", "allreduce_min".
const char* allreduce_name(ReduceOp op);

// A group of processes that run collectives together. Non-copyable: a communicator owns
// library handles (an MPI communicator, a NCCL communicator) that must be freed exactly once.
//
// Every collective must be called by all ranks of the communicator in the same order, and by one
// thread at a time in each process (MPI is initialised with MPI_THREAD_SERIALIZED).
// Every blocking call returns within the timeout or throws cskv::Error(kComm) naming the
// operation and the rank; after such an error the communicator is unusable and the process
// should call abort() (or exit, which aborts the whole job rather than waiting for peers).
class Communicator {
 public:
  Communicator() = default;
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&&) = delete;
  Communicator& operator=(Communicator&&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank among the processes of this communicator on the same node, and their count.
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  // "local" | "mpi" | "nccl".
  virtual std::string backend_name() const = 0;
  // Seconds a collective waits before it throws.
  virtual double timeout_s() const = 0;

  virtual void barrier() = 0;
  // Copies root's tensor into every rank's tensor (same shape and dtype on all ranks;
  // contiguous, on a device this backend handles).
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  // Element-wise reduction over ranks, in place: float32, float64 or int64, any op.
  // Messages name the operation as allreduce_name(op).
  virtual void allreduce(at::Tensor& tensor, ReduceOp op) = 0;
  // allreduce(tensor, ReduceOp::kSum) for float32 and float64 (the dtypes of gradients and
  // statistics); an integer tensor is an error here, so integer sums are asked for explicitly.
  void allreduce_sum(at::Tensor& tensor);

  // Small byte blobs (metadata, JSON, file lists); each rank's blob may have its own length.
  // gather_bytes: root receives all blobs indexed by rank; other ranks receive an empty vector.
  virtual std::vector<std::string> gather_bytes(const std::string& mine, int root) = 0;
  // Every rank receives all blobs indexed by rank.
  virtual std::vector<std::string> allgather_bytes(const std::string& mine) = 0;
  // Non-root ranks' strings are replaced by root's.
  virtual void broadcast_bytes(std::string& bytes, int root) = 0;

  // Collective: ranks with the same color (>= 0) form a new communicator, ordered by key
  // (ties by rank in this communicator). Used for data-parallel groups.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // Terminates every process of the job after logging message; never returns.
  [[noreturn]] virtual void abort(const std::string& message) = 0;
};

namespace detail {
// Argument checks shared by all backends so that code that runs locally also runs under MPI.
void check_root(const Communicator& comm, const char* op, int root);
void check_dense_contiguous(const Communicator& comm, const char* op, const at::Tensor& tensor);
void check_cpu_tensor(const Communicator& comm, const char* op, const at::Tensor& tensor);
// allreduce: float32, float64 or int64; allreduce_sum(): float32 or float64.
void check_allreduce_dtype(const Communicator& comm, const at::Tensor& tensor, ReduceOp op);
void check_allreduce_sum_dtype(const Communicator& comm, const at::Tensor& tensor);
void check_split_color(const Communicator& comm, int color);
}  // namespace detail

}  // namespace cskv::comm
