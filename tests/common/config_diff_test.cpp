// Tests of common/config_diff: which keys differ (flattened or top-level, value or text equality)
// and the exact "key: old -> new; ..." text in both value styles.
#include "common/config_diff.h"

#include <gtest/gtest.h>

namespace cskv {
namespace {

using nlohmann::json;

TEST(ConfigDiff, FlattensNestedObjectsAndSortsKeys) {
  const json before = json::parse(R"({"init":"pca","quant":{"k_bits":4,"window":32},"old":true})");
  const json after =
      json::parse(R"({"init":"svd","quant":{"k_bits":2,"window":32},"rotate":"none"})");
  const auto diffs = config_differences(before, after);
  ASSERT_EQ(diffs.size(), 4u);
  EXPECT_EQ(diffs[0].key, "init");
  EXPECT_EQ(diffs[1].key, "old");
  EXPECT_EQ(*diffs[1].before, json(true));
  EXPECT_FALSE(diffs[1].after.has_value());
  EXPECT_EQ(diffs[2].key, "quant.k_bits");
  EXPECT_EQ(*diffs[2].before, json(4));
  EXPECT_EQ(*diffs[2].after, json(2));
  EXPECT_EQ(diffs[3].key, "rotate");
  EXPECT_FALSE(diffs[3].before.has_value());
  EXPECT_EQ(format_config_differences(diffs, ConfigValueText::kPlainStrings),
            "init: pca -> svd; old: true -> (absent); quant.k_bits: 4 -> 2; rotate: (absent) -> "
            "none");
}

TEST(ConfigDiff, TopLevelComparesNestedObjectsWholeAndQuotesStrings) {
  const json before = json::parse(R"({"model":"/m","quant":{"k_bits":4},"world_size":2})");
  const json after = json::parse(R"({"model":"/n","quant":{"k_bits":2},"world_size":2})");
  const auto diffs = config_differences(before, after, ConfigKeys::kTopLevel);
  EXPECT_EQ(format_config_differences(diffs, ConfigValueText::kJson),
            R"(model: "/m" -> "/n"; quant: {"k_bits":4} -> {"k_bits":2})");
}

TEST(ConfigDiff, EqualityByValueOrByText) {
  const json before = json::parse(R"({"a":1,"b":[1,2]})");
  const json after = json::parse(R"({"b":[1,2],"a":1.0})");
  EXPECT_TRUE(config_differences(before, after).empty());
  const auto diffs =
      config_differences(before, after, ConfigKeys::kTopLevel, ConfigEquality::kJsonText);
  EXPECT_EQ(format_config_differences(diffs, ConfigValueText::kJson), "a: 1 -> 1.0");
}

TEST(ConfigDiff, EmptyNestedObjectIsOneValueAndNoDifferencesFormatEmpty) {
  const json before = json::parse(R"({"x":{}})");
  const json after = json::parse(R"({"x":{"y":1}})");
  EXPECT_EQ(
      format_config_differences(config_differences(before, after), ConfigValueText::kPlainStrings),
      "x: {} -> (absent); x.y: (absent) -> 1");
  EXPECT_EQ(format_config_differences({}, ConfigValueText::kJson), "");
}

}  // namespace
}  // namespace cskv
