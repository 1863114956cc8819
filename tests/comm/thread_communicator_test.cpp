// The in-process multi-rank communicator of tests/support (run_ranks): collectives checked
// against values computed from the rank, split groups, timeouts and injected faults.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/error.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"

namespace cskv::test {
namespace {

using comm::Communicator;
using comm::ReduceOp;

constexpr double kShortTimeoutS = 0.3;

// x[i] of a rank: signs and magnitudes differ by rank, so max and min are not one rank's values.
double rank_value(int rank, std::int64_t i) {
  const double sign = (rank + i) % 2 == 0 ? 1.0 : -1.0;
  return sign * static_cast<double>((rank + 1) * (i % 13) + rank);
}

at::Tensor rank_tensor(int rank, std::int64_t n, at::ScalarType dtype) {
  auto t = at::empty({n}, at::kDouble);
  for (std::int64_t i = 0; i < n; ++i) t[i] = rank_value(rank, i);
  return t.to(dtype);
}

at::Tensor expected_reduction(int size, std::int64_t n, ReduceOp op, at::ScalarType dtype) {
  auto t = at::empty({n}, at::kDouble);
  for (std::int64_t i = 0; i < n; ++i) {
    double acc = rank_value(0, i);
    for (int r = 1; r < size; ++r) {
      const double x = rank_value(r, i);
      acc = op == ReduceOp::kSum ? acc + x
                                 : (op == ReduceOp::kMax ? std::max(acc, x) : std::min(acc, x));
    }
    t[i] = acc;
  }
  return t.to(dtype);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(ThreadCommunicator, ReportsRanksAndBackend) {
  std::vector<std::string> seen(3);
  run_ranks(3, [&](Communicator& comm) {
    seen[static_cast<size_t>(comm.rank())] =
        comm.backend_name() + " " + std::to_string(comm.rank()) + "/" +
        std::to_string(comm.size()) + " local " + std::to_string(comm.local_rank()) + "/" +
        std::to_string(comm.local_size()) + " " + comm::format_seconds(comm.timeout_s());
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"thread 0/3 local 0/3 5", "thread 1/3 local 1/3 5",
                                            "thread 2/3 local 2/3 5"}));
}

TEST(ThreadCommunicator, AllreduceEveryOpAndDtypeOnOneToFiveRanks) {
  for (int n = 1; n <= 5; ++n) {
    std::mutex mutex;
    std::vector<std::string> mismatches;
    run_ranks(n, [&](Communicator& comm) {
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
        for (auto dtype : {at::kFloat, at::kDouble, at::kLong}) {
          auto t = rank_tensor(comm.rank(), 40, dtype).reshape({4, 10});
          comm.allreduce(t, op);
          if (!at::equal(t, expected_reduction(n, 40, op, dtype).reshape({4, 10}))) {
            std::lock_guard<std::mutex> lock(mutex);
            mismatches.push_back(std::string(comm::allreduce_name(op)) + " " +
                                 comm::dtype_name(dtype) + " on rank " +
                                 std::to_string(comm.rank()) + " of " + std::to_string(n));
          }
        }
      }
      auto sum = rank_tensor(comm.rank(), 7, at::kFloat);
      comm.allreduce_sum(sum);
      if (!at::equal(sum, expected_reduction(n, 7, ReduceOp::kSum, at::kFloat))) {
        std::lock_guard<std::mutex> lock(mutex);
        mismatches.push_back("allreduce_sum on rank " + std::to_string(comm.rank()));
      }
    });
    EXPECT_TRUE(mismatches.empty()) << ::testing::PrintToString(mismatches);
  }
}

TEST(ThreadCommunicator, Float64SumIsBitEqualToTheRankOrderSum) {
  // Magnitudes far apart: a different summation order gives a different double.
  auto value = [](int rank, std::int64_t i) {
    return (rank % 2 == 0 ? 1e16 : 1.0) * std::pow(-1.0, rank + i) + 0.1 * (i + 1) / (rank + 3);
  };
  const int n = 5;
  std::vector<at::Tensor> results(n);
  run_ranks(n, [&](Communicator& comm) {
    auto t = at::empty({64}, at::kDouble);
    for (std::int64_t i = 0; i < 64; ++i) t[i] = value(comm.rank(), i);
    comm.allreduce(t, ReduceOp::kSum);
    results[static_cast<size_t>(comm.rank())] = t;
  });
  for (std::int64_t i = 0; i < 64; ++i) {
    double expected = value(0, i);
    for (int r = 1; r < n; ++r) expected += value(r, i);
    for (int r = 0; r < n; ++r) {
      const double got = results[static_cast<size_t>(r)][i].item<double>();
      EXPECT_EQ(std::memcmp(&got, &expected, sizeof(double)), 0)
          << "element " << i << " on rank " << r << ": " << got << " vs " << expected;
    }
  }
}

TEST(ThreadCommunicator, BroadcastAndByteCollectives) {
  const int n = 4;
  std::vector<std::vector<std::string>> gathered(n), allgathered(n);
  std::vector<std::string> broadcast_text(n);
  std::vector<bool> tensors_ok(n, true);
  run_ranks(n, [&](Communicator& comm) {
    const auto r = static_cast<size_t>(comm.rank());
    for (int root = 0; root < n; ++root) {
      const auto expected = at::arange(10, at::kDouble) + 100.0 * root;
      auto t = comm.rank() == root ? expected.clone() : at::full({10}, -1.0, at::kDouble);
      comm.broadcast(t, root);
      if (!at::equal(t, expected)) tensors_ok[r] = false;
    }
    const std::string mine = std::string(r, 'a' + static_cast<char>(r)) + std::string(1, '\0');
    gathered[r] = comm.gather_bytes(mine, 2);
    allgathered[r] = comm.allgather_bytes(mine);
    broadcast_text[r] = comm.rank() == 3 ? "from three" : "mine";
    comm.broadcast_bytes(broadcast_text[r], 3);
    comm.barrier();
  });
  std::vector<std::string> all;
  for (size_t r = 0; r < n; ++r) {
    all.push_back(std::string(r, 'a' + static_cast<char>(r)) + std::string(1, '\0'));
  }
  for (size_t r = 0; r < n; ++r) {
    EXPECT_TRUE(tensors_ok[r]) << "rank " << r;
    EXPECT_EQ(gathered[r], r == 2 ? all : std::vector<std::string>{}) << "rank " << r;
    EXPECT_EQ(allgathered[r], all) << "rank " << r;
    EXPECT_EQ(broadcast_text[r], "from three") << "rank " << r;
  }
}

TEST(ThreadCommunicator, SplitIntoGroupsAndReduceInside) {
  const int n = 5;
  std::vector<std::string> seen(n);
  std::vector<double> sums(n);
  std::vector<std::vector<std::string>> members(n);
  run_ranks(n, [&](Communicator& comm) {
    const int rank = comm.rank();
    auto group = comm.split(rank % 2, -rank);  // descending world rank inside each color
    seen[static_cast<size_t>(rank)] =
        std::to_string(group->rank()) + "/" + std::to_string(group->size());
    auto t = at::full({3}, static_cast<double>(rank + 1), at::kDouble);
    group->allreduce(t, ReduceOp::kSum);
    sums[static_cast<size_t>(rank)] = t[2].item<double>();
    members[static_cast<size_t>(rank)] = group->allgather_bytes(std::to_string(rank));
    auto alone = group->split(group->rank(), 0);
    alone->barrier();
    comm.barrier();
  });
  // Color 0: world ranks 4, 2, 0 (sum of rank+1 = 9); color 1: world ranks 3, 1 (sum 6).
  EXPECT_EQ(seen, (std::vector<std::string>{"2/3", "1/2", "1/3", "0/2", "0/3"}));
  EXPECT_EQ(sums, (std::vector<double>{9, 6, 9, 6, 9}));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(members[static_cast<size_t>(r)], r % 2 == 0
                                                   ? (std::vector<std::string>{"4", "2", "0"})
                                                   : (std::vector<std::string>{"3", "1"}))
        << "rank " << r;
  }
}

