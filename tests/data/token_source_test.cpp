// Tests of data/token_source: token file validation messages, sampling determinism and bounds,
// contiguous chunks, BOS prepending, and SentencePiece text input with a freshly trained model.
#include "data/token_source.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "data/sentencepiece.h"
#include "tests/support/test_support.h"
#include "tests/support/word_sentencepiece.h"

namespace cskv::data {
namespace {

using test::TempDir;

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

TEST(TokenFile, ReadsLittleEndianU16AndU32) {
  TempDir dir;
  test::write_file(dir / "a.bin", std::string("\x01\x02\x03\x04\xff\xff", 6));
  TokenFile a(dir / "a.bin", TokenDtype::kU16, 0);
  ASSERT_EQ(a.size(), 3);
  EXPECT_EQ(a[0], 0x0201u);
  EXPECT_EQ(a[1], 0x0403u);
  EXPECT_EQ(a[2], 0xffffu);
  TokenFile b(dir / "a.bin", TokenDtype::kU16, 65536);  // every u16 is a valid id
  EXPECT_EQ(b.size(), 3);

  test::write_file(dir / "b.bin", bytes_of(std::vector<uint32_t>{7, 70000, 3}));
  TokenFile c(dir / "b.bin", TokenDtype::kU32, 70001);
  ASSERT_EQ(c.size(), 3);
  EXPECT_EQ(c[1], 70000u);
  TokenFile moved = std::move(c);
  EXPECT_EQ(moved[2], 3u);
  EXPECT_EQ(moved.path(), dir / "b.bin");
}

TEST(TokenFile, ByteLengthErrors) {
  TempDir dir;
  test::write_file(dir / "odd.bin", std::string(1001, '\0'));
  EXPECT_CSKV_ERROR(TokenFile(dir / "odd.bin", TokenDtype::kU16, 0),
                    dir / "odd.bin" + ": 1001 bytes is not a multiple of 2 (u16 tokens)");
  test::write_file(dir / "six.bin", std::string(1002, '\0'));
  EXPECT_CSKV_ERROR(TokenFile(dir / "six.bin", TokenDtype::kU32, 0),
                    dir / "six.bin" + ": 1002 bytes is not a multiple of 4 (u32 tokens)");
  EXPECT_CSKV_ERROR(TokenFile(dir / "none.bin", TokenDtype::kU32, 0),
                    dir / "none.bin" + ": cannot open token file: No such file or directory");
}

TEST(TokenFile, TokenIdOutOfVocabNamesPositionAndId) {
  TempDir dir;
  std::vector<uint16_t> ids(20, 5);
  ids[17] = 40000;
  test::write_file(dir / "t.bin", bytes_of(ids));
  EXPECT_CSKV_ERROR(
      TokenFile(dir / "t.bin", TokenDtype::kU16, 32000),
      dir / "t.bin" + ": token id 40000 at position 17 is out of range for vocab_size 32000");
  std::vector<uint32_t> ids32(10, 1);
  ids32[3] = 100;
  test::write_file(dir / "u.bin", bytes_of(ids32));
  EXPECT_CSKV_ERROR(
      TokenFile(dir / "u.bin", TokenDtype::kU32, 100),
      dir / "u.bin" + ": token id 100 at position 3 is out of range for vocab_size 100");
  EXPECT_CSKV_ERROR(TokenFile::from_tokens({1, 2, 9}, "<text>", 9),
                    "<text>: token id 9 at position 2 is out of range for vocab_size 9");
}

TEST(TokenFile, ShorterThanOneSequence) {
  TempDir dir;
  test::write_file(dir / "t.bin", bytes_of(std::vector<uint16_t>(100, 1)));
  TokenFile f(dir / "t.bin", TokenDtype::kU16, 10);
  EXPECT_CSKV_ERROR(f.sample(4, 128, 0, Sampling::kRandom, -1),
                    dir / "t.bin" + ": 100 tokens is shorter than one sequence of 128 tokens");
  // With BOS prepended a 101-token sequence takes exactly the 100 tokens of the file.
  const auto starts = f.sample(3, 101, 0, Sampling::kRandom, 2);
  EXPECT_EQ(starts, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_CSKV_ERROR(
      f.sample(3, 40, 0, Sampling::kContiguous, -1),
      dir / "t.bin" + ": 100 tokens hold only 2 contiguous sequences of 40 tokens, 3 requested");
}

TEST(Sampling, RandomIsDeterministicInSeedAndWithinBounds) {
  const int64_t n = 10000, len = 128;
  const auto a = sample_sequences(n, 500, len, 42, Sampling::kRandom);
  const auto b = sample_sequences(n, 500, len, 42, Sampling::kRandom);
  const auto c = sample_sequences(n, 500, len, 43, Sampling::kRandom);
  ASSERT_EQ(a.size(), 500u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const int64_t s : a) {
    EXPECT_GE(s, 0);
    EXPECT_LE(s + len, n);
  }
  // Pinned values: std::mt19937_64 is fully specified and our rejection sampler is too, so
  // these must be identical with every compiler and standard library.
  const auto pinned = sample_sequences(1000, 4, 10, 1234, Sampling::kRandom);
  std::mt19937_64 engine(1234);
  std::vector<int64_t> expect;
  for (int i = 0; i < 4; ++i) expect.push_back(static_cast<int64_t>(engine() % 991));
  EXPECT_EQ(pinned, expect);  // 991 divides nothing special: no draw was rejected here
  EXPECT_EQ(pinned, (std::vector<int64_t>{92, 42, 166, 340}));
}

TEST(Sampling, UniformBelowIsUnbiased) {
  std::mt19937_64 engine(9);
  EXPECT_EQ(uniform_below(engine, 1), 0u);
  std::vector<int> hist(10, 0);
  for (int i = 0; i < 100000; ++i) ++hist[uniform_below(engine, 10)];
  for (int h : hist) {
    EXPECT_GT(h, 9500);
    EXPECT_LT(h, 10500);
  }
  // A bound just above 2^63 rejects almost half the draws; results stay below the bound.
  const uint64_t big = (1ULL << 63) + 12345;
  for (int i = 0; i < 1000; ++i) EXPECT_LT(uniform_below(engine, big), big);
}

TEST(Sampling, ContiguousChunksDoNotOverlap) {
  const auto s = sample_sequences(1000, 7, 100, 99, Sampling::kContiguous);
  EXPECT_EQ(s, (std::vector<int64_t>{0, 100, 200, 300, 400, 500, 600}));
  EXPECT_EQ(sample_sequences(1000, 7, 100, 5, Sampling::kContiguous), s);  // seed unused
  for (size_t i = 1; i < s.size(); ++i) EXPECT_GE(s[i], s[i - 1] + 100);
  EXPECT_EQ(sample_sequences(1000, 10, 100, 0, Sampling::kContiguous).back(), 900);
  EXPECT_CSKV_ERROR(sample_sequences(1000, 11, 100, 0, Sampling::kContiguous),
                    "1000 tokens hold only 10 contiguous sequences of 100 tokens, 11 requested");
  EXPECT_CSKV_ERROR(sample_sequences(50, 1, 100, 0, Sampling::kRandom),
                    "50 tokens is shorter than one sequence of 100 tokens");
}

TEST(Sampling, ParseNames) {
  EXPECT_EQ(parse_sampling("random"), Sampling::kRandom);
  EXPECT_EQ(parse_sampling("contiguous"), Sampling::kContiguous);
  EXPECT_CSKV_ERROR(parse_sampling("shuffled"),
                    "sampling must be random or contiguous, got 'shuffled'");
  EXPECT_EQ(parse_token_dtype("u16"), TokenDtype::kU16);
  EXPECT_CSKV_ERROR(parse_token_dtype("u8"), "token dtype must be u16 or u32, got 'u8'");
}

TEST(TokenFile, BosIsPrependedNotReplacing) {
  std::vector<uint32_t> ids(50);
  for (uint32_t i = 0; i < 50; ++i) ids[i] = 10 + i;
  TokenFile f = TokenFile::from_tokens(ids, "<mem>", 100);
  std::vector<uint32_t> seq(5);
  f.read_sequence(7, 5, 1, seq.data());
  EXPECT_EQ(seq, (std::vector<uint32_t>{1, 17, 18, 19, 20}));
  f.read_sequence(7, 5, -1, seq.data());
  EXPECT_EQ(seq, (std::vector<uint32_t>{17, 18, 19, 20, 21}));
  EXPECT_EQ(stream_tokens_per_sequence(5, 1), 4);
  EXPECT_EQ(stream_tokens_per_sequence(5, -1), 5);

  // Every sampled window fits: with BOS the last start can be 46 (4 stream tokens).
  const auto starts = f.sample(200, 5, 3, Sampling::kRandom, 1);
  EXPECT_EQ(*std::max_element(starts.begin(), starts.end()), 46);
  const auto all = f.gather(starts, 5, 1);
  ASSERT_EQ(all.size(), 1000u);
  for (size_t i = 0; i < starts.size(); ++i) {
    EXPECT_EQ(all[i * 5], 1u);
    EXPECT_EQ(all[i * 5 + 1], 10u + static_cast<uint32_t>(starts[i]));
  }
}

TEST(Tokenizer, TrainedSentencePieceRoundTrip) {
  TempDir dir;
  test::write_word_corpus(dir / "train.txt", 1, 400);
  test::train_word_sentencepiece(dir / "train.txt", dir / "sp");
  const std::string text = "alpha key value cache beta layer gamma delta";
  test::write_file(dir / "in.txt", text);

  const SentencePieceInfo info = sentencepiece_info(dir / "sp.model");
  EXPECT_EQ(info.bos_id, 1);
  EXPECT_EQ(info.vocab_size, 40);
  const auto with_bos =
      tokenize_text_file(dir / "in.txt", dir / "sp.model", true, TextDocs::kBlankLines);
  const auto plain =
      tokenize_text_file(dir / "in.txt", dir / "sp.model", false, TextDocs::kBlankLines);
  ASSERT_EQ(with_bos.size(), plain.size() + 1);
  EXPECT_EQ(with_bos[0], 1u);
  EXPECT_TRUE(std::equal(plain.begin(), plain.end(), with_bos.begin() + 1));
  EXPECT_GT(plain.size(), 8u);  // a 40-piece vocab splits the words

  EXPECT_EQ(sentencepiece_decode(dir / "sp.model", plain), text);
  EXPECT_EQ(sentencepiece_encode(dir / "sp.model", text), plain);
  for (const uint32_t id : plain) EXPECT_LT(id, 40u);

  // The tokens feed the same sampler as a token file.
  TokenFile f = TokenFile::from_tokens(with_bos, dir / "in.txt", info.vocab_size);
  EXPECT_EQ(f.size(), static_cast<int64_t>(with_bos.size()));

  const std::string msg = test::error_message([&] {
    tokenize_text_file(dir / "in.txt", dir / "missing.model", false, TextDocs::kBlankLines);
  });
  EXPECT_EQ(msg.rfind(dir / "missing.model" + ": cannot load SentencePiece model: ", 0), 0u) << msg;
  EXPECT_CSKV_ERROR(
      tokenize_text_file(dir / "none.txt", dir / "sp.model", false, TextDocs::kBlankLines),
      dir / "none.txt" + ": cannot open text file: No such file or directory");
}

// The documents of a text: blank-line runs (CRLF or LF, leading/trailing blank lines, lines of
// spaces) separate documents; one per line; the whole file; empty documents are left out.
TEST(TextDocuments, SplitByBlankLinesByLinesOrWhole) {
  using V = std::vector<std::string>;
  const std::string text = "\n \n alpha beta\r\ngamma\r\n\r\n\t\r\n\n delta\n\nkey\n\n";
  EXPECT_EQ(split_text_documents(text, TextDocs::kBlankLines),
            (V{" alpha beta\ngamma", " delta", "key"}));
  EXPECT_EQ(split_text_documents(text, TextDocs::kLines),
            (V{" alpha beta", "gamma", " delta", "key"}));
  EXPECT_EQ(split_text_documents(text, TextDocs::kWhole), (V{text}));
  // No blank line: one document, with or without a final line end.
  EXPECT_EQ(split_text_documents("a b\nc d\n", TextDocs::kBlankLines), (V{"a b\nc d"}));
  EXPECT_EQ(split_text_documents("a b\r\nc d", TextDocs::kBlankLines), (V{"a b\nc d"}));
  EXPECT_EQ(split_text_documents("", TextDocs::kBlankLines), V{});
  EXPECT_EQ(split_text_documents(" \r\n\n", TextDocs::kLines), V{});
  EXPECT_EQ(split_text_documents("", TextDocs::kWhole), V{});
  EXPECT_EQ(parse_text_docs("lines"), TextDocs::kLines);
  EXPECT_EQ(parse_text_docs("blank-lines"), TextDocs::kBlankLines);
  EXPECT_EQ(parse_text_docs("whole"), TextDocs::kWhole);
  EXPECT_EQ(text_docs_name(TextDocs::kBlankLines), std::string("blank-lines"));
  EXPECT_CSKV_ERROR(parse_text_docs("paragraphs"),
                    "--text-docs: expected blank-lines|lines|whole, found 'paragraphs'");
}

// tokenize_text_file: every document encoded on its own by SentencePiece with BOS first, the
// documents back to back; a CRLF file gives the ids of its LF twin.
TEST(TextDocuments, EveryDocumentIsEncodedOnItsOwnWithBos) {
  TempDir dir;
  test::write_word_corpus(dir / "train.txt", 3, 400);
  test::train_word_sentencepiece(dir / "train.txt", dir / "sp");
  const std::string model = dir / "sp.model";
  const std::vector<std::string> docs = {"alpha key value\ncache beta", "layer gamma",
                                         "delta delta\nkey\nvalue"};
  const std::string lf = "\n\n" + docs[0] + "\n\n \n" + docs[1] + "\n\n" + docs[2] + "\n\n";
  std::string crlf;
  for (const char c : lf) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  test::write_file(dir / "lf.txt", lf);
  test::write_file(dir / "crlf.txt", crlf);

  // The reference: SentencePiece on each document alone, BOS (id 1) before each.
  auto reference = [&](const std::vector<std::string>& documents, bool bos) {
    std::vector<uint32_t> ids;
    for (const auto& d : documents) {
      if (bos) ids.push_back(1);
      const auto one = sentencepiece_encode(model, d);
      EXPECT_FALSE(one.empty()) << d;
      ids.insert(ids.end(), one.begin(), one.end());
    }
    return ids;
  };
  size_t last_done = 0;
  const auto progress = [&](size_t done, size_t total) {
    EXPECT_EQ(total, lf.size());
    EXPECT_GE(done, last_done);
    last_done = done;
  };
  const auto blank =
      tokenize_text_file(dir / "lf.txt", model, true, TextDocs::kBlankLines, progress);
  EXPECT_EQ(blank, reference(docs, true));
  EXPECT_EQ(last_done, lf.size());
  EXPECT_EQ(std::count(blank.begin(), blank.end(), 1u), 3);
  EXPECT_EQ(tokenize_text_file(dir / "crlf.txt", model, true, TextDocs::kBlankLines), blank);
  EXPECT_EQ(tokenize_text_file(dir / "lf.txt", model, false, TextDocs::kBlankLines),
            reference(docs, false));

  const std::vector<std::string> lines = {"alpha key value", "cache beta", "layer gamma",
                                          "delta delta",     "key",        "value"};
  EXPECT_EQ(tokenize_text_file(dir / "lf.txt", model, true, TextDocs::kLines),
            reference(lines, true));
  EXPECT_EQ(tokenize_text_file(dir / "crlf.txt", model, true, TextDocs::kLines),
            reference(lines, true));
  EXPECT_EQ(tokenize_text_file(dir / "lf.txt", model, true, TextDocs::kWhole),
            reference({lf}, true));
}

}  // namespace
}  // namespace cskv::data
