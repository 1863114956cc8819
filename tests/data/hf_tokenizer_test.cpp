// data/hf_tokenizer: ids identical to the `tokenizers` package (tests/python/data_hf_tokenizers.py
// builds Llama-3, Qwen2 and Mistral-style tokenizers in the test) on multilingual text, emoji,
// whitespace runs and digits; refusals of unsupported components by exact message.
#include "data/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "data/token_source.h"
#include "tests/support/test_support.h"

namespace cskv::data {
namespace {

using json = nlohmann::json;

std::vector<std::string> fixed_texts() {
  return {
      "Hello world! I'm here, you're there; they'll see. DON'T SHOUT, We'VE got 3 cats.",
      "The quick brown fox jumps over the lazy dog 1234567890 times, 3.14159 and 1,000,000.",
      "Grüße aus München: Straße, Übermaß, naïve café, coöperate, résumé.",
      "Decomposed: cafe\u0301 re\u0301sume\u0301 A\u030a ang\u0308strom and cafe\u0301 noir, "
      "caf\u00e9 noir.",
      "Привет, мир! Как дела? Ёлка и щука.",
      "Καλημέρα κόσμε, ελληνικά γράμματα.",
      "مرحبا بالعالم، هذا نص عربي ١٢٣٤٥.",
      "שלום עולם, זה טקסט בעברית.",
      "नमस्ते दुनिया, यह हिंदी पाठ है।",
      "你好，世界！这是中文文本。我们有１２３个苹果。",
      "こんにちは世界、カタカナとひらがな。東京は大きい。",
      "안녕하세요 세계, 한국어 텍스트입니다.",
      "สวัสดีชาวโลก ภาษาไทย",
      "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪🇯🇵 ❤️ "
      "🧑🏿‍🚀 "
      "done.",
      "   leading spaces, trailing spaces   ",
      "tabs\tand\t\ttabs\n\nnewlines\r\nwindows\r\n\r\n  \n   indented\n",
      "multiple     spaces      between\u00a0nbsp\u3000ideographic\u2003em space",
      "digits 0 12 345 6789 01234 ٠١٢٣ ０１２３ 2024 and 2024-12-07 at 04:40:00",
      "def f(x):\n    return x**2  # comment\n\nif __name__ == '__main__':\n\tprint(f(3))",
      "special <|begin_of_text|> inside text <|eot_id|> and <s> then </s> <unk> ok",
      "a zebra zebra zebras, a tool <tool>  used <tool>and again, an uncopyrightable idea",
      "x",
      " ",
      "",
      "\n",
      "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
      "mixed日本語and English混合text123abc",
      "URL https://example.com/path?q=1&r=2#frag and mail a.b@c.de",
      "Numbers: 1e10, -5, +7, 0x1F, 3/4, ½, ², Ⅻ",
  };
}

// Random strings over letters, digits, whitespace runs, combining marks, ZWJ, emoji and added
// tokens: deterministic in the seed.
std::vector<std::string> random_texts(int count, uint32_t seed) {
  const std::vector<std::string> pool = {
      "a",  "b",      "e",      "j",      " ",      "  ",  "\n",         "\t",  "0", "7", "42",
      ".",  ",",      "!",      "'",      "?",      "A",   "C",          "é",   "ü", "ß", "ñ",
      "日", "本",     "中",     "한",     "어",     "😀",   "👍🏽",   "🇩🇪",  "Ж", "Ω", "١",
      "٢",  "\u0301", "\u200d", "\u00a0", "\u3000", "<s>", "<|eot_id|>", "'ll", "'S"};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 80);
    for (int k = 0; k < n; ++k) s += pool[rng() % pool.size()];
    out.push_back(s);
  }
  return out;
}