TEST(ThreadCommunicator, ArgumentErrorsAreTheSharedChecks) {
  run_ranks(2, [&](Communicator& comm) {
    auto half = at::ones({2}, at::kHalf);
    EXPECT_CSKV_ERROR(comm.allreduce(half, ReduceOp::kMax),
                      "backend 'thread' does not support allreduce_max of dtype float16 "
                      "(expected float32, float64 or int64)");
    auto ints = at::ones({2}, at::kLong);
    EXPECT_CSKV_ERROR(comm.allreduce_sum(ints),
                      "backend 'thread' does not support allreduce_sum of dtype int64 (expected "
                      "float32 or float64)");
    EXPECT_CSKV_ERROR(comm.gather_bytes("x", 2),
                      "gather_bytes: root 2 is out of range for a communicator of size 2 "
                      "(expected 0..1)");
    // Still usable: argument errors happen before any rank takes part.
    comm.allreduce(ints, ReduceOp::kSum);
    EXPECT_EQ(ints[0].item<std::int64_t>(), 2);
  });
}

TEST(ThreadCommunicator, InjectedFailureIsReportedAndPeersNameTheOperation) {
  const int n = 4;
  std::vector<std::string> errors(n);
  auto body = [&](Communicator& comm) {
    try {
      for (int i = 0; i < 3; ++i) {
        auto t = at::ones({2}, at::kFloat);
        comm.allreduce_sum(t);
      }
    } catch (const Error& e) {
      errors[static_cast<size_t>(comm.rank())] = e.message();
      throw;
    }
  };
  const auto start = std::chrono::steady_clock::now();
  try {
    run_ranks(n, body, FaultPlan().fail(2, 2, "injected: link down on rank 2"));
    FAIL() << "run_ranks returned although rank 2 failed";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kComm);
    EXPECT_EQ(e.message(), "injected: link down on rank 2");
  }
  EXPECT_LT(seconds_since(start), 2.0);  // peers do not wait for the 5 s timeout
  for (int r : {0, 1, 3}) {
    EXPECT_EQ(errors[static_cast<size_t>(r)],
              "allreduce_sum failed on rank " + std::to_string(r) +
                  " of 4: rank 2 will not join it (it failed: injected: link down on rank 2)");
  }
  EXPECT_EQ(errors[2], "injected: link down on rank 2");
}

