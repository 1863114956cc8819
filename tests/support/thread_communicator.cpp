// ThreadCommunicator: every collective is one "round" in a hub shared by the threads of a
// run_ranks() call (one mutex, one condition variable); each rank waits for all contributions
// of its round, for a peer that ended, or for its deadline, whichever comes first.
#include "tests/support/thread_communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

namespace cskv::test {

namespace detail {

using Clock = std::chrono::steady_clock;

// One collective of one group: the ranks' blobs and operation names, by group rank.
struct Round {
  std::vector<std::optional<std::string>> blobs;
  std::vector<std::string> ops;
  int arrived = 0;
  int departed = 0;
};

// A communicator shared by several threads: the world, or one color of a split().
struct Group {
  std::vector<int> members;  // world ranks, by group rank
  std::map<std::uint64_t, Round> rounds;
  // split() results, by (round of the split, color): the child group and how many members
  // have yet to pick it up.
  std::map<std::pair<std::uint64_t, int>, std::pair<int, int>> children;
};

struct ThreadHub {
  std::mutex mutex;
  std::condition_variable changed;
  FaultPlan faults;
  std::vector<std::unique_ptr<Group>> groups;  // by group id; 0 is the world
  std::vector<std::string> ended;              // by world rank: why it ended; empty: running
  std::vector<int> calls;                      // by world rank: collectives so far

  int world_size() const { return static_cast<int>(ended.size()); }
  const Fault* fault_for(int world_rank, int call) const {
    for (const auto& f : faults.faults) {
      if (f.rank == world_rank && f.call == call) return &f;
    }
    return nullptr;
  }
  void end(int world_rank, std::string why) {
    std::lock_guard<std::mutex> lock(mutex);
    if (ended[static_cast<size_t>(world_rank)].empty()) {
      ended[static_cast<size_t>(world_rank)] = std::move(why);
    }
    changed.notify_all();
  }
  bool others_ended(int world_rank) const {
    for (int r = 0; r < world_size(); ++r) {
      if (r != world_rank && ended[static_cast<size_t>(r)].empty()) return false;
    }
    return true;
  }
};

Clock::time_point deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::min(seconds, 1e9)));
}

}  // namespace detail

using detail::Clock;

FaultPlan& FaultPlan::fail(int rank, int call, std::string message) {
  faults.push_back({rank, call, Fault::Kind::kFail, std::move(message)});
  return *this;
}

FaultPlan& FaultPlan::hang(int rank, int call) {
  faults.push_back({rank, call, Fault::Kind::kHang, {}});
  return *this;
}

RankAborted::RankAborted(int rank, const std::string& message)
    : std::runtime_error("rank " + std::to_string(rank) + " called abort(): " + message),
      rank_(rank),
      message_(message) {}

ThreadCommunicator::ThreadCommunicator(std::shared_ptr<detail::ThreadHub> hub, int group, int rank,
                                       int size, int world_rank, double timeout_s)
    : hub_(std::move(hub)),
      group_(group),
      rank_(rank),
      size_(size),
      world_rank_(world_rank),
      timeout_s_(timeout_s) {}

ThreadCommunicator::~ThreadCommunicator() = default;

std::string ThreadCommunicator::describe() const {
  std::ostringstream os;
  os << "rank " << rank_ << " of " << size_;
  if (group_ != 0) os << " (world rank " << world_rank_ << ")";
  return os.str();
}

std::vector<std::string> ThreadCommunicator::exchange(const char* op, std::string mine) {
  CSKV_CHECK_KIND(broken_.empty(), ErrorKind::kComm,
                  op << " refused on " << describe()
                     << ": the communicator is unusable after an earlier failure: " << broken_);
  try {
    return exchange_unchecked(op, std::move(mine));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kComm) broken_ = e.message();
    throw;
  }
}

