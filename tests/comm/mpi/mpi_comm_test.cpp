// Multi-rank tests of the MPI Communicator, run as `mpirun -np N cskv_mpi_comm_tests`: every
// result is checked against values computed from the rank (nccl-tests style), on every rank.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

#include "comm/collectives.h"
#include "comm/factory.h"
#include "comm/mpi_communicator.h"
#include "common/error.h"
#include "tests/support/test_support.h"

namespace cskv::comm {
namespace {

MpiCommunicator* g_world = nullptr;

// Replaces gtest's printer on ranks other than 0: only failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

MpiCommunicator& world() { return *g_world; }

int env_int(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::atoi(value) : -1;
}

// x[i] = (rank + 1) * (i % 97) + rank: every partial sum is an exact integer in float32.
at::Tensor rank_values(int rank, std::int64_t n, at::ScalarType dtype) {
  auto i = at::arange(n, at::kLong).remainder(97).to(at::kDouble);
  return ((rank + 1) * i + rank).to(dtype);
}

// The sum over ranks 0..size-1 of rank_values(rank, n).
at::Tensor expected_sum(int size, std::int64_t n, at::ScalarType dtype) {
  auto i = at::arange(n, at::kLong).remainder(97).to(at::kDouble);
  const double s1 = size * (size + 1) / 2.0, s0 = size * (size - 1) / 2.0;
  return (s1 * i + s0).to(dtype);
}

std::string rank_blob(int rank) {
  // Lengths differ per rank (rank 1's blob is empty) and blobs hold NUL bytes.
  if (rank == 1) return "";
  return std::string(static_cast<size_t>(3 * rank + 2), static_cast<char>('a' + rank)) +
         std::string(1, '\0') + std::to_string(rank);
}

TEST(MpiComm, WorldMatchesTheLauncher) {
  EXPECT_EQ(world().backend_name(), "mpi");
  EXPECT_EQ(world().size(), env_int("OMPI_COMM_WORLD_SIZE"));
  EXPECT_EQ(world().rank(), env_int("OMPI_COMM_WORLD_RANK"));
  EXPECT_EQ(world().local_rank(), env_int("OMPI_COMM_WORLD_LOCAL_RANK"));
  EXPECT_EQ(world().local_size(), env_int("OMPI_COMM_WORLD_LOCAL_SIZE"));
  EXPECT_EQ(error_rank(), world().rank());
  world().barrier();
  world().barrier();
}

TEST(MpiComm, BroadcastFromEveryRoot) {
  for (int root = 0; root < world().size(); ++root) {
    for (auto dtype : {at::kFloat, at::kDouble, at::kLong, at::kHalf}) {
      const std::int64_t n = 1000 + root;
      auto expected = (at::arange(n, at::kDouble) + 1000.0 * root).to(dtype);
      auto t = world().rank() == root ? expected.clone() : at::full({n}, -1.0, dtype);
      world().broadcast(t, root);
      EXPECT_TRUE(at::equal(t, expected)) << "root " << root << " dtype " << dtype_name(dtype);
    }
  }
}

TEST(MpiComm, AllreduceSumFp32AndFp64) {
  const int size = world().size();
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (std::int64_t n :
         {std::int64_t{0}, std::int64_t{1}, std::int64_t{4097}, std::int64_t{(1 << 20) + 3}}) {
      auto t = rank_values(world().rank(), n, dtype);
      world().allreduce_sum(t);
      EXPECT_TRUE(at::equal(t, expected_sum(size, n, dtype)))
          << "n " << n << " dtype " << dtype_name(dtype);
    }
  }
  auto matrix = rank_values(world().rank(), 12, at::kDouble).reshape({3, 4});
  world().allreduce_sum(matrix);
  EXPECT_TRUE(at::equal(matrix, expected_sum(size, 12, at::kDouble).reshape({3, 4})));
}

// x[i] of a rank for max/min: the sign alternates with rank + i, so no single rank holds them.
double signed_rank_value(int rank, std::int64_t i) {
  const double sign = (rank + i) % 2 == 0 ? 1.0 : -1.0;
  return sign * static_cast<double>((rank + 1) * (i % 13) + rank);
}

at::Tensor expected_extreme(int size, std::int64_t n, ReduceOp op, at::ScalarType dtype) {
  auto i = at::arange(n, at::kLong);
  std::vector<at::Tensor> per_rank;
  for (int r = 0; r < size; ++r) {
    auto sign = at::where((i + r).remainder(2) == 0, 1.0, -1.0);
    per_rank.push_back(sign * ((r + 1) * i.remainder(13) + r).to(at::kDouble));
  }
  auto stacked = at::stack(per_rank);
  return (op == ReduceOp::kMax ? std::get<0>(stacked.max(0)) : std::get<0>(stacked.min(0)))
      .to(dtype);
}

TEST(MpiComm, AllreduceMaxMinAndInt64Sum) {
  const int rank = world().rank(), size = world().size();
  for (auto op : {ReduceOp::kMax, ReduceOp::kMin}) {
    for (auto dtype : {at::kFloat, at::kDouble, at::kLong}) {
      for (std::int64_t n : {std::int64_t{1}, std::int64_t{4097}}) {
        auto i = at::arange(n, at::kLong);
        auto sign = at::where((i + rank).remainder(2) == 0, 1.0, -1.0);
        auto t = (sign * ((rank + 1) * i.remainder(13) + rank).to(at::kDouble)).to(dtype);
        EXPECT_EQ(signed_rank_value(rank, n - 1), t[n - 1].item<double>());
        world().allreduce(t, op);
        EXPECT_TRUE(at::equal(t, expected_extreme(size, n, op, dtype)))
            << allreduce_name(op) << " n " << n << " dtype " << dtype_name(dtype);
      }
    }
  }
  // int64 sums beyond 2^53 stay exact.
  auto big = at::full({3}, (std::int64_t{1} << 60) + rank, at::kLong);
  world().allreduce(big, ReduceOp::kSum);
  const std::int64_t expected = size * (std::int64_t{1} << 60) + size * (size - 1) / 2;
  EXPECT_TRUE(at::equal(big, at::full({3}, expected, at::kLong)));
  auto half = at::ones({2}, at::kHalf);
  EXPECT_CSKV_ERROR(world().allreduce(half, ReduceOp::kMin),
                    "backend 'mpi' does not support allreduce_min of dtype float16 (expected "
                    "float32, float64 or int64)");
}

TEST(MpiComm, ChunkedMaxGivesTheSameValues) {
  CommOptions options;
  options.timeout_s = 60;
  options.max_chunk_elements = 1000;
  auto chunked = MpiCommunicator::create_world(options);
  const std::int64_t n = 4500;  // 5 MPI calls, the last one partial
  auto rank_part = [&](int r) { return at::arange(n, at::kLong) * (r % 2 == 0 ? 1 : -1) + r; };
  auto t = rank_part(chunked->rank());
  chunked->allreduce(t, ReduceOp::kMax);
  auto expected = rank_part(0);
  for (int r = 1; r < chunked->size(); ++r) expected = at::maximum(expected, rank_part(r));
  EXPECT_TRUE(at::equal(t, expected));
}

struct RankReport {
  std::int64_t rank = 0;
  double value = 0;
  std::string note;
};
void to_json(nlohmann::json& j, const RankReport& r) {
  j = {{"rank", r.rank}, {"value", r.value}, {"note", r.note}};
}
void from_json(const nlohmann::json& j, RankReport& r) {
  j.at("rank").get_to(r.rank);
  j.at("value").get_to(r.value);
  j.at("note").get_to(r.note);
}

TEST(MpiComm, TypedCollectivesAgreeOnValuesAndErrors) {
  const int rank = world().rank(), size = world().size();
  int calls = 0;
  const double decided = root_decides<double>(world(), [&] {
    ++calls;
    return 1.0 / 3.0 + rank;
  });
  EXPECT_EQ(decided, 1.0 / 3.0);  // rank 0's value, bit-exact
  EXPECT_EQ(calls, rank == 0 ? 1 : 0);
  try {
    root_decides<std::int64_t>(world(), [&]() -> std::int64_t {
      CSKV_FAIL_INPUT("plan: layer " << rank << " has no activations");
    });
    FAIL() << "root_decides returned although rank 0 threw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_EQ(e.message(), "plan: layer 0 has no activations");
    EXPECT_NE(e.where().find("on rank 0"), std::string::npos) << e.where();
    EXPECT_TRUE(e.collective());
  }
  EXPECT_TRUE(all_agree(world(), true));
  EXPECT_FALSE(all_agree(world(), rank != size - 1));
  EXPECT_TRUE(any_rank(world(), rank == size - 1));
  EXPECT_FALSE(any_rank(world(), false));
  EXPECT_EQ(max_over_ranks(world(), std::int64_t{10} * rank - 3),
            std::int64_t{10} * (size - 1) - 3);
  EXPECT_EQ(min_over_ranks(world(), 0.5 - rank), 0.5 - (size - 1));
  EXPECT_EQ(sum_over_ranks(world(), std::int64_t{rank}), size * (size - 1) / 2);

  const auto reports =
      allgather_values(world(), RankReport{rank, 0.1 * rank, std::to_string(rank)});
  ASSERT_EQ(reports.size(), static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    EXPECT_EQ(reports[static_cast<size_t>(r)].rank, r);
    EXPECT_EQ(reports[static_cast<size_t>(r)].value, 0.1 * r);
    EXPECT_EQ(reports[static_cast<size_t>(r)].note, std::to_string(r));
  }
  const auto gathered = gather_values(world(), std::int64_t{rank * rank}, size - 1);
  EXPECT_EQ(gathered.size(), rank == size - 1 ? static_cast<size_t>(size) : 0u);
  for (size_t r = 0; r < gathered.size(); ++r) {
    EXPECT_EQ(gathered[r], static_cast<std::int64_t>(r * r));
  }

  std::optional<Error> mine;
  if (rank >= 1) mine = Error(ErrorKind::kInput, "input of rank " + std::to_string(rank));
  EXPECT_CSKV_ERROR(throw_if_any_failed(world(), mine), "input of rank 1");
  throw_if_any_failed(world(), std::nullopt);
}

TEST(MpiComm, ChunkedCollectivesGiveTheSameValues) {
  CommOptions options;
  options.timeout_s = 60;
  options.max_chunk_elements = 65536;  // 1M elements -> 17 MPI calls, the last one partial
  auto chunked = MpiCommunicator::create_world(options);
  const std::int64_t n = (1 << 20) + 5;
  auto t = rank_values(chunked->rank(), n, at::kFloat);
  chunked->allreduce_sum(t);
  EXPECT_TRUE(at::equal(t, expected_sum(chunked->size(), n, at::kFloat)));

  const auto expected = at::arange(n, at::kDouble) * 0.5;
  auto b = chunked->rank() == 0 ? expected.clone() : at::zeros({n}, at::kDouble);
  chunked->broadcast(b, 0);
  EXPECT_TRUE(at::equal(b, expected));

  CommOptions tiny = options;
  tiny.max_chunk_elements = 7;  // bytes for broadcast_bytes
  auto tiny_chunks = MpiCommunicator::create_world(tiny);
  std::string text = tiny_chunks->rank() == 0 ? std::string(100, 'q') + "end" : "other";
  tiny_chunks->broadcast_bytes(text, 0);
  EXPECT_EQ(text, std::string(100, 'q') + "end");
}

TEST(MpiComm, GatherAndAllgatherBytesOfDifferentLengths) {
  const int size = world().size();
  std::vector<std::string> all;
  for (int r = 0; r < size; ++r) all.push_back(rank_blob(r));
  for (int root = 0; root < size; ++root) {
    const auto gathered = world().gather_bytes(rank_blob(world().rank()), root);
    if (world().rank() == root) {
      EXPECT_EQ(gathered, all) << "root " << root;
    } else {
      EXPECT_TRUE(gathered.empty()) << "root " << root;
    }
  }
  EXPECT_EQ(world().allgather_bytes(rank_blob(world().rank())), all);
}

TEST(MpiComm, BroadcastBytesReplacesEveryOtherString) {
  for (int root = 0; root < world().size(); ++root) {
    const std::string expected = "{\"root\": " + std::to_string(root) + "}" + std::string(1, '\0');
    std::string mine = world().rank() == root ? expected : std::string(50, 'x');
    world().broadcast_bytes(mine, root);
    EXPECT_EQ(mine, expected);
  }
  std::string empty = world().rank() == 0 ? "" : "not empty";
  world().broadcast_bytes(empty, 0);
  EXPECT_EQ(empty, "");
}

TEST(MpiComm, SplitIntoGroupsAndReduceInside) {
  const int rank = world().rank(), size = world().size();
  const int color = rank % 2;
  // key = -rank: the group is ordered by descending world rank.
  auto group = world().split(color, -rank);
  std::vector<int> members;
  for (int r = size - 1; r >= 0; --r) {
    if (r % 2 == color) members.push_back(r);
  }
  ASSERT_EQ(group->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[static_cast<size_t>(group->rank())], rank);
  EXPECT_EQ(group->backend_name(), "mpi");
  EXPECT_EQ(group->local_size(), group->size());  // one node
  EXPECT_EQ(group->local_rank(), group->rank());

  auto t = at::full({5}, static_cast<double>(rank + 1), at::kDouble);
  group->allreduce_sum(t);
  double expected = 0;
  for (int m : members) expected += m + 1;
  EXPECT_TRUE(at::equal(t, at::full({5}, expected, at::kDouble)));

  const auto blobs = group->allgather_bytes(std::to_string(rank));
  ASSERT_EQ(blobs.size(), members.size());
  for (size_t i = 0; i < members.size(); ++i) EXPECT_EQ(blobs[i], std::to_string(members[i]));

  // A group of groups: everyone alone.
  auto single = group->split(group->rank(), 0);
  EXPECT_EQ(single->size(), 1);
  auto one = at::full({3}, 2.5, at::kFloat);
  single->allreduce_sum(one);
  EXPECT_TRUE(at::equal(one, at::full({3}, 2.5, at::kFloat)));
  world().barrier();
}

TEST(MpiComm, ArgumentErrorsAreTheSameAsLocal) {
  auto ints = at::ones({4}, at::kInt);
  EXPECT_CSKV_ERROR(world().allreduce_sum(ints),
                    "backend 'mpi' does not support allreduce_sum of dtype int32 (expected "
                    "float32 or float64)");
  auto t = at::zeros({2}, at::kFloat);
  EXPECT_CSKV_ERROR(world().broadcast(t, world().size()),
                    "broadcast: root " + std::to_string(world().size()) +
                        " is out of range for a communicator of size " +
                        std::to_string(world().size()) + " (expected 0.." +
                        std::to_string(world().size() - 1) + ")");
  // The communicator is still usable after argument errors.
  auto ok = at::ones({2}, at::kFloat);
  world().allreduce_sum(ok);
  EXPECT_TRUE(at::equal(ok, at::full({2}, static_cast<float>(world().size()), at::kFloat)));
}

TEST(MpiComm, MpiCheckNamesCallRankAndMpiError) {
  int value = 0;
  try {
    MPI_CHECK(MPI_Bcast(&value, 1, MPI_INT, world().size() + 5, world().handle()));
    FAIL() << "MPI_Bcast with an invalid root did not fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kComm);
    EXPECT_EQ(e.message(), "MPI_Bcast failed on rank " + std::to_string(world().rank()) +
                               ": MPI_ERR_ROOT: invalid root");
    EXPECT_NE(e.where().find("mpi/mpi_comm_test.cpp:"), std::string::npos) << e.where();
    EXPECT_NE(e.where().find("MPI_Bcast(&value"), std::string::npos) << e.where();
  }
  world().barrier();
}

// Run only by the mpi_comm_{hung,dead}_peer CTests, with CSKV_TEST_DEAD_PEER=stop|exit: the last
// rank freezes (SIGSTOP: a hung node, which mpirun cannot see) or exits (which mpirun sees and
// answers by killing the job) before an allreduce. Survivors of a freeze must get the timeout
// error naming their rank within the 3 s timeout, not hang.
TEST(DeadPeer, SurvivorsTimeOutWithTheirRankInTheMessage) {
  const char* mode = std::getenv("CSKV_TEST_DEAD_PEER");
  if (mode == nullptr) GTEST_SKIP() << "run by the mpi_comm_hung_peer and mpi_comm_dead_peer tests";
  CommOptions options;
  options.timeout_s = 3;
  auto comm = MpiCommunicator::create_world(options);
  const int rank = comm->rank(), size = comm->size();
  const bool victim = rank == size - 1;
  // The survivors' own group, to line up their reports after the failure.
  auto survivors = comm->split(victim ? 1 : 0, rank);
  comm->barrier();
  if (victim) {
    std::fflush(nullptr);
    if (std::string(mode) == "stop") std::raise(SIGSTOP);
    std::_Exit(3);
  }
  auto t = at::ones({1000}, at::kFloat);
  const auto start = std::chrono::steady_clock::now();
  const std::string expected = "allreduce_sum timed out after 3 s on rank " + std::to_string(rank) +
                               " of " + std::to_string(size) + " (a peer may have died)";
  try {
    comm->allreduce_sum(t);
    FAIL() << "allreduce_sum returned although rank " << size - 1 << " is gone";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kComm);
    EXPECT_EQ(e.message(), expected);
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 2.9);
  EXPECT_LT(waited, 6.0);
  EXPECT_CSKV_ERROR(comm->barrier(), "barrier refused on rank " + std::to_string(rank) + " of " +
                                         std::to_string(size) +
                                         ": the communicator is unusable after an earlier "
                                         "failure: " +
                                         expected);
  if (!::testing::Test::HasFailure()) {
    std::printf("dead-peer check passed on rank %d of %d after %.1f s\n", rank, size, waited);
  }
  std::fflush(nullptr);
  // No survivor exits (and so makes mpirun end the job) before all have reported.
  survivors->barrier();
}

}  // namespace
}  // namespace cskv::comm

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  std::unique_ptr<cskv::comm::Communicator> world;
  try {
    cskv::comm::CommOptions options;
    options.backend = "mpi";
    options.timeout_s = 60;
    world = cskv::comm::make_communicator(options);
  } catch (const cskv::Error& e) {
    std::fprintf(stderr, "cskv_mpi_comm_tests: %s\n", e.message().c_str());
    return 1;
  }
  cskv::comm::g_world = dynamic_cast<cskv::comm::MpiCommunicator*>(world.get());
  if (world->rank() != 0) {
    // One report (rank 0's) on stdout; failures on other ranks still print and fail the job.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new cskv::comm::RankFailurePrinter(world->rank()));
  }
  const int result = RUN_ALL_TESTS();
  if (std::getenv("CSKV_TEST_DEAD_PEER") != nullptr) return result;  // a peer is gone
  // Every rank exits non-zero when any rank failed a test.
  auto failed = at::full({1}, result != 0 ? 1.0 : 0.0, at::kDouble);
  world->allreduce_sum(failed);
  if (failed.item<double>() > 0 && result == 0) {
    std::fprintf(stderr, "rank %d: tests failed on %g other rank(s)\n", world->rank(),
                 failed.item<double>());
  }
  return failed.item<double>() > 0 ? 1 : 0;
}
