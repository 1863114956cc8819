// Tests of the check macros: message, kind and source location.
#include "common/error.h"

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

TEST(Error, CheckInputCarriesMessageKindAndLocation) {
  try {
    const int found = 3;
    CSKV_CHECK_INPUT(found == 4, "layer 7: expected 4 heads, found " << found);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput);
    EXPECT_EQ(e.message(), "layer 7: expected 4 heads, found 3");
    EXPECT_NE(e.where().find("common/error_test.cpp:"), std::string::npos) << e.where();
    EXPECT_NE(e.where().find("(found == 4)"), std::string::npos) << e.where();
  }
}

TEST(Error, RankAppearsInLocationOnceKnown) {
  set_error_rank(3);
  try {
    CSKV_FAIL("boom");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    EXPECT_NE(e.where().find("on rank 3"), std::string::npos) << e.where();
  }
  set_error_rank(-1);
}

TEST(Error, UsageKindAndHelperReturnsMessage) {
  EXPECT_CSKV_ERROR(CSKV_FAIL_USAGE("missing required option --out"),
                    "missing required option --out");
}

}  // namespace
}  // namespace cskv