std::vector<std::string> ThreadCommunicator::exchange_unchecked(const char* op, std::string mine) {
  auto& hub = *hub_;
  std::unique_lock<std::mutex> lock(hub.mutex);
  const int call = ++hub.calls[static_cast<size_t>(world_rank_)];
  if (const Fault* fault = hub.fault_for(world_rank_, call)) {
    if (fault->kind == Fault::Kind::kFail) throw Error(ErrorKind::kComm, fault->message);
    // A hung rank: gone for its peers until they have all ended (bounded, so joins finish).
    hub.changed.wait_until(lock, detail::deadline_after(10 * timeout_s_ + 1),
                           [&] { return hub.others_ended(world_rank_); });
    std::ostringstream os;
    os << op << " on " << describe() << ": hung by the fault plan (collective call " << call
       << "), released once the other ranks ended";
    throw PeerEndedError(ErrorKind::kComm, os.str());
  }
  const std::uint64_t id = next_round_++;
  detail::Group& group = *hub.groups[static_cast<size_t>(group_)];
  detail::Round& round = group.rounds[id];
  if (round.blobs.empty()) {
    round.blobs.resize(static_cast<size_t>(size_));
    round.ops.resize(static_cast<size_t>(size_));
  }
  round.blobs[static_cast<size_t>(rank_)] = std::move(mine);
  round.ops[static_cast<size_t>(rank_)] = op;
  ++round.arrived;
  hub.changed.notify_all();
  const auto deadline = detail::deadline_after(timeout_s_);
  while (round.arrived < size_) {
    for (int r = 0; r < size_; ++r) {
      const int peer = group.members[static_cast<size_t>(r)];
      const std::string& why = hub.ended[static_cast<size_t>(peer)];
      if (round.blobs[static_cast<size_t>(r)] || why.empty()) continue;
      std::ostringstream os;
      os << op << " failed on " << describe() << ": rank " << r;
      if (group_ != 0) os << " (world rank " << peer << ")";
      os << " will not join it (" << why << ")";
      throw PeerEndedError(ErrorKind::kComm, os.str());
    }
    if (hub.changed.wait_until(lock, deadline) == std::cv_status::timeout &&
        round.arrived < size_) {
      CSKV_CHECK_KIND(false, ErrorKind::kComm,
                      op << " timed out after " << comm::format_seconds(timeout_s_) << " s on "
                         << describe() << " (a peer may have died)");
    }
  }
  std::vector<std::string> blobs(static_cast<size_t>(size_));
  std::vector<std::string> ops = round.ops;
  for (int r = 0; r < size_; ++r)
    blobs[static_cast<size_t>(r)] = *round.blobs[static_cast<size_t>(r)];
  if (++round.departed == size_) group.rounds.erase(id);
  for (int r = 0; r < size_; ++r) {
    CSKV_CHECK_KIND(ops[static_cast<size_t>(r)] == op, ErrorKind::kComm,
                    op << " on " << describe() << " met " << ops[static_cast<size_t>(r)]
                       << " on rank " << r
                       << ": every rank must call the same collectives in the same order");
  }
  return blobs;
}

void ThreadCommunicator::barrier() { exchange("barrier", {}); }

void ThreadCommunicator::broadcast(at::Tensor& tensor, int root) {
  comm::detail::check_root(*this, "broadcast", root);
  comm::detail::check_cpu_tensor(*this, "broadcast", tensor);
  const size_t nbytes = tensor.nbytes();
  std::string mine;
  if (rank_ == root) mine.assign(static_cast<const char*>(tensor.data_ptr()), nbytes);
  const auto blobs = exchange("broadcast", std::move(mine));
  const std::string& sent = blobs[static_cast<size_t>(root)];
  CSKV_CHECK(sent.size() == nbytes, "broadcast: root " << root << " sent " << sent.size()
                                                       << " bytes but " << describe()
                                                       << " holds a tensor of " << nbytes
                                                       << " bytes (same shape and dtype "
                                                          "on every rank)");
  if (rank_ != root && nbytes > 0) std::memcpy(tensor.data_ptr(), sent.data(), nbytes);
}

void ThreadCommunicator::allreduce(at::Tensor& tensor, comm::ReduceOp op) {
  const char* name = comm::allreduce_name(op);
  comm::detail::check_cpu_tensor(*this, name, tensor);
  comm::detail::check_allreduce_dtype(*this, tensor, op);
  // A header line with dtype and element count, so that mismatched tensors are an error.
  const std::string header =
      comm::dtype_name(tensor.scalar_type()) + " " + std::to_string(tensor.numel()) + "\n";
  const size_t nbytes = tensor.nbytes();
  std::string mine = header;
  mine.append(static_cast<const char*>(tensor.data_ptr()), nbytes);
  const auto blobs = exchange(name, std::move(mine));
  at::Tensor result;
  for (int r = 0; r < size_; ++r) {
    const std::string& blob = blobs[static_cast<size_t>(r)];
    CSKV_CHECK(blob.compare(0, header.size(), header) == 0 && blob.size() == header.size() + nbytes,
               name << " on " << describe() << ": rank " << r << " sent "
                    << blob.substr(0, blob.find('\n')) << " where this rank has "
                    << header.substr(0, header.size() - 1)
                    << " (same dtype and element count on every rank)");
    // A fresh (aligned) tensor per contribution, combined in rank order 0..n-1.
    auto part = at::empty({tensor.numel()}, tensor.options());
    if (nbytes > 0) std::memcpy(part.data_ptr(), blob.data() + header.size(), nbytes);
    if (r == 0) {
      result = part;
    } else if (op == comm::ReduceOp::kSum) {
      result.add_(part);
    } else if (op == comm::ReduceOp::kMax) {
      result = at::maximum(result, part);
    } else {
      result = at::minimum(result, part);
    }
  }
  tensor.copy_(result.view(tensor.sizes()));
}

