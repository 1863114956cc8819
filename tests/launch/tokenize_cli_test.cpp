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

// Every document gets the template's <s> (id 5): blank-line-separated by default, one per line
// with --text-docs lines, CRLF line ends and blank lines of spaces alike; a bad value is a usage
// error and a byte that is not UTF-8 is named by its offset in the file.
TEST(TokenizeCli, PutsBosAtEveryDocumentStart) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", tokenizer_json());
  test::write_file(dir / "paragraphs.txt", "\r\nabc\r\n\r\n \r\nab\n");
  test::write_file(dir / "lines.txt", "ab\r\nabc\r\n \r\nc");
  auto tokens = [&](const std::string& text, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"tokenize",      "--tokenizer", dir / "tokenizer.json",
                                     "--text",        dir / text,    "--out",
                                     dir / "out.u16", "--overwrite"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = test::run_cskv(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const data::TokenFile f(dir / "out.u16", data::TokenDtype::kU16, 6);
    std::vector<uint32_t> ids;
    for (int64_t i = 0; i < f.size(); ++i) ids.push_back(f[i]);
    return std::make_pair(ids, r.out);
  };
  const auto [blank, blank_out] = tokens("paragraphs.txt", {});
  EXPECT_EQ(blank, (std::vector<uint32_t>{5, 4, 5, 3}));
  EXPECT_TRUE(has_line(blank_out, "text-docs        blank-lines")) << blank_out;
  const auto [lines, lines_out] = tokens("lines.txt", {"--text-docs", "lines"});
  EXPECT_EQ(lines, (std::vector<uint32_t>{5, 3, 5, 4, 5, 2}));
  EXPECT_TRUE(has_line(lines_out, "text-docs        lines")) << lines_out;
  EXPECT_EQ(tokens("paragraphs.txt", {"--text-docs", "lines"}).first, blank);
  EXPECT_EQ(tokens("lines.txt", {"--text-docs", "lines", "--add-special-tokens=false"}).first,
            (std::vector<uint32_t>{3, 4, 2}));

  const auto bad =
      test::run_cskv({"tokenize", "--tokenizer", dir / "tokenizer.json", "--text",
                      dir / "lines.txt", "--out", dir / "bad.u16", "--text-docs", "paragraphs"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(has_line(bad.err,
                       "cskv tokenize: usage error: --text-docs: expected "
                       "blank-lines|lines|whole, found 'paragraphs'"))
      << bad.err;
  test::write_file(dir / "latin1.txt", "ab\n\nc\xe9");
  const auto latin1 = test::run_cskv({"tokenize", "--tokenizer", dir / "tokenizer.json", "--text",
                                      dir / "latin1.txt", "--out", dir / "latin1.u16"});
  EXPECT_EQ(latin1.exit_code, 1);
  EXPECT_TRUE(has_line(
      latin1.err, "cskv tokenize: error: " + dir / "latin1.txt" + ": not valid UTF-8 at byte 5"))
      << latin1.err;
}

}  // namespace
}  // namespace cskv
