// Calibration token sources: flat little-endian u16/u32 token files (mmapped), calibration
// sequence sampling (random offsets as in the paper, or contiguous chunks) with optional BOS.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace cskv::data {

enum class TokenDtype { kU16, kU32 };
// "u16" | "u32"; anything else is a usage error.
TokenDtype parse_token_dtype(const std::string& s);
const char* token_dtype_name(TokenDtype d);

enum class Sampling {
  kRandom,      // independent uniform start offsets (the paper's way; windows may overlap)
  kContiguous,  // the first num_seqs non-overlapping chunks: starts 0, L, 2L, ... (seed unused)
};
// "random" | "contiguous"; anything else is a usage error.
Sampling parse_sampling(const std::string& s);

// Uniform integer in [0, n) from a 64-bit engine by rejection sampling (n >= 1): unlike
// std::uniform_int_distribution its output is the same with every standard library.
uint64_t uniform_below(std::mt19937_64& engine, uint64_t n);

// Start offsets of num_seqs windows of window_len tokens in a stream of num_tokens tokens,
// deterministic in seed (std::mt19937_64 seeded with seed). Random: each start uniform in
// [0, num_tokens - window_len]. Contiguous: k * window_len. Throws an input error when the
// stream is shorter than one window or (contiguous) than num_seqs windows.
std::vector<int64_t> sample_sequences(int64_t num_tokens, int64_t num_seqs, int64_t window_len,
                                      uint64_t seed, Sampling sampling);

// Tokens each calibration sequence takes from the stream: seq_len, or seq_len - 1 when a BOS
// token is prepended (bos_token_id >= 0), so every sequence is exactly seq_len tokens long.
int64_t stream_tokens_per_sequence(int64_t seq_len, int64_t bos_token_id);

// A token stream: a mmapped token file, or tokens held in memory (e.g. from a tokenizer).
// Every id is checked against vocab_size (when > 0) on construction.
class TokenFile {
 public:
  // Errors (input): "<path>: cannot open token file: <strerror>",
  // "<path>: 1001 bytes is not a multiple of 2 (u16 tokens)",
  // "<path>: token id 40000 at position 17 is out of range for vocab_size 32000".
  TokenFile(const std::string& path, TokenDtype dtype, int64_t vocab_size);
  // Tokens already in memory; name is used in messages in place of a path.
  static TokenFile from_tokens(std::vector<uint32_t> tokens, const std::string& name,
                               int64_t vocab_size);
  ~TokenFile();
  TokenFile(TokenFile&& o) noexcept;
  TokenFile& operator=(TokenFile&& o) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return num_tokens_; }
  uint32_t operator[](int64_t i) const;

  // sample_sequences over this stream, with the stream length checked against one sequence:
  // "<path>: 100 tokens is shorter than one sequence of 128 tokens" (BOS-adjusted window).
  std::vector<int64_t> sample(int64_t num_seqs, int64_t seq_len, uint64_t seed, Sampling sampling,
                              int64_t bos_token_id) const;

  // Writes the seq_len tokens of the sequence starting at stream offset `start` into out:
  // [bos, s[start], ..., s[start+seq_len-2]] when bos_token_id >= 0 (BOS is prepended, never
  // replaces a token, as HF Llama tokenizers do), else s[start .. start+seq_len).
  void read_sequence(int64_t start, int64_t seq_len, int64_t bos_token_id, uint32_t* out) const;
  // All sequences of `starts`, row-major [starts.size(), seq_len].
  std::vector<uint32_t> gather(const std::vector<int64_t>& starts, int64_t seq_len,
                               int64_t bos_token_id) const;

 private:
  TokenFile() = default;
  void validate_ids(int64_t vocab_size) const;
  void release();

  std::string path_;
  TokenDtype dtype_ = TokenDtype::kU32;
  int64_t num_tokens_ = 0;
  const void* data_ = nullptr;  // mapping, or owned_.data()
  void* map_ = nullptr;
  size_t map_len_ = 0;
  std::vector<uint32_t> owned_;
};

enum class TokenizerKind { kSentencePiece, kHfJson };
// Which tokenizer a file is: by name ("*.model": SentencePiece, "*.json": Hugging Face
// tokenizer.json), else by content (a protobuf's first byte 0x0A: SentencePiece; '{': JSON).
// Anything else is an input error: "<path>: not a tokenizer (expected a SentencePiece .model or a
// Hugging Face tokenizer.json)".
TokenizerKind tokenizer_kind(const std::string& path);

// How a text file is cut into documents. Each document is encoded on its own, with the
// tokenizer's BOS (or template) at its start, as pre-training data is laid out. Lines end at "\n"
// or "\r\n"; a blank line is empty or holds only spaces, tabs, "\r", "\v" or "\f".
enum class TextDocs {
  kBlankLines,  // one or more blank lines separate documents; a document's lines keep "\n"
  kLines,       // one document per line
  kWhole,       // the whole file is one document, as it is (HF's tokenizer(text) of the file)
};
// "blank-lines" | "lines" | "whole"; anything else is a usage error naming --flag.
TextDocs parse_text_docs(const std::string& s, const std::string& flag = "text-docs");
const char* text_docs_name(TextDocs d);

// The documents of `text` in order, empty ones (blank lines, whitespace only) left out: with
// kBlankLines a document is its lines joined by "\n" (no "\r", no trailing "\n"), with kLines a
// line without its end; kWhole gives the text itself (nothing when it is empty).
std::vector<std::string> split_text_documents(const std::string& text, TextDocs docs);

// Called now and then while a text is tokenized: bytes of it done so far, of total.
using TokenizeProgress = std::function<void(size_t done, size_t total)>;

// Encodes a UTF-8 text file document by document (split_text_documents) with a SentencePiece
// model (tokenizer.model; with add_bos its BOS id before every document) or a tokenizer.json
// (with add_bos its post-processor's template, e.g. Llama-3's <|begin_of_text|>, around every
// document; Qwen2's adds nothing), the documents' ids back to back. Errors name the file and the
// cause; text that is not UTF-8 is refused with its byte offset in the file (tokenizer.json).
std::vector<uint32_t> tokenize_text_file(const std::string& text_path,
                                         const std::string& tokenizer_path, bool add_bos,
                                         TextDocs docs, const TokenizeProgress& progress = {});

}  // namespace cskv::data
