// MpiCommunicator: MPI bootstrap (once per process), bounded collectives and sub-communicators.
// Each collective is a non-blocking MPI call polled with MPI_Test until done or past its deadline.
#include "comm/mpi_communicator.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/log.h"

namespace cskv::comm {

namespace {

std::mutex g_init_mutex;
// Set once any collective failed (timeout or MPI error): MPI_Finalize must not run at exit.
std::atomic<bool> g_comm_failed{false};

// Polling (MPI_Test drives the progress of non-blocking collectives): spin for the first
// kSpinTime (small collectives finish there), then yield the core until kYieldTime, then sleep
// with pauses growing to kMaxPause, so that long waits leave the cores to ranks that work.
constexpr std::chrono::microseconds kSpinTime{50};
constexpr std::chrono::microseconds kYieldTime{5000};
constexpr std::chrono::microseconds kMaxPause{1000};
// Deadlines further away than this are treated as "in 30 years" (no overflow of time_point).
constexpr double kMaxTimeoutS = 1e9;

void finalize_at_exit() {
  int finalized = 0;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) return;
  if (g_comm_failed.load()) {
    // spdlog's registry may already be destroyed at this point: plain stderr.
    std::fprintf(stderr,
                 "cskv [comm]: not calling MPI_Finalize after a communication failure (it would "
                 "wait for peers that may be dead); the launcher ends the job\n");
    return;
  }
  MPI_Finalize();
}

int world_rank_or_minus_one() {
  int initialized = 0, finalized = 0;
  if (MPI_Initialized(&initialized) != MPI_SUCCESS || !initialized) return -1;
  if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) return -1;
  int rank = -1;
  if (MPI_Comm_rank(MPI_COMM_WORLD, &rank) != MPI_SUCCESS) return -1;
  return rank;
}

// Completes request or returns false once deadline has passed.
bool poll_until(MPI_Request& request, std::chrono::steady_clock::time_point deadline) {
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(50);
  while (true) {
    int done = 0;
    MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
    if (done) return true;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    if (now - start < kSpinTime) continue;
    if (now - start < kYieldTime) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, kMaxPause);
    }
  }
}

std::chrono::steady_clock::time_point deadline_after(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
             std::chrono::duration<double>(std::min(seconds, kMaxTimeoutS)));
}

// Calls fn(offset, count) over [0, n) in pieces of at most max_count elements.
template <typename Fn>
void for_each_chunk(std::int64_t n, std::int64_t max_count, Fn&& fn) {
  for (std::int64_t offset = 0; offset < n; offset += max_count) {
    fn(offset, static_cast<int>(std::min(max_count, n - offset)));
  }
}

}  // namespace

namespace detail {
void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  std::string error;
  if (MPI_Error_string(code, text, &length) == MPI_SUCCESS) {
    error.assign(text, static_cast<size_t>(length));
  } else {
    error = "unknown MPI error code " + std::to_string(code);
  }
  std::string function = call;
  function = function.substr(0, function.find('('));
  const int rank = error_rank() >= 0 ? error_rank() : world_rank_or_minus_one();
  std::ostringstream os;
  os << function << " failed";
  if (rank >= 0) os << " on rank " << rank;
  os << ": " << error;
  ::cskv::detail::throw_error(ErrorKind::kComm, file, line, call, os.str());
}
}  // namespace detail

void mark_communication_failed() { g_comm_failed = true; }

std::string mpi_thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
    default:
      return "thread level " + std::to_string(level);
  }
}

void ensure_mpi_initialized() {
  std::lock_guard<std::mutex> lock(g_init_mutex);
  int initialized = 0, finalized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  MPI_CHECK(MPI_Finalized(&finalized));
  CSKV_CHECK_KIND(!finalized, ErrorKind::kComm,
                  "MPI was already finalized in this process and cannot be initialised again");
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    MPI_CHECK(MPI_Init_thread(nullptr, nullptr, kRequiredMpiThreadLevel, &provided));
    std::atexit(finalize_at_exit);
    // The process is ours: errors on the world communicator come back as codes, not aborts.
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  } else {
    MPI_CHECK(MPI_Query_thread(&provided));
  }
  CSKV_CHECK_KIND(provided >= kRequiredMpiThreadLevel, ErrorKind::kComm,
                  "MPI provides " << mpi_thread_level_name(provided) << " but cskv needs at least "
                                  << mpi_thread_level_name(kRequiredMpiThreadLevel)
                                  << " (use an MPI library built with thread support)");
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::create_world(const CommOptions& options) {
  const double timeout_s = resolve_timeout_s(options);
  CSKV_CHECK_USAGE(
      options.max_chunk_elements >= 1,
      "max_chunk_elements: expected a positive count, found " << options.max_chunk_elements);
  ensure_mpi_initialized();
  MPI_Comm world = MPI_COMM_NULL;
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Comm_idup(MPI_COMM_WORLD, &world, &request));
  if (!poll_until(request, deadline_after(timeout_s))) {
    g_comm_failed = true;
    int rank = -1, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    CSKV_CHECK_KIND(false, ErrorKind::kComm,
                    "MPI startup (duplicating MPI_COMM_WORLD) timed out after "
                        << format_seconds(timeout_s) << " s on rank " << rank << " of " << size
                        << " (a peer may have died)");
  }
  return std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(world, timeout_s, options.max_chunk_elements, /*is_world=*/true));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double timeout_s, std::int64_t max_chunk_elements,
                                 bool is_world)
    : comm_(comm),
      timeout_s_(timeout_s),
      max_chunk_elements_(max_chunk_elements),
      is_world_(is_world) {
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  run_collective("finding the ranks on this node", [&](Clock::time_point deadline) {
    // MPI_Comm_split_type blocks; the bounded barrier first proves that every peer is there.
    barrier_until("finding the ranks on this node", deadline);
    MPI_Comm node = MPI_COMM_NULL;
    MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
    MPI_CHECK(MPI_Comm_size(node, &local_size_));
    MPI_CHECK(MPI_Comm_free(&node));
  });
  log::get("comm")->debug("mpi communicator: {} (local rank {} of {}), timeout {} s", describe(),
                          local_rank_, local_size_, format_seconds(timeout_s_));
}

