// An in-process multi-rank Communicator for unit tests: run_ranks(n, body) runs body on n threads,
// each with its own rank, with the MPI backend's timeouts and messages, and injectable faults.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/error.h"

namespace cskv::test {

// Default bound on every ThreadCommunicator collective (small: tests time out quickly).
inline constexpr double kThreadCommTimeoutS = 5.0;

// A failure injected into one rank's call-th collective. Calls are counted from 1 per world rank
// over all its communicators (split() results included); argument errors are not counted.
struct Fault {
  enum class Kind {
    kFail,  // throws cskv::Error(kComm, message) instead of taking part
    kHang,  // never arrives: waits until every other rank has ended, then throws PeerEndedError
  };
  int rank = 0;
  int call = 1;
  Kind kind = Kind::kFail;
  std::string message;
};

struct FaultPlan {
  std::vector<Fault> faults;
  FaultPlan& fail(int rank, int call, std::string message);
  FaultPlan& hang(int rank, int call);
};

// Thrown by ThreadCommunicator::abort() in the calling thread (a real backend ends the job); the
// rank's peers fail at once instead of waiting for it. Deliberately not a cskv::Error.
class RankAborted : public std::runtime_error {
 public:
  RankAborted(int rank, const std::string& message);
  int rank() const { return rank_; }
  const std::string& message() const { return message_; }

 private:
  int rank_;
  std::string message_;
};

// cskv::Error(kComm) of a collective that cannot complete because a peer of its group ended (its
// body returned or threw, or it called abort()) without joining it; also what a hung rank throws
// when it is released. run_ranks reports such errors only when no rank failed for its own reason.
class PeerEndedError : public Error {
 public:
  using Error::Error;
};

namespace detail {
struct ThreadHub;
}

// One rank's communicator; made by run_ranks() and split(). local_rank/local_size equal
// rank/size; allreduce reduces in rank order 0..n-1 (sums are bit-identical run to run).
class ThreadCommunicator final : public comm::Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<detail::ThreadHub> hub, int group, int rank, int size,
                     int world_rank, double timeout_s);
  ~ThreadCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return rank_; }
  int local_size() const override { return size_; }
  std::string backend_name() const override { return "thread"; }
  double timeout_s() const override { return timeout_s_; }

  void barrier() override;
  void broadcast(at::Tensor& tensor, int root) override;
  void allreduce(at::Tensor& tensor, comm::ReduceOp op) override;
  std::vector<std::string> gather_bytes(const std::string& mine, int root) override;
  std::vector<std::string> allgather_bytes(const std::string& mine) override;
  void broadcast_bytes(std::string& bytes, int root) override;
  std::unique_ptr<comm::Communicator> split(int color, int key) override;
  // Marks this rank as ended (peers fail at once) and throws RankAborted.
  [[noreturn]] void abort(const std::string& message) override;

 private:
  // Every collective: each rank contributes a blob and receives all blobs, indexed by rank.
  std::vector<std::string> exchange(const char* op, std::string mine);
  std::vector<std::string> exchange_unchecked(const char* op, std::string mine);
  // "rank 1 of 2", or "rank 0 of 2 (world rank 3)" for a communicator made by split().
  std::string describe() const;

  std::shared_ptr<detail::ThreadHub> hub_;
  int group_;
  int rank_;
  int size_;
  int world_rank_;
  double timeout_s_;
  std::uint64_t next_round_ = 0;
  std::string broken_;  // the first communication failure; empty while usable
};

// Runs body(comm) on n threads (rank i gets a ThreadCommunicator of size n with rank i), joins
// them all, then rethrows the failure of the lowest rank that failed for its own reason (ignoring
// PeerEndedError when another rank failed otherwise). Collectives time out after timeout_s.
void run_ranks(int n, const std::function<void(comm::Communicator&)>& body, FaultPlan faults = {},
               double timeout_s = kThreadCommTimeoutS);

}  // namespace cskv::test
