// comm/collectives.h on 1-5 in-process ranks (tests/support/thread_communicator.h) and on the
// local backend: verdicts of rank 0, flags, extrema, typed gathers and the lowest rank's error.
#include "comm/collectives.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/local_communicator.h"
#include "common/error.h"
#include "tests/support/test_support.h"
#include "tests/support/thread_communicator.h"

namespace cskv::comm {
namespace {

using test::run_ranks;

// A job summary as stage drivers exchange them.
struct JobSummary {
  std::string name;
  std::int64_t steps = 0;
  double loss = 0;
  std::optional<std::int64_t> resumed_from;
  bool operator==(const JobSummary& o) const {
    return name == o.name && steps == o.steps && std::memcmp(&loss, &o.loss, sizeof(double)) == 0 &&
           resumed_from == o.resumed_from;
  }
};

void to_json(nlohmann::json& j, const JobSummary& s) {
  j = {{"name", s.name}, {"steps", s.steps}, {"loss", s.loss}, {"resumed_from", s.resumed_from}};
}

void from_json(const nlohmann::json& j, JobSummary& s) {
  j.at("name").get_to(s.name);
  j.at("steps").get_to(s.steps);
  j.at("loss").get_to(s.loss);
  j.at("resumed_from").get_to(s.resumed_from);
}

JobSummary summary_of(int rank) {
  JobSummary s;
  s.name = "layer" + std::to_string(rank) + ".K";
  s.steps = 1000 + rank;
  s.loss = 1.0 / (rank + 3) - 1e-300 * rank;
  if (rank % 2 == 1) s.resumed_from = 500 * rank;
  return s;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof(double)) == 0; }

TEST(Collectives, RootDecidesReturnsRankZerosValueAndOnlyRankZeroDecides) {
  for (int n = 1; n <= 4; ++n) {
    std::vector<std::int64_t> got(static_cast<size_t>(n), -1);
    std::vector<int> calls(static_cast<size_t>(n), 0);
    run_ranks(n, [&](Communicator& comm) {
      const auto r = static_cast<size_t>(comm.rank());
      got[r] = root_decides<std::int64_t>(comm, [&]() -> std::int64_t {
        ++calls[r];
        return 4200 + comm.rank();
      });
    });
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(got[static_cast<size_t>(r)], 4200) << "rank " << r << " of " << n;
      EXPECT_EQ(calls[static_cast<size_t>(r)], r == 0 ? 1 : 0) << "rank " << r << " of " << n;
    }
  }
}

TEST(Collectives, RootDecidesCarriesEveryValueTypeExactly) {
  const std::vector<double> doubles = {0.1,
                                       1.0 / 3.0,
                                       -0.0,
                                       5e-324,
                                       std::numeric_limits<double>::max(),
                                       std::numeric_limits<double>::infinity(),
                                       -std::numeric_limits<double>::infinity(),
                                       std::numeric_limits<double>::quiet_NaN(),
                                       3.0};
  const std::string with_nul = std::string("a\0b", 3) + "\xff";
  std::mutex mutex;
  std::vector<std::string> failures;
  run_ranks(3, [&](Communicator& comm) {
    const bool root = comm.rank() == 0;
    auto fail = [&](const std::string& what) {
      std::lock_guard<std::mutex> lock(mutex);
      failures.push_back(what + " on rank " + std::to_string(comm.rank()));
    };
    if (root_decides<bool>(comm, [&] { return root; }) != true) fail("bool");
    const auto big = root_decides<std::int64_t>(
        comm, [] { return std::numeric_limits<std::int64_t>::min() + 1; });
    if (big != std::numeric_limits<std::int64_t>::min() + 1) fail("int64");
    for (double d : doubles) {
      const double got = root_decides<double>(comm, [&] { return root ? d : 7.0; });
      if (!same_bits(got, d) && !(std::isnan(got) && std::isnan(d))) fail("double");
    }
    const auto all = root_decides<std::vector<double>>(comm, [&] { return doubles; });
    if (all.size() != doubles.size() || !same_bits(all[1], doubles[1]) ||
        !same_bits(all[2], -0.0)) {
      fail("vector<double>");
    }
    if (root_decides<std::string>(comm, [&] { return with_nul; }) != with_nul) fail("string");
    if (root_decides<std::optional<std::int64_t>>(comm, [] { return std::nullopt; })) {
      fail("empty optional");
    }
    if (root_decides<std::optional<std::int64_t>>(comm, [] { return 12; }) != 12) fail("optional");
    const auto j = root_decides<nlohmann::json>(comm, [] {
      return nlohmann::json{{"plan", {1, 2, 3}}, {"ok", true}};
    });
    if (j != (nlohmann::json{{"plan", {1, 2, 3}}, {"ok", true}})) fail("json");
    const auto s = root_decides<JobSummary>(comm, [&] { return summary_of(comm.rank() + 1); });
    if (!(s == summary_of(1))) fail("struct");
  });
  EXPECT_TRUE(failures.empty()) << ::testing::PrintToString(failures);
}