// Runs the Python reference once for the whole suite: tokenizer files and expected ids.
class HfTokenizerReference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    texts_ = fixed_texts();
    for (auto& t : random_texts(60, 7)) texts_.push_back(t);
    test::write_file(*dir_ / "texts.json", json(texts_).dump());
    if (!std::filesystem::exists(test::python3())) {
      skip_ =
          "the project venv's Python " + test::python3() + " is absent (launch/install-deps.sh)";
      return;
    }
    const auto r = test::run_command(
        {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/data_hf_tokenizers.py",
         *dir_ / "texts.json", dir_->path()});
    if (r.exit_code != 0 && r.err.find("No module named 'tokenizers'") != std::string::npos) {
      skip_ = "the Python package tokenizers is absent from " + test::python3();
      return;
    }
    ASSERT_EQ(r.exit_code, 0) << r.err;
    expected_ = json::parse(test::read_file(*dir_ / "expected.json"));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  void expect_identical_ids(const std::string& name) {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    const HfTokenizer tok = HfTokenizer::load(*dir_ / (name + ".json"));
    ASSERT_EQ(expected_.at(name).size(), texts_.size());
    for (size_t i = 0; i < texts_.size(); ++i) {
      const auto want = expected_.at(name)[i].get<std::vector<uint32_t>>();
      EXPECT_EQ(tok.encode(texts_[i], true), want)
          << name << ", text " << i << ": " << json(texts_[i]).dump();
    }
  }

  static test::TempDir* dir_;
  static std::vector<std::string> texts_;
  static json expected_;
  static std::string skip_;
};

test::TempDir* HfTokenizerReference::dir_ = nullptr;
std::vector<std::string> HfTokenizerReference::texts_;
json HfTokenizerReference::expected_;
std::string HfTokenizerReference::skip_;

// Split(Llama-3 regex) + ByteLevel, ignore_merges, <|begin_of_text|> template, lstrip/rstrip token.
TEST_F(HfTokenizerReference, Llama3IdsIdenticalToTokenizers) { expect_identical_ids("llama3"); }
// NFC + Split(Qwen2 regex) + ByteLevel, ByteLevel post-processor, a normalized added token.
TEST_F(HfTokenizerReference, Qwen2IdsIdenticalToTokenizers) { expect_identical_ids("qwen2"); }
// Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte_fallback, fuse_unk, <s> template.
TEST_F(HfTokenizerReference, MistralLegacyIdsIdenticalToTokenizers) {
  expect_identical_ids("mistral_legacy");
}
// Metaspace(prepend_scheme first, split false) with the same BPE.
TEST_F(HfTokenizerReference, MistralMetaspaceIdsIdenticalToTokenizers) {
  expect_identical_ids("mistral_metaspace");
}
// Digits(individual) + ByteLevel with its GPT-2 regex and a prefix space.
TEST_F(HfTokenizerReference, DigitsGpt2IdsIdenticalToTokenizers) {
  expect_identical_ids("digits_gpt2");
}
// Every Split behavior and invert, Digits contiguous, a Replace regex normalizer.
TEST_F(HfTokenizerReference, SplitBehaviorsIdsIdenticalToTokenizers) {
  expect_identical_ids("split_behaviors");
}

// ---- without Python -----------------------------------------------------------------------

// A hand-made BPE: a b -> ab (rank 0), ab c -> abc (rank 1); <s> special, template "<s> $A".
json tiny_tokenizer() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 5, "content": "<s>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": null, "decoder": null,
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
      "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<s>": 5},
      "merges": ["a b", ["ab", "c"]]}
  })");
}

TEST(HfTokenizer, MergesByRankAddedTokensAndTemplate) {
  const auto tok = HfTokenizer::from_json(tiny_tokenizer().dump(), "tiny.json");
  EXPECT_EQ(tok.encode("abcab<s>cba", true), (std::vector<uint32_t>{5, 4, 3, 5, 2, 1, 0}));
  EXPECT_EQ(tok.encode("abcab<s>cba", false), (std::vector<uint32_t>{4, 3, 5, 2, 1, 0}));
  EXPECT_EQ(tok.encode("", true), (std::vector<uint32_t>{5}));
  EXPECT_EQ(tok.vocab_size(), 6);
  EXPECT_EQ(tok.template_prefix_ids(), (std::vector<uint32_t>{5}));
  // Chars outside the vocabulary without unk_token or byte_fallback are dropped, as tokenizers
  // drops them (a and b then meet and merge).
  EXPECT_EQ(tok.encode("axb", false), (std::vector<uint32_t>{3}));
  EXPECT_EQ(tok.encode("bxa", false), (std::vector<uint32_t>{1, 0}));
}

std::string refusal(const std::function<void(json&)>& edit) {
  json j = tiny_tokenizer();
  edit(j);
  return test::input_error_of([&] { HfTokenizer::from_json(j.dump(), "tokenizer.json"); });
}