MpiCommunicator::~MpiCommunicator() {
  // After a failure a request may still be pending on comm_: leave it to process exit.
  if (comm_ == MPI_COMM_NULL || !broken_.empty()) return;
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Comm_free(&comm_);
}

std::string MpiCommunicator::describe() const {
  std::ostringstream os;
  os << "rank " << rank_ << " of " << size_;
  if (!is_world_) os << " (world rank " << world_rank_ << ")";
  return os.str();
}

template <typename Fn>
auto MpiCommunicator::run_collective(const char* op, Fn&& fn) -> decltype(fn(Clock::time_point{})) {
  CSKV_CHECK_KIND(broken_.empty(), ErrorKind::kComm,
                  op << " refused on " << describe()
                     << ": the communicator is unusable after an earlier failure: " << broken_);
  try {
    return fn(deadline_after(timeout_s_));
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kComm) throw;
    broken_ = e.message();
    g_comm_failed = true;
    if (e.message().rfind(op, 0) == 0) throw;
    throw Error(ErrorKind::kComm, std::string(op) + ": " + e.message(), e.where());
  }
}

void MpiCommunicator::wait(MPI_Request& request, const char* op, Clock::time_point deadline) {
  CSKV_CHECK_KIND(poll_until(request, deadline), ErrorKind::kComm,
                  op << " timed out after " << format_seconds(timeout_s_) << " s on " << describe()
                     << " (a peer may have died)");
}

void MpiCommunicator::barrier_until(const char* op, Clock::time_point deadline) {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Ibarrier(comm_, &request));
  wait(request, op, deadline);
}

std::vector<std::int64_t> MpiCommunicator::allgather_lengths(const char* op, std::int64_t mine,
                                                             Clock::time_point deadline) {
  std::vector<std::int64_t> lengths(static_cast<size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Iallgather(&mine, 1, MPI_INT64_T, lengths.data(), 1, MPI_INT64_T, comm_, &request));
  wait(request, op, deadline);
  std::int64_t total = 0;
  for (auto length : lengths) total += length;
  CSKV_CHECK(total <= INT_MAX, op << ": the blobs of all ranks total " << total
                                  << " bytes, more than one MPI call can carry (" << INT_MAX
                                  << "); send large data as tensors");
  return lengths;
}

void MpiCommunicator::barrier() {
  run_collective("barrier",
                 [&](Clock::time_point deadline) { barrier_until("barrier", deadline); });
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  detail::check_root(*this, "broadcast", root);
  detail::check_cpu_tensor(*this, "broadcast", tensor);
  run_collective("broadcast", [&](Clock::time_point deadline) {
    // Any dtype travels as bytes; chunks hold whole elements and stay below INT_MAX bytes.
    const std::int64_t item = static_cast<std::int64_t>(tensor.element_size());
    const std::int64_t max_elements = std::min<std::int64_t>(max_chunk_elements_, INT_MAX / item);
    char* base = static_cast<char*>(tensor.data_ptr());
    for_each_chunk(tensor.numel(), max_elements, [&](std::int64_t offset, int count) {
      MPI_Request request = MPI_REQUEST_NULL;
      MPI_CHECK(MPI_Ibcast(base + offset * item, static_cast<int>(count * item), MPI_BYTE, root,
                           comm_, &request));
      wait(request, "broadcast", deadline);
    });
  });
}