TEST(ThreadCommunicator, HungRankMakesPeersTimeOutNamingTheOperation) {
  const int n = 3;
  std::vector<std::string> errors(n);
  std::vector<double> waited(n);
  auto body = [&](Communicator& comm) {
    comm.barrier();
    const auto start = std::chrono::steady_clock::now();
    try {
      std::string text = "x";
      comm.broadcast_bytes(text, 0);
    } catch (const Error& e) {
      waited[static_cast<size_t>(comm.rank())] = seconds_since(start);
      errors[static_cast<size_t>(comm.rank())] = e.message();
      // Like the MPI backend, the communicator is unusable afterwards.
      if (comm.rank() != 1) {
        EXPECT_CSKV_ERROR(comm.barrier(), "barrier refused on rank " + std::to_string(comm.rank()) +
                                              " of 3: the communicator is unusable after an "
                                              "earlier failure: " +
                                              e.message());
      }
      throw;
    }
  };
  EXPECT_CSKV_ERROR(run_ranks(n, body, FaultPlan().hang(1, 2), kShortTimeoutS),
                    "broadcast_bytes timed out after 0.3 s on rank 0 of 3 (a peer may have died)");
  for (int r : {0, 2}) {
    EXPECT_EQ(errors[static_cast<size_t>(r)], "broadcast_bytes timed out after 0.3 s on rank " +
                                                  std::to_string(r) +
                                                  " of 3 (a peer may have died)");
    EXPECT_GE(waited[static_cast<size_t>(r)], 0.29);
    EXPECT_LT(waited[static_cast<size_t>(r)], 1.5);
  }
  EXPECT_EQ(errors[1],
            "broadcast_bytes on rank 1 of 3: hung by the fault plan (collective call 2), released "
            "once the other ranks ended");
}

TEST(ThreadCommunicator, TimeoutInASplitGroupNamesTheWorldRank) {
  EXPECT_CSKV_ERROR(run_ranks(
                        4,
                        [](Communicator& comm) {
                          auto group = comm.split(comm.rank() / 2, comm.rank());
                          auto t = at::ones({1}, at::kDouble);
                          group->allreduce(t, ReduceOp::kMax);
                        },
                        FaultPlan().hang(0, 2), kShortTimeoutS),
                    "allreduce_max timed out after 0.3 s on rank 1 of 2 (world rank 1) (a peer "
                    "may have died)");
}

TEST(ThreadCommunicator, AbortThrowsInItsThreadAndPeersFailAtOnce) {
  std::vector<std::string> errors(3);
  const auto start = std::chrono::steady_clock::now();
  try {
    run_ranks(3, [&](Communicator& comm) {
      if (comm.rank() == 1) comm.abort("checkpoint is corrupt");
      try {
        comm.barrier();
      } catch (const Error& e) {
        errors[static_cast<size_t>(comm.rank())] = e.message();
        throw;
      }
    });
    FAIL() << "run_ranks returned although rank 1 aborted";
  } catch (const RankAborted& e) {
    EXPECT_EQ(e.rank(), 1);
    EXPECT_EQ(e.message(), "checkpoint is corrupt");
    EXPECT_STREQ(e.what(), "rank 1 called abort(): checkpoint is corrupt");
  }
  EXPECT_LT(seconds_since(start), 2.0);
  for (int r : {0, 2}) {
    EXPECT_EQ(errors[static_cast<size_t>(r)],
              "barrier failed on rank " + std::to_string(r) +
                  " of 3: rank 1 will not join it (it called abort(): checkpoint is corrupt)");
  }
}

TEST(ThreadCommunicator, MismatchedCollectivesAreAnError) {
  EXPECT_CSKV_ERROR(run_ranks(2,
                              [](Communicator& comm) {
                                if (comm.rank() == 0) {
                                  comm.barrier();
                                } else {
                                  comm.allgather_bytes("x");
                                }
                              }),
                    "barrier on rank 0 of 2 met allgather_bytes on rank 1: every rank must call "
                    "the same collectives in the same order");
}

TEST(ThreadCommunicator, ARankThatReturnedEarlyFailsItsPeersAtOnce) {
  EXPECT_CSKV_ERROR(run_ranks(2,
                              [](Communicator& comm) {
                                if (comm.rank() == 1) return;
                                comm.barrier();
                              }),
                    "barrier failed on rank 0 of 2: rank 1 will not join it (its body returned)");
}

}  // namespace
}  // namespace cskv::test
