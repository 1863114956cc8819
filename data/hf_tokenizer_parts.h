// Internal to hf_tokenizer*.cpp: the pieces of a tokenizer.json pipeline (regex, normalizers,
// pre-tokenizers, the BPE model, added tokens) and the Pipeline that chains them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace cskv::data::hf {

using json = nlohmann::json;

// A token id of the file: a JSON integer in [0, 2^32); else an input error naming `what`.
uint32_t token_id(const json& v, const std::string& file, const std::string& what);

// ---- Unicode --------------------------------------------------------------------------------
// Decodes the UTF-8 char at s[i] (s is valid UTF-8): its code point and byte length.
int32_t decode_utf8(std::string_view s, size_t i, int* len);
// Offset of the first byte that is not valid UTF-8, or npos.
size_t invalid_utf8_offset(std::string_view s);
bool is_unicode_whitespace(int32_t cp);  // the White_Space property (Rust char::is_whitespace)
bool is_unicode_numeric(int32_t cp);     // general category Nd, Nl or No (char::is_numeric)
bool is_unicode_alphanumeric(int32_t cp);
// NFC of valid UTF-8 text (utf8proc).
std::string nfc(std::string_view s);

// ---- Regex (PCRE2, UTF + Unicode properties, JIT) ------------------------------------------
class Regex {
 public:
  // `where` names the component in the compile error.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls on_match(start, end) for every non-overlapping match, left to right.
  void for_each_match(std::string_view text,
                      const std::function<void(size_t, size_t)>& on_match) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
};

// A Split/Replace pattern: {"String": s} (literal) or {"Regex": r}.
class Pattern {
 public:
  Pattern(const json& j, const std::string& where);
  void for_each_match(std::string_view text,
                      const std::function<void(size_t, size_t)>& on_match) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// ---- Normalizers ----------------------------------------------------------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
// null -> nullptr; unsupported types throw naming the file.
std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& file);

// ---- Pre-tokenizers -------------------------------------------------------------------------
// A piece of normalized text; `offset` is where it starts in the normalized segment (progress,
// and "at the start of the input" for Metaspace's prepend_scheme "first").
struct Piece {
  std::string_view text;
  size_t offset = 0;
  bool segment_at_origin = false;  // the segment starts at byte 0 of the input
  bool at_origin() const { return segment_at_origin && offset == 0; }
};
using PieceSink = std::function<void(const Piece&)>;

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Emits the pieces `in` splits into (maybe transformed), in order, none empty.
  virtual void split(const Piece& in, const PieceSink& emit) const = 0;
};
// Flattens Sequence; null -> empty list.
std::vector<std::unique_ptr<PreTokenizer>> make_pre_tokenizers(const json& j,
                                                               const std::string& file);

// ---- BPE model ------------------------------------------------------------------------------
class Bpe {
 public:
  Bpe(const json& model, const std::string& file);
  using Cache = std::unordered_map<std::string, std::vector<uint32_t>>;
  // Appends the ids of one pre-tokenized word; cache is the caller's (one per encode call).
  void encode_word(std::string_view word, std::vector<uint32_t>& out, Cache& cache) const;
  int64_t max_id() const { return max_id_; }

 private:
  void initial_symbols(std::string_view word, std::vector<uint32_t>& symbols) const;
  void merge(std::vector<uint32_t>& symbols) const;
  void add_merge(const std::string& a, const std::string& b, uint32_t rank,
                 const std::string& file);

  std::unordered_map<std::string, uint32_t> vocab_;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> merges_;  // (a,b) -> (rank, id)
  int64_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int64_t byte_ids_[256] = {};  // the <0xXX> tokens, -1 where absent
  int64_t max_id_ = -1;
};

// ---- Added tokens -----------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  uint32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false;
};
// Leftmost-longest matching of the added tokens as `tokenizers`' AddedVocabulary does.
class AddedTokenMatcher {
 public:
  void add(const AddedToken& t) { tokens_.push_back(t); }
  bool empty() const { return tokens_.empty(); }
  void finalize();
  // Splits text: on_text(start, end) for the parts between tokens, on_token(id) for tokens.
  void split(std::string_view text, const std::function<void(size_t, size_t)>& on_text,
             const std::function<void(uint32_t)>& on_token) const;

 private:
  bool match_at(std::string_view text, size_t pos, size_t* len, const AddedToken** tok) const;
  std::vector<AddedToken> tokens_;
  std::vector<std::vector<size_t>> by_first_byte_;  // token indices, longest first
};

// ---- The pipeline -----------------------------------------------------------------------------
class Pipeline {
 public:
  Pipeline(const json& j, const std::string& file);
  std::vector<uint32_t> encode(const std::string& text, bool add_special_tokens,
                               const std::function<void(size_t)>& progress) const;
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<uint32_t>& prefix_ids() const { return prefix_ids_; }

 private:
  void parse_added_tokens(const json& list, const std::string& file);
  void parse_post_processor(const json& j, const std::string& file);
  void encode_segment(std::string_view raw, size_t raw_offset, std::vector<uint32_t>& ids,
                      Bpe::Cache& cache, const std::function<void(size_t)>& progress) const;
  void pre_tokenize(size_t stage, const Piece& piece, const PieceSink& sink) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::vector<std::unique_ptr<PreTokenizer>> pre_tokenizers_;
  std::unique_ptr<Bpe> model_;
  AddedTokenMatcher raw_tokens_, normalized_tokens_;
  std::vector<uint32_t> prefix_ids_, suffix_ids_;
  int64_t vocab_size_ = 0;
};

}  // namespace cskv::data::hf