TEST(HfTokenizer, RefusesUnsupportedComponentsByName) {
  EXPECT_EQ(refusal([](json& j) {
              j["normalizer"] = {{"type", "BertNormalizer"}};
            }),
            "tokenizer.json: normalizer 'BertNormalizer' is not supported (supported: NFC, "
            "Replace, Prepend, Sequence)");
  EXPECT_EQ(refusal([](json& j) {
              j["normalizer"] = {{"type", "Sequence"},
                                 {"normalizers", json::array({{{"type", "Lowercase"}}})}};
            }),
            "tokenizer.json: normalizer 'Lowercase' is not supported (supported: NFC, Replace, "
            "Prepend, Sequence)");
  EXPECT_EQ(refusal([](json& j) {
              j["pre_tokenizer"] = {{"type", "Whitespace"}};
            }),
            "tokenizer.json: pre_tokenizer 'Whitespace' is not supported (supported: Split, "
            "ByteLevel, Metaspace, Digits, Sequence)");
  EXPECT_EQ(refusal([](json& j) { j["model"]["type"] = "WordPiece"; }),
            "tokenizer.json: model 'WordPiece' is not supported (supported: BPE)");
  EXPECT_EQ(refusal([](json& j) {
              j["post_processor"] = {{"type", "RobertaProcessing"}};
            }),
            "tokenizer.json: post_processor 'RobertaProcessing' is not supported (supported: "
            "TemplateProcessing, ByteLevel, Sequence)");
  EXPECT_EQ(refusal([](json& j) { j["model"]["dropout"] = 0.1; }),
            "tokenizer.json: BPE dropout 0.1 is not supported (only null)");
  EXPECT_EQ(refusal([](json& j) {
              j["truncation"] = {{"max_length", 512}};
            }),
            "tokenizer.json: truncation {\"max_length\":512} is not supported (only null: cskv "
            "encodes one unpadded sequence)");
  EXPECT_EQ(refusal([](json& j) {
              j["pre_tokenizer"] = {{"type", "Split"},
                                    {"pattern", {{"Regex", "(unclosed"}}},
                                    {"behavior", "Isolated"},
                                    {"invert", false}};
            }),
            "tokenizer.json: pre_tokenizer Split: regex '(unclosed' does not compile at offset 9: "
            "missing closing parenthesis");
  EXPECT_EQ(refusal([](json& j) { j["model"]["vocab"]["c"] = -9.2e20; }),
            "tokenizer.json: vocab entry 'c': id -9.2e+20 is not an integer in [0, 2^32)");
  EXPECT_EQ(refusal([](json& j) { j["added_tokens"][0]["id"] = 4294967296; }),
            "tokenizer.json: added token '<s>': id 4294967296 is not an integer in [0, 2^32)");
  EXPECT_EQ(refusal([](json& j) { j["model"]["merges"] = json::array({"a z"}); }),
            "tokenizer.json: merge 0 'a z' uses a token that is not in the vocab");
}

TEST(HfTokenizer, TokenizerKindByNameOrContentAndRefusal) {
  test::TempDir dir;
  test::write_file(dir / "tok", tiny_tokenizer().dump());
  test::write_file(dir / "text.txt", "abc");
  test::write_file(dir / "vocab.txt", "a\nb\n");
  EXPECT_EQ(tokenizer_kind(dir / "tok"), TokenizerKind::kHfJson);
  EXPECT_EQ(tokenizer_kind(dir / "missing.json"), TokenizerKind::kHfJson);
  EXPECT_EQ(tokenizer_kind(dir / "missing.model"), TokenizerKind::kSentencePiece);
  EXPECT_EQ(test::input_error_of([&] { tokenizer_kind(dir / "vocab.txt"); }),
            dir / "vocab.txt" +
                ": not a tokenizer (expected a SentencePiece .model or a Hugging Face "
                "tokenizer.json)");
  // tokenize_text_file takes a tokenizer.json as it takes a SentencePiece model.
  size_t last_done = 0;
  EXPECT_EQ(tokenize_text_file(dir / "text.txt", dir / "tok", true, TextDocs::kBlankLines,
                               [&](size_t done, size_t total) {
                                 EXPECT_EQ(total, 3u);
                                 last_done = done;
                               }),
            (std::vector<uint32_t>{5, 4}));
  EXPECT_EQ(last_done, 3u);
  test::write_file(dir / "latin1.txt",
                   "ab\xe9"
                   "c");
  EXPECT_EQ(test::input_error_of([&] {
              tokenize_text_file(dir / "latin1.txt", dir / "tok", true, TextDocs::kBlankLines);
            }),
            dir / "latin1.txt" + ": not valid UTF-8 at byte 2");
}

}  // namespace
}  // namespace cskv::data