void MpiCommunicator::allreduce(at::Tensor& tensor, ReduceOp op) {
  const char* name = allreduce_name(op);
  detail::check_cpu_tensor(*this, name, tensor);
  detail::check_allreduce_dtype(*this, tensor, op);
  const auto dtype = tensor.scalar_type();
  const MPI_Datatype type =
      dtype == at::kFloat ? MPI_FLOAT : (dtype == at::kDouble ? MPI_DOUBLE : MPI_INT64_T);
  const MPI_Op mpi_op = op == ReduceOp::kSum ? MPI_SUM : (op == ReduceOp::kMax ? MPI_MAX : MPI_MIN);
  run_collective(name, [&](Clock::time_point deadline) {
    const std::int64_t item = static_cast<std::int64_t>(tensor.element_size());
    const std::int64_t max_elements = std::min<std::int64_t>(max_chunk_elements_, INT_MAX);
    char* base = static_cast<char*>(tensor.data_ptr());
    for_each_chunk(tensor.numel(), max_elements, [&](std::int64_t offset, int count) {
      MPI_Request request = MPI_REQUEST_NULL;
      MPI_CHECK(
          MPI_Iallreduce(MPI_IN_PLACE, base + offset * item, count, type, mpi_op, comm_, &request));
      wait(request, name, deadline);
    });
  });
}

std::vector<std::string> MpiCommunicator::gather_bytes(const std::string& mine, int root) {
  detail::check_root(*this, "gather_bytes", root);
  return run_collective("gather_bytes", [&](Clock::time_point deadline) {
    // Every rank learns every length, so a too-large total fails on all ranks alike.
    const auto lengths =
        allgather_lengths("gather_bytes", static_cast<std::int64_t>(mine.size()), deadline);
    std::vector<int> counts(lengths.begin(), lengths.end());
    std::vector<int> displacements(counts.size(), 0);
    for (size_t i = 1; i < counts.size(); ++i) {
      displacements[i] = displacements[i - 1] + counts[i - 1];
    }
    std::string all(rank_ == root ? static_cast<size_t>(displacements.back() + counts.back()) : 0,
                    '\0');
    MPI_Request request = MPI_REQUEST_NULL;
    MPI_CHECK(MPI_Igatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(),
                           counts.data(), displacements.data(), MPI_BYTE, root, comm_, &request));
    wait(request, "gather_bytes", deadline);
    std::vector<std::string> blobs;
    if (rank_ != root) return blobs;
    for (size_t i = 0; i < counts.size(); ++i) {
      blobs.push_back(
          all.substr(static_cast<size_t>(displacements[i]), static_cast<size_t>(counts[i])));
    }
    return blobs;
  });
}

std::vector<std::string> MpiCommunicator::allgather_bytes(const std::string& mine) {
  return run_collective("allgather_bytes", [&](Clock::time_point deadline) {
    const auto lengths =
        allgather_lengths("allgather_bytes", static_cast<std::int64_t>(mine.size()), deadline);
    std::vector<int> counts(lengths.begin(), lengths.end());
    std::vector<int> displacements(counts.size(), 0);
    for (size_t i = 1; i < counts.size(); ++i) {
      displacements[i] = displacements[i - 1] + counts[i - 1];
    }
    std::string all(static_cast<size_t>(displacements.back() + counts.back()), '\0');
    MPI_Request request = MPI_REQUEST_NULL;
    MPI_CHECK(MPI_Iallgatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(),
                              counts.data(), displacements.data(), MPI_BYTE, comm_, &request));
    wait(request, "allgather_bytes", deadline);
    std::vector<std::string> blobs;
    for (size_t i = 0; i < counts.size(); ++i) {
      blobs.push_back(
          all.substr(static_cast<size_t>(displacements[i]), static_cast<size_t>(counts[i])));
    }
    return blobs;
  });
}

void MpiCommunicator::broadcast_bytes(std::string& bytes, int root) {
  detail::check_root(*this, "broadcast_bytes", root);
  run_collective("broadcast_bytes", [&](Clock::time_point deadline) {
    std::int64_t length = static_cast<std::int64_t>(bytes.size());
    MPI_Request request = MPI_REQUEST_NULL;
    MPI_CHECK(MPI_Ibcast(&length, 1, MPI_INT64_T, root, comm_, &request));
    wait(request, "broadcast_bytes", deadline);
    if (rank_ != root) bytes.assign(static_cast<size_t>(length), '\0');
    const std::int64_t max_bytes = std::min<std::int64_t>(max_chunk_elements_, INT_MAX);
    for_each_chunk(length, max_bytes, [&](std::int64_t offset, int count) {
      MPI_CHECK(MPI_Ibcast(bytes.data() + offset, count, MPI_BYTE, root, comm_, &request));
      wait(request, "broadcast_bytes", deadline);
    });
  });
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split_mpi(int color, int key) {
  detail::check_split_color(*this, color);
  MPI_Comm child = MPI_COMM_NULL;
  run_collective("split", [&](Clock::time_point deadline) {
    // MPI_Comm_split blocks; the bounded barrier first proves that every peer is there.
    barrier_until("split", deadline);
    MPI_CHECK(MPI_Comm_split(comm_, color, key, &child));
  });
  return std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(child, timeout_s_, max_chunk_elements_, /*is_world=*/false));
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  return split_mpi(color, key);
}

void MpiCommunicator::abort(const std::string& message) {
  auto logger = log::get("comm");
  logger->critical("aborting the job from {}: {}", describe(), message);
  logger->flush();
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);  // MPI_Abort does not return; this keeps [[noreturn]] honest if it did
}

}  // namespace cskv::comm