TEST(Collectives, RootDecidesThrowsRankZerosErrorOnEveryRank) {
  const int n = 4;
  std::vector<std::string> messages(n), wheres(n);
  std::vector<int> kinds(n, -1), collective(n, -1), calls(n, 0);
  std::string original_where;
  run_ranks(n, [&](Communicator& comm) {
    const auto r = static_cast<size_t>(comm.rank());
    try {
      root_decides<std::int64_t>(comm, [&]() -> std::int64_t {
        ++calls[r];
        try {
          CSKV_CHECK_INPUT(false, "run.json: expected steps >= 1, found 0");
        } catch (const Error& e) {
          original_where = e.where();
          throw;
        }
        return 1;
      });
    } catch (const Error& e) {
      messages[r] = e.message();
      wheres[r] = e.where();
      kinds[r] = static_cast<int>(e.kind());
      collective[r] = e.collective();
    }
    // The communicator is still usable: the verdict was delivered, not a failure.
    comm.barrier();
  });
  ASSERT_FALSE(original_where.empty());
  for (size_t r = 0; r < n; ++r) {
    EXPECT_EQ(messages[r], "run.json: expected steps >= 1, found 0") << "rank " << r;
    EXPECT_EQ(wheres[r], original_where) << "rank " << r;
    EXPECT_EQ(kinds[r], static_cast<int>(ErrorKind::kInput)) << "rank " << r;
    EXPECT_EQ(collective[r], 1) << "rank " << r;
    EXPECT_EQ(calls[r], r == 0 ? 1 : 0) << "rank " << r;
  }
}

TEST(Collectives, RootDecidesVoidChecksOnRankZero) {
  std::atomic<int> calls{0};
  run_ranks(3, [&](Communicator& comm) { root_decides(comm, [&] { ++calls; }); });
  EXPECT_EQ(calls.load(), 1);
  // Not a cskv::Error: a runtime error with the same text on every rank.
  std::vector<std::string> messages(3);
  run_ranks(3, [&](Communicator& comm) {
    try {
      root_decides(comm, [] { throw std::out_of_range("map::at"); });
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kRuntime) messages[static_cast<size_t>(comm.rank())] = e.message();
    }
  });
  EXPECT_EQ(messages, (std::vector<std::string>(3, "map::at")));
}

TEST(Collectives, AllAgreeAndAnyRankTruthTables) {
  for (int n = 1; n <= 4; ++n) {
    for (int mask = 0; mask < (1 << n); ++mask) {
      std::vector<int> agree(static_cast<size_t>(n), -1), any(static_cast<size_t>(n), -1);
      run_ranks(n, [&](Communicator& comm) {
        const bool mine = (mask >> comm.rank()) & 1;
        agree[static_cast<size_t>(comm.rank())] = all_agree(comm, mine);
        any[static_cast<size_t>(comm.rank())] = any_rank(comm, mine);
      });
      const int all_set = mask == (1 << n) - 1, some_set = mask != 0;
      EXPECT_EQ(agree, std::vector<int>(static_cast<size_t>(n), all_set)) << n << " " << mask;
      EXPECT_EQ(any, std::vector<int>(static_cast<size_t>(n), some_set)) << n << " " << mask;
    }
  }
}

