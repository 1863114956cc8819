// `cskv comm-check` on the local backend and under mpirun: every collective's values are checked
// by the tool against values computed from the rank; the test asserts the rows and verdicts.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

// Rows "op elements ... check" of the table rank 0 prints.
std::vector<std::pair<std::string, std::string>> rows(const std::string& out) {
  std::vector<std::pair<std::string, std::string>> r;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("broadcast", 0) == 0 || line.rfind("allreduce", 0) == 0 ||
        line.rfind("allgather", 0) == 0) {
      const auto check = line.substr(line.find_last_of(' ') + 1);
      r.emplace_back(line.substr(0, 13), check);
    }
  }
  return r;
}

TEST(CommCheck, LocalBackendVerifiesEveryCollective) {
  const auto r =
      test::run_cskv({"comm-check", "--sizes", "7,1000", "--iters", "2", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("comm-check: backend local, 1 rank(s), 2 iteration(s)"), std::string::npos)
      << r.out;
  const auto got = rows(r.out);
  ASSERT_EQ(got.size(), 7u) << r.out;  // 2 sizes × 3 ops + the byte gather
  for (const auto& [op, check] : got) EXPECT_EQ(check, "ok") << op;
}

TEST(CommCheck, TwoMpiRanksVerifyEveryCollective) {
  test::allow_mpirun_as_root();
  const auto r = test::run_command({CSKV_MPIEXEC, "--oversubscribe", "-np", "2",
                                    CSKV_BINARY_FOR_TESTS, "comm-check", "--sizes", "5,300000",
                                    "--iters", "2", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("comm-check: backend mpi, 2 rank(s), 2 iteration(s)"), std::string::npos)
      << r.out;
  const auto got = rows(r.out);
  ASSERT_EQ(got.size(), 7u) << r.out;
  for (const auto& [op, check] : got) EXPECT_EQ(check, "ok") << op;
}

TEST(CommCheck, BadSizesAreAUsageError) {
  const auto r = test::run_cskv({"comm-check", "--sizes", "10,x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv comm-check: usage error: --sizes: expected comma-separated element counts > 0, "
            "found '10,x'\n");
}

}  // namespace
}  // namespace cskv
