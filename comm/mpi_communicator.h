// The MPI Communicator for CPU tensors: initialises MPI once, and bounds every collective by a
// timeout (non-blocking MPI calls polled against a deadline), so a dead peer never hangs a rank.
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C API only: OpenMPI's C++ bindings are deprecated
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace cskv::comm {

namespace detail {
// Throws cskv::Error(kComm): "<MPI function> failed on rank R: <MPI_Error_string>".
[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);
}  // namespace detail

// MPI_CHECK(MPI_Foo(...)) — turns a failed MPI call into cskv::Error(kComm) that names the
// call, the file and line, the world rank and MPI's own error string.
#define MPI_CHECK(call)                                                               \
  do {                                                                                \
    const int cskv_mpi_rc_ = (call);                                                  \
    if (cskv_mpi_rc_ != MPI_SUCCESS) {                                                \
      ::cskv::comm::detail::throw_mpi_error(cskv_mpi_rc_, #call, __FILE__, __LINE__); \
    }                                                                                 \
  } while (0)

// The thread level cskv needs: collectives may be called from any one thread at a time.
inline constexpr int kRequiredMpiThreadLevel = MPI_THREAD_SERIALIZED;

// Initialises MPI (MPI_Init_thread) unless it already is, and checks the provided thread level.
// MPI is finalized at process exit only if this function initialised it, and not at all after a
// communication failure (MPI_Finalize would wait for peers that may be dead).
void ensure_mpi_initialized();

// Records that a collective of this process failed (any backend), so that process exit does not
// call MPI_Finalize, which would wait for peers that may be dead.
void mark_communication_failed();

// "MPI_THREAD_SERIALIZED" etc.
std::string mpi_thread_level_name(int level);

class MpiCommunicator final : public Communicator {
 public:
  // All processes of the job (a duplicate of MPI_COMM_WORLD); initialises MPI if needed.
  static std::unique_ptr<MpiCommunicator> create_world(const CommOptions& options);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string backend_name() const override { return "mpi"; }
  double timeout_s() const override { return timeout_s_; }

  void barrier() override;
  void broadcast(at::Tensor& tensor, int root) override;
  void allreduce(at::Tensor& tensor, ReduceOp op) override;
  std::vector<std::string> gather_bytes(const std::string& mine, int root) override;
  std::vector<std::string> allgather_bytes(const std::string& mine) override;
  void broadcast_bytes(std::string& bytes, int root) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(const std::string& message) override;

  // The underlying MPI communicator (for bootstrapping other libraries, e.g. NCCL).
  MPI_Comm handle() const { return comm_; }
  // Same as split() with the concrete type.
  std::unique_ptr<MpiCommunicator> split_mpi(int color, int key);

 private:
  using Clock = std::chrono::steady_clock;

  // Takes ownership of comm (is_world: a duplicate of MPI_COMM_WORLD, not a split() result).
  MpiCommunicator(MPI_Comm comm, double timeout_s, std::int64_t max_chunk_elements, bool is_world);

  // Runs one collective: refuses if the communicator is broken, and marks it broken (and the
  // process as having had a communication failure) when the collective throws kComm.
  template <typename Fn>
  auto run_collective(const char* op, Fn&& fn) -> decltype(fn(Clock::time_point{}));
  // Polls request until it completes or deadline passes (then throws the timeout error).
  void wait(MPI_Request& request, const char* op, Clock::time_point deadline);
  // "rank 1 of 2", or "rank 0 of 2 (world rank 3)" for a communicator made by split().
  std::string describe() const;
  void barrier_until(const char* op, Clock::time_point deadline);
  std::vector<std::int64_t> allgather_lengths(const char* op, std::int64_t mine,
                                              Clock::time_point deadline);

  MPI_Comm comm_ = MPI_COMM_NULL;
  double timeout_s_;
  std::int64_t max_chunk_elements_;
  bool is_world_;
  int rank_ = -1;
  int size_ = 0;
  int local_rank_ = -1;
  int local_size_ = 0;
  int world_rank_ = -1;
  std::string broken_;  // the first communication failure; empty while usable
};

}  // namespace cskv::comm