TEST(Collectives, ExtremaAndSumsAreExact) {
  const int n = 5;
  // Beyond 2^53: a float64 reduction would round these.
  auto big = [](int rank) { return (std::int64_t{1} << 60) + 3 * rank - 7; };
  auto real = [](int rank) { return (rank % 2 ? -1.0 : 1.0) * (0.1 + rank) / 3.0; };
  std::vector<std::int64_t> imax(n), imin(n), isum(n);
  std::vector<double> dmax(n), dmin(n);
  run_ranks(n, [&](Communicator& comm) {
    const auto r = static_cast<size_t>(comm.rank());
    imax[r] = max_over_ranks(comm, big(comm.rank()));
    imin[r] = min_over_ranks(comm, -big(comm.rank()));
    isum[r] = sum_over_ranks(comm, big(comm.rank()) / 8);
    dmax[r] = max_over_ranks(comm, real(comm.rank()));
    dmin[r] = min_over_ranks(comm, real(comm.rank()));
  });
  std::int64_t sum = 0;
  for (int r = 0; r < n; ++r) sum += big(r) / 8;
  for (size_t r = 0; r < n; ++r) {
    EXPECT_EQ(imax[r], big(n - 1));
    EXPECT_EQ(imin[r], -big(n - 1));
    EXPECT_EQ(isum[r], sum);
    EXPECT_TRUE(same_bits(dmax[r], real(4))) << dmax[r];
    EXPECT_TRUE(same_bits(dmin[r], real(3))) << dmin[r];
  }
}

TEST(Collectives, GatherAndAllgatherValuesOfStructs) {
  const int n = 4;
  std::vector<std::vector<JobSummary>> gathered(n), allgathered(n);
  run_ranks(n, [&](Communicator& comm) {
    const auto r = static_cast<size_t>(comm.rank());
    gathered[r] = gather_values(comm, summary_of(comm.rank()), 1);
    allgathered[r] = allgather_values(comm, summary_of(comm.rank()));
  });
  std::vector<JobSummary> all;
  for (int r = 0; r < n; ++r) all.push_back(summary_of(r));
  for (size_t r = 0; r < n; ++r) {
    EXPECT_EQ(gathered[r].size(), r == 1 ? all.size() : 0u) << "rank " << r;
    if (r == 1) {
      EXPECT_TRUE(gathered[r] == all);
    }
    EXPECT_TRUE(allgathered[r] == all) << "rank " << r;
  }
}

TEST(Collectives, ThrowIfAnyFailedThrowsTheLowestFailingRanksError) {
  const int n = 4;
  std::vector<std::string> messages(n);
  std::vector<int> kinds(n, -1);
  run_ranks(n, [&](Communicator& comm) {
    const auto r = static_cast<size_t>(comm.rank());
    throw_if_any_failed(comm, std::nullopt);  // nobody failed: returns
    std::optional<Error> mine;
    if (comm.rank() == 1) mine = Error(ErrorKind::kUsage, "--layers: 40 is out of range");
    if (comm.rank() == 3) mine = Error(ErrorKind::kInput, "tokens.bin is truncated");
    try {
      throw_if_any_failed(comm, mine);
    } catch (const Error& e) {
      messages[r] = e.message();
      kinds[r] = static_cast<int>(e.kind());
    }
  });
  EXPECT_EQ(messages, (std::vector<std::string>(n, "--layers: 40 is out of range")));
  EXPECT_EQ(kinds, (std::vector<int>(n, static_cast<int>(ErrorKind::kUsage))));
}

TEST(Collectives, WorkOnTheLocalBackend) {
  LocalCommunicator comm;
  EXPECT_EQ(root_decides<std::string>(comm, [] { return "local"; }), "local");
  EXPECT_CSKV_ERROR(root_decides(comm, [] { CSKV_FAIL_INPUT("bad input"); }), "bad input");
  EXPECT_TRUE(all_agree(comm, true));
  EXPECT_FALSE(any_rank(comm, false));
  EXPECT_EQ(max_over_ranks(comm, std::int64_t{-5}), -5);
  EXPECT_EQ(sum_over_ranks(comm, std::int64_t{9}), 9);
  EXPECT_EQ(allgather_values(comm, summary_of(0)).size(), 1u);
  EXPECT_CSKV_ERROR(throw_if_any_failed(comm, Error(ErrorKind::kInput, "mine")), "mine");
}

TEST(Collectives, AllreduceOpsOnTheLocalBackendAreTheIdentity) {
  LocalCommunicator comm;
  auto ints = at::arange(5, at::kLong);
  comm.allreduce(ints, ReduceOp::kMin);
  EXPECT_TRUE(at::equal(ints, at::arange(5, at::kLong)));
  auto half = at::ones({2}, at::kHalf);
  EXPECT_CSKV_ERROR(comm.allreduce(half, ReduceOp::kSum),
                    "backend 'local' does not support allreduce_sum of dtype float16 (expected "
                    "float32, float64 or int64)");
}

}  // namespace
}  // namespace cskv::comm
