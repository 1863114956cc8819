// `cskv capture --text --tokenizer`: a text corpus tokenized with SentencePiece (BOS prepended
// when the model has one) feeds the same capture; stored token rows are windows of that stream.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/sentencepiece.h"
#include "data/token_source.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"
#include "tests/support/word_sentencepiece.h"

namespace cskv::data {
namespace {

TEST(CaptureText, SentencePieceTextIsTokenizedAndCaptured) {
  test::TempDir dir;
  test::write_word_corpus(dir / "corpus.txt", 7, 300);
  test::train_word_sentencepiece(dir / "corpus.txt", dir / "sp");
  model::write_toy_model(capture_testing::toy_spec(1, 32, 2, 1, 64, 64), dir / "model");
  const auto r =
      test::run_cskv({"capture", "--model", dir / "model", "--text", dir / "corpus.txt",
                      "--tokenizer", dir / "sp.model", "--num-seqs", "4", "--seq-len", "24",
                      "--holdout-seqs", "1", "--out", dir / "acts", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  // The stream capture used: the whole file encoded once, BOS first when the model has one.
  const auto model_cfg = test::read_file(dir / "model/config.json");
  const bool bos = model_cfg.find("\"bos_token_id\": 1") != std::string::npos ||
                   model_cfg.find("\"bos_token_id\":1") != std::string::npos;
  const auto stream =
      tokenize_text_file(dir / "corpus.txt", dir / "sp.model", bos, TextDocs::kBlankLines);
  ASSERT_GT(stream.size(), 200u);
  const auto train = capture_testing::read_split(dir / "acts", "train");
  ASSERT_EQ(train.tokens.size(), 4u);
  for (const auto& [id, row] : train.tokens) {
    std::vector<uint32_t> window(row.numel());
    for (int64_t i = 0; i < row.numel(); ++i)
      window[i] = static_cast<uint32_t>(row[i].item<int64_t>());
    EXPECT_TRUE(*std::max_element(window.begin(), window.end()) < 40u) << "sequence " << id;
    EXPECT_NE(std::search(stream.begin(), stream.end(), window.begin(), window.end()), stream.end())
        << "sequence " << id << " is not a window of the tokenized text";
  }
}

// Blank-line-separated documents: the stream capture uses has BOS (id 1) at every document's
// start; --text-docs is part of the capture's identity (another layout is refused by name), and
// --text-docs lines cuts the same file into one document per line.
TEST(CaptureText, EveryDocumentStartsWithBosAndTheLayoutIsPartOfTheIdentity) {
  test::TempDir dir;
  test::write_word_corpus(dir / "corpus.txt", 11, 300, 10);  // 30 documents
  test::train_word_sentencepiece(dir / "corpus.txt", dir / "sp");
  model::write_toy_model(capture_testing::toy_spec(1, 32, 2, 1, 64, 64), dir / "model");
  auto capture = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"capture",
                                     "--model",
                                     dir / "model",
                                     "--text",
                                     dir / "corpus.txt",
                                     "--tokenizer",
                                     dir / "sp.model",
                                     "--num-seqs",
                                     "4",
                                     "--seq-len",
                                     "24",
                                     "--holdout-seqs",
                                     "1",
                                     "--out",
                                     dir / "acts",
                                     "--log-level",
                                     "warn"};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_cskv(args);
  };
  const auto r = capture({});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const auto stream =
      tokenize_text_file(dir / "corpus.txt", dir / "sp.model", true, TextDocs::kBlankLines);
  EXPECT_EQ(std::count(stream.begin(), stream.end(), 1u), 30);
  const auto lines =
      tokenize_text_file(dir / "corpus.txt", dir / "sp.model", true, TextDocs::kLines);
  EXPECT_EQ(std::count(lines.begin(), lines.end(), 1u), 300);
  auto windows_of = [&](const std::vector<uint32_t>& ids) {
    for (const auto& [id, row] : capture_testing::read_split(dir / "acts", "train").tokens) {
      std::vector<uint32_t> window(row.numel() - 1);  // after the BOS every sequence starts with
      for (int64_t i = 1; i < row.numel(); ++i)
        window[i - 1] = static_cast<uint32_t>(row[i].item<int64_t>());
      EXPECT_NE(std::search(ids.begin(), ids.end(), window.begin(), window.end()), ids.end())
          << "sequence " << id << " is not a window of the tokenized documents";
    }
  };
  windows_of(stream);
  const auto identity = nlohmann::json::parse(test::read_file(dir / "acts/capture.json"));
  EXPECT_EQ(identity.at("text_docs"), "blank-lines");

  const auto refused = capture({"--text-docs", "lines"});
  EXPECT_EQ(refused.exit_code, 1);
  // The layout and the stream it gives (BOS per line: more tokens) are named.
  EXPECT_NE(
      refused.err.find("holds a capture with other settings (text_docs: \"blank-lines\" -> "
                       "\"lines\"; token_stream_size: " +
                       std::to_string(stream.size()) + " -> " + std::to_string(lines.size()) + ")"),
      std::string::npos)
      << refused.err;
  const auto redone = capture({"--text-docs", "lines", "--overwrite"});
  ASSERT_EQ(redone.exit_code, 0) << redone.err;
  windows_of(lines);
  // The whole file as one document, what --text did before documents: the identity it had then.
  const auto whole = capture({"--text-docs", "whole", "--overwrite"});
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_FALSE(
      nlohmann::json::parse(test::read_file(dir / "acts/capture.json")).contains("text_docs"));
}

TEST(CaptureText, TextDocsWithoutTextIsAUsageError) {
  test::TempDir dir;
  model::write_toy_model(capture_testing::toy_spec(1, 32, 2, 1, 64, 64), dir / "model");
  model::write_tokens(dir / "t.bin", model::toy_tokens(64, 2000, 1), 64, model::TokenDType::kU16);
  const auto c = test::run_cskv({"capture", "--model", dir / "model", "--tokens", dir / "t.bin",
                                 "--text-docs", "lines", "--out", dir / "acts"});
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_TRUE(capture_testing::has_line(c.err,
                                        "cskv capture: usage error: --text-docs lines lays out "
                                        "--text or --holdout-text, and neither is given"))
      << c.err;
}

TEST(CaptureText, TextWithoutTokenizerIsAUsageError) {
  test::TempDir dir;
  test::write_file(dir / "corpus.txt", "alpha beta\n");
  model::write_toy_model(capture_testing::toy_spec(1, 32, 2, 1, 64, 64), dir / "model");
  const auto c = test::run_cskv(
      {"capture", "--model", dir / "model", "--text", dir / "corpus.txt", "--out", dir / "acts"});
  EXPECT_EQ(c.exit_code, 2);
  EXPECT_TRUE(capture_testing::has_line(
      c.err,
      "cskv capture: usage error: --text needs --tokenizer (a SentencePiece tokenizer.model or a "
      "tokenizer.json)"))
      << c.err;
}

}  // namespace
}  // namespace cskv::data