std::vector<std::string> ThreadCommunicator::gather_bytes(const std::string& mine, int root) {
  comm::detail::check_root(*this, "gather_bytes", root);
  auto blobs = exchange("gather_bytes", mine);
  if (rank_ != root) return {};
  return blobs;
}

std::vector<std::string> ThreadCommunicator::allgather_bytes(const std::string& mine) {
  return exchange("allgather_bytes", mine);
}

void ThreadCommunicator::broadcast_bytes(std::string& bytes, int root) {
  comm::detail::check_root(*this, "broadcast_bytes", root);
  auto blobs = exchange("broadcast_bytes", rank_ == root ? bytes : std::string());
  if (rank_ != root) bytes = std::move(blobs[static_cast<size_t>(root)]);
}

std::unique_ptr<comm::Communicator> ThreadCommunicator::split(int color, int key) {
  comm::detail::check_split_color(*this, color);
  const std::uint64_t round = next_round_;
  const auto blobs = exchange("split", std::to_string(color) + " " + std::to_string(key));
  // (key, rank) of the ranks with this color: their order is the new group's rank order.
  std::vector<std::pair<int, int>> same_color;
  for (int r = 0; r < size_; ++r) {
    int c = 0, k = 0;
    std::istringstream(blobs[static_cast<size_t>(r)]) >> c >> k;
    if (c == color) same_color.emplace_back(k, r);
  }
  std::sort(same_color.begin(), same_color.end());
  const int new_size = static_cast<int>(same_color.size());
  int new_rank = -1;
  for (int i = 0; i < new_size; ++i) {
    if (same_color[static_cast<size_t>(i)].second == rank_) new_rank = i;
  }
  auto& hub = *hub_;
  int child = -1;
  {
    std::lock_guard<std::mutex> lock(hub.mutex);
    detail::Group& group = *hub.groups[static_cast<size_t>(group_)];
    auto& entry = group.children[{round, color}];
    if (entry.second == 0) {
      auto made = std::make_unique<detail::Group>();
      for (const auto& [k, r] : same_color) {
        made->members.push_back(group.members[static_cast<size_t>(r)]);
      }
      entry = {static_cast<int>(hub.groups.size()), new_size};
      hub.groups.push_back(std::move(made));
    }
    child = entry.first;
    if (--entry.second == 0) group.children.erase({round, color});
  }
  return std::make_unique<ThreadCommunicator>(hub_, child, new_rank, new_size, world_rank_,
                                              timeout_s_);
}

void ThreadCommunicator::abort(const std::string& message) {
  broken_ = "this rank called abort(): " + message;
  hub_->end(world_rank_, "it called abort(): " + message);
  throw RankAborted(world_rank_, message);
}

void run_ranks(int n, const std::function<void(comm::Communicator&)>& body, FaultPlan faults,
               double timeout_s) {
  CSKV_CHECK_USAGE(n >= 1, "run_ranks: expected at least 1 rank, found " << n);
  CSKV_CHECK_USAGE(timeout_s > 0, "run_ranks: expected a positive timeout, found " << timeout_s);
  auto hub = std::make_shared<detail::ThreadHub>();
  hub->faults = std::move(faults);
  hub->ended.assign(static_cast<size_t>(n), {});
  hub->calls.assign(static_cast<size_t>(n), 0);
  auto world = std::make_unique<detail::Group>();
  for (int r = 0; r < n; ++r) world->members.push_back(r);
  hub->groups.push_back(std::move(world));

  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      std::string why = "its body returned";
      try {
        ThreadCommunicator comm(hub, 0, r, n, r, timeout_s);
        body(comm);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        why = std::string("it failed: ") + e.what();
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
        why = "it failed with an exception that is not a std::exception";
      }
      hub->end(r, why);
    });
  }
  // Every collective is bounded, so this bound is only hit by a body stuck outside collectives;
  // the threads use this frame's state, so the process cannot go on without them.
  {
    std::unique_lock<std::mutex> lock(hub->mutex);
    const bool all_ended =
        hub->changed.wait_until(lock, detail::deadline_after(20 * timeout_s + 10), [&] {
          return std::none_of(hub->ended.begin(), hub->ended.end(),
                              [](const std::string& why) { return why.empty(); });
        });
    if (!all_ended) {
      std::fprintf(stderr, "run_ranks: ranks still running after %g s:", 20 * timeout_s + 10);
      for (int r = 0; r < n; ++r) {
        if (hub->ended[static_cast<size_t>(r)].empty()) std::fprintf(stderr, " %d", r);
      }
      std::fprintf(stderr, " (stuck outside a collective); aborting the test process\n");
      std::abort();
    }
  }
  for (auto& t : threads) t.join();

  std::exception_ptr first;
  for (const auto& error : errors) {
    if (!error) continue;
    bool consequence = false;
    try {
      std::rethrow_exception(error);
    } catch (const PeerEndedError&) {
      consequence = true;
    } catch (...) {
    }
    if (!consequence) std::rethrow_exception(error);
    if (!first) first = error;
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace cskv::test
