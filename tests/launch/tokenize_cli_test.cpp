// `cskv tokenize`: a tokenizer.json turns a text file into the flat token file capture reads;
// u16 refuses an id above 65535 by name; a file that is no tokenizer is refused.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/token_source.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

using data::capture_testing::has_line;

// a b -> ab, ab c -> abc; <s> (id 5) from the template, <big> an added token with id 70000.
std::string tokenizer_json() {
  return R"({"truncation": null, "padding": null,
    "added_tokens": [
      {"id": 5, "content": "<s>", "normalized": false, "special": true},
      {"id": 70000, "content": "<big>", "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<s>": 5},
      "merges": ["a b", "ab c"]}})";
}

TEST(TokenizeCli, WritesTheTokenStreamAndRefusesIdsU16CannotHold) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", tokenizer_json());
  test::write_file(dir / "small.txt", "abcab");
  test::write_file(dir / "big.txt", "abc<big>c");

  const auto ok = test::run_cskv({"tokenize", "--tokenizer", dir / "tokenizer.json", "--text",
                                  dir / "small.txt", "--out", dir / "small.u16"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(has_line(ok.out, "tokens           3 (largest id 5)")) << ok.out;
  const data::TokenFile small(dir / "small.u16", data::TokenDtype::kU16, 6);
  ASSERT_EQ(small.size(), 3);
  EXPECT_EQ(small[0], 5u);
  EXPECT_EQ(small[1], 4u);
  EXPECT_EQ(small[2], 3u);

  const auto refused = test::run_cskv({"tokenize", "--tokenizer", dir / "tokenizer.json", "--text",
                                       dir / "big.txt", "--out", dir / "big.u16"});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_TRUE(has_line(refused.err,
                       "cskv tokenize: usage error: --token-dtype u16: token id 70000 at "
                       "position 2 does not fit (at most 65535); use --token-dtype u32"))
      << refused.err;

  const auto wide = test::run_cskv({"tokenize", "--tokenizer", dir / "tokenizer.json", "--text",
                                    dir / "big.txt", "--out", dir / "big.u32", "--token-dtype",
                                    "u32", "--add-special-tokens=false"});
  ASSERT_EQ(wide.exit_code, 0) << wide.err;
  const data::TokenFile big(dir / "big.u32", data::TokenDtype::kU32, 70001);
  ASSERT_EQ(big.size(), 3);
  EXPECT_EQ(big[0], 4u);
  EXPECT_EQ(big[1], 70000u);
  EXPECT_EQ(big[2], 2u);
}

TEST(TokenizeCli, RefusesAFileThatIsNoTokenizer) {
  test::TempDir dir;
  test::write_file(dir / "vocab.txt", "a\nb\n");
  test::write_file(dir / "text.txt", "ab");
  const auto r = test::run_cskv({"tokenize", "--tokenizer", dir / "vocab.txt", "--text",
                                 dir / "text.txt", "--out", dir / "out.u16"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv tokenize: error: " + dir / "vocab.txt" +
                                  ": not a tokenizer (expected a SentencePiece .model or a "
                                  "Hugging Face tokenizer.json)"))
      << r.err;
}

}  // namespace
}  // namespace cskv
