// check_json_bounds: nesting, string length and size are refused with the exact message, exactly
// at the bound, before any parser runs.
#include "common/json_bounds.h"

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

TEST(JsonBounds, NestingDeeperThanTheBoundIsRefusedAtItsByte) {
  const JsonBounds b{1000, 100, 3};
  EXPECT_NO_THROW(check_json_bounds("[[[1]]]", "f.json", b));
  EXPECT_NO_THROW(check_json_bounds("{\"a\":[{}]} [[[]]]", "f.json", b));  // depth comes back
  EXPECT_CSKV_ERROR(check_json_bounds("[[{\"a\":[1]}]]", "f.json", b),
                    "f.json: JSON nested deeper than 3 levels (at byte 7)");
  // Brackets inside strings, escaped quotes included, are text.
  EXPECT_NO_THROW(check_json_bounds("[\"[[[[\\\"[[[[\"]", "f.json", b));
  EXPECT_CSKV_ERROR(check_json_bounds(std::string(1000000, '['), "deep.json", {2000000, 10, 64}),
                    "deep.json: JSON nested deeper than 64 levels (at byte 64)");
}

TEST(JsonBounds, StringLongerThanTheBoundIsRefusedAtItsStart) {
  const JsonBounds b{1000, 4, 8};
  EXPECT_NO_THROW(check_json_bounds("{\"abcd\": \"\\\"x\"}", "f.json", b));
  EXPECT_CSKV_ERROR(check_json_bounds("{\"k\": \"abcde\"}", "f.json", b),
                    "f.json: a JSON string longer than 4 bytes (at byte 6)");
  EXPECT_CSKV_ERROR(check_json_bounds("{\"abcde\": 1}", "f.json", b),
                    "f.json: a JSON string longer than 4 bytes (at byte 1)");
}

TEST(JsonBounds, TextLargerThanTheBoundIsRefused) {
  EXPECT_NO_THROW(check_json_bounds(std::string(10, ' '), "f.json", {10, 4, 8}));
  EXPECT_CSKV_ERROR(check_json_bounds(std::string(11, ' '), "f.json", {10, 4, 8}),
                    "f.json: 11 bytes of JSON; at most 10 are read");
}

}  // namespace
}  // namespace cskv
