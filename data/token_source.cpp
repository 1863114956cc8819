// Token files (mmap of little-endian u16/u32 ids), calibration sampling and text input.
// Sampling uses std::mt19937_64 with our own rejection sampler so results match across STLs.
#include "data/token_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>

#include "common/error.h"
#include "common/fs.h"
#include "data/hf_tokenizer.h"
#include "data/hf_tokenizer_parts.h"
#include "data/sentencepiece.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "cskv data/ assumes a little-endian host (token files are little-endian)"
#endif

namespace cskv::data {

TokenDtype parse_token_dtype(const std::string& s) {
  if (s == "u16") return TokenDtype::kU16;
  if (s == "u32") return TokenDtype::kU32;
  CSKV_FAIL_USAGE("token dtype must be u16 or u32, got '" << s << "'");
}

const char* token_dtype_name(TokenDtype d) { return d == TokenDtype::kU16 ? "u16" : "u32"; }

Sampling parse_sampling(const std::string& s) {
  if (s == "random") return Sampling::kRandom;
  if (s == "contiguous") return Sampling::kContiguous;
  CSKV_FAIL_USAGE("sampling must be random or contiguous, got '" << s << "'");
}

uint64_t uniform_below(std::mt19937_64& engine, uint64_t n) {
  CSKV_CHECK(n >= 1, "uniform_below needs n >= 1, got " << n);
  // Accept only draws below the largest multiple of n, so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % n + 1) % n;
  for (;;) {
    const uint64_t x = engine();
    if (x <= limit) return x % n;
  }
}

std::vector<int64_t> sample_sequences(int64_t num_tokens, int64_t num_seqs, int64_t window_len,
                                      uint64_t seed, Sampling sampling) {
  CSKV_CHECK_INPUT(num_seqs >= 0, "number of sequences must be >= 0, got " << num_seqs);
  CSKV_CHECK_INPUT(window_len >= 1, "sequence length must be >= 1, got " << window_len);
  CSKV_CHECK_INPUT(num_tokens >= window_len, num_tokens
                                                 << " tokens is shorter than one sequence of "
                                                 << window_len << " tokens");
  std::vector<int64_t> starts(static_cast<size_t>(num_seqs));
  if (sampling == Sampling::kContiguous) {
    CSKV_CHECK_INPUT(num_seqs <= num_tokens / window_len,
                     num_tokens << " tokens hold only " << num_tokens / window_len
                                << " contiguous sequences of " << window_len << " tokens, "
                                << num_seqs << " requested");
    for (int64_t i = 0; i < num_seqs; ++i) starts[static_cast<size_t>(i)] = i * window_len;
    return starts;
  }
  std::mt19937_64 engine(seed);
  const auto choices = static_cast<uint64_t>(num_tokens - window_len + 1);
  for (auto& s : starts) s = static_cast<int64_t>(uniform_below(engine, choices));
  return starts;
}

int64_t stream_tokens_per_sequence(int64_t seq_len, int64_t bos_token_id) {
  CSKV_CHECK_INPUT(seq_len >= (bos_token_id >= 0 ? 2 : 1),
                   "sequence length must be >= " << (bos_token_id >= 0 ? 2 : 1)
                                                 << (bos_token_id >= 0 ? " with a BOS token" : "")
                                                 << ", got " << seq_len);
  return bos_token_id >= 0 ? seq_len - 1 : seq_len;
}

TokenFile::TokenFile(const std::string& path, TokenDtype dtype, int64_t vocab_size)
    : path_(path), dtype_(dtype) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CSKV_CHECK_INPUT(fd >= 0, path << ": cannot open token file: " << std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    CSKV_FAIL_INPUT(path << ": cannot stat token file: " << std::strerror(err));
  }
  const auto bytes = static_cast<int64_t>(st.st_size);
  const int64_t width = dtype == TokenDtype::kU16 ? 2 : 4;
  if (bytes % width != 0) {
    ::close(fd);
    CSKV_FAIL_INPUT(path << ": " << bytes << " bytes is not a multiple of " << width << " ("
                         << token_dtype_name(dtype) << " tokens)");
  }
  num_tokens_ = bytes / width;
  if (bytes > 0) {
    map_ = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ, MAP_PRIVATE, fd, 0);
    if (map_ == MAP_FAILED) {
      const int err = errno;
      map_ = nullptr;
      ::close(fd);
      CSKV_FAIL_INPUT(path << ": cannot mmap token file: " << std::strerror(err));
    }
    map_len_ = static_cast<size_t>(bytes);
    data_ = map_;
  }
  ::close(fd);
  validate_ids(vocab_size);
}

TokenFile TokenFile::from_tokens(std::vector<uint32_t> tokens, const std::string& name,
                                 int64_t vocab_size) {
  TokenFile f;
  f.path_ = name;
  f.dtype_ = TokenDtype::kU32;
  f.owned_ = std::move(tokens);
  f.num_tokens_ = static_cast<int64_t>(f.owned_.size());
  f.data_ = f.owned_.data();
  f.validate_ids(vocab_size);
  return f;
}

void TokenFile::release() {
  if (map_ != nullptr) ::munmap(map_, map_len_);
  map_ = nullptr;
  map_len_ = 0;
  data_ = nullptr;
  owned_.clear();
}

TokenFile::~TokenFile() { release(); }

TokenFile::TokenFile(TokenFile&& o) noexcept { *this = std::move(o); }

TokenFile& TokenFile::operator=(TokenFile&& o) noexcept {
  if (this == &o) return *this;
  release();
  path_ = std::move(o.path_);
  dtype_ = o.dtype_;
  num_tokens_ = o.num_tokens_;
  map_ = o.map_;
  map_len_ = o.map_len_;
  owned_ = std::move(o.owned_);
  data_ = map_ != nullptr ? map_ : static_cast<const void*>(owned_.data());
  o.map_ = nullptr;
  o.map_len_ = 0;
  o.data_ = nullptr;
  o.num_tokens_ = 0;
  return *this;
}

uint32_t TokenFile::operator[](int64_t i) const {
  if (dtype_ == TokenDtype::kU16) return static_cast<const uint16_t*>(data_)[i];
  return static_cast<const uint32_t*>(data_)[i];
}

void TokenFile::validate_ids(int64_t vocab_size) const {
  if (vocab_size <= 0) return;
  if (dtype_ == TokenDtype::kU16 && vocab_size > 65535) return;  // every u16 id fits
  const auto limit = static_cast<uint64_t>(vocab_size);
  auto scan = [&](const auto* ids) {
    for (int64_t i = 0; i < num_tokens_; ++i) {
      if (static_cast<uint64_t>(ids[i]) >= limit) {
        CSKV_FAIL_INPUT(path_ << ": token id " << static_cast<uint64_t>(ids[i]) << " at position "
                              << i << " is out of range for vocab_size " << vocab_size);
      }
    }
  };
  if (dtype_ == TokenDtype::kU16) {
    scan(static_cast<const uint16_t*>(data_));
  } else {
    scan(static_cast<const uint32_t*>(data_));
  }
}

std::vector<int64_t> TokenFile::sample(int64_t num_seqs, int64_t seq_len, uint64_t seed,
                                       Sampling sampling, int64_t bos_token_id) const {
  const int64_t window = stream_tokens_per_sequence(seq_len, bos_token_id);
  CSKV_CHECK_INPUT(num_tokens_ >= window, path_ << ": " << num_tokens_
                                                << " tokens is shorter than one sequence of "
                                                << window << " tokens");
  try {
    return sample_sequences(num_tokens_, num_seqs, window, seed, sampling);
  } catch (const Error& e) {
    CSKV_FAIL_INPUT(path_ << ": " << e.message());
  }
}

void TokenFile::read_sequence(int64_t start, int64_t seq_len, int64_t bos_token_id,
                              uint32_t* out) const {
  const int64_t window = stream_tokens_per_sequence(seq_len, bos_token_id);
  CSKV_CHECK(start >= 0 && start + window <= num_tokens_,
             path_ << ": sequence at offset " << start << " of " << window
                   << " tokens runs past the end (" << num_tokens_ << " tokens)");
  if (bos_token_id >= 0) *out++ = static_cast<uint32_t>(bos_token_id);
  if (dtype_ == TokenDtype::kU16) {
    const auto* ids = static_cast<const uint16_t*>(data_) + start;
    for (int64_t i = 0; i < window; ++i) out[i] = ids[i];
  } else {
    std::memcpy(out, static_cast<const uint32_t*>(data_) + start,
                static_cast<size_t>(window) * sizeof(uint32_t));
  }
}

std::vector<uint32_t> TokenFile::gather(const std::vector<int64_t>& starts, int64_t seq_len,
                                        int64_t bos_token_id) const {
  std::vector<uint32_t> out(starts.size() * static_cast<size_t>(seq_len));
  for (size_t i = 0; i < starts.size(); ++i) {
    read_sequence(starts[i], seq_len, bos_token_id, out.data() + i * static_cast<size_t>(seq_len));
  }
  return out;
}

// A corpus read whole for tokenization may be large; the bound only stops runaway inputs.
constexpr std::uint64_t kMaxTextFileBytes = std::uint64_t{8} << 30;  // 8 GiB

TokenizerKind tokenizer_kind(const std::string& path) {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() &&
           path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".model")) return TokenizerKind::kSentencePiece;
  if (ends_with(".json")) return TokenizerKind::kHfJson;
  std::ifstream in(path, std::ios::binary);
  CSKV_CHECK_INPUT(in, path << ": cannot open tokenizer: " << std::strerror(errno));
  char c = 0;
  while (in.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
  }
  if (in && c == '{') return TokenizerKind::kHfJson;
  if (in && c == '\x0a') return TokenizerKind::kSentencePiece;
  CSKV_FAIL_INPUT(path << ": not a tokenizer (expected a SentencePiece .model or a Hugging Face "
                          "tokenizer.json)");
}

TextDocs parse_text_docs(const std::string& s, const std::string& flag) {
  if (s == "blank-lines") return TextDocs::kBlankLines;
  if (s == "lines") return TextDocs::kLines;
  if (s == "whole") return TextDocs::kWhole;
  CSKV_FAIL_USAGE("--" << flag << ": expected blank-lines|lines|whole, found '" << s << "'");
}

const char* text_docs_name(TextDocs d) {
  switch (d) {
    case TextDocs::kBlankLines:
      return "blank-lines";
    case TextDocs::kLines:
      return "lines";
    case TextDocs::kWhole:
      return "whole";
  }
  return "?";
}

namespace {

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\v\f") == std::string_view::npos;
}

// Calls add(document, begin, end) for every non-empty document of `text` in order; [begin, end)
// is the span of the file it comes from (its lines and their ends). The document is a view into
// `text`, or into a buffer when "\r\n" line ends inside it are joined by "\n"; it lives until
// add returns.
template <class Add>
void for_each_document(const std::string& text, TextDocs docs, Add&& add) {
  const std::string_view all(text);
  if (docs == TextDocs::kWhole) {
    if (!text.empty()) add(all, size_t{0}, text.size());
    return;
  }
  size_t doc_begin = 0, doc_end = 0;  // the document's lines in `text`, without the last end
  bool open = false, has_cr = false;
  auto close = [&](size_t end) {
    if (!open) return;
    std::string_view doc = all.substr(doc_begin, doc_end - doc_begin);
    std::string joined;
    if (has_cr) {  // drop the "\r" of inner "\r\n" ends
      joined.reserve(doc.size());
      for (size_t i = 0; i < doc.size(); ++i) {
        if (!(doc[i] == '\r' && i + 1 < doc.size() && doc[i + 1] == '\n')) joined += doc[i];
      }
      doc = joined;
    }
    add(doc, doc_begin, end);
    open = has_cr = false;
  };
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const size_t next = nl == std::string::npos ? text.size() : nl + 1;
    std::string_view line = all.substr(pos, (nl == std::string::npos ? text.size() : nl) - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (docs == TextDocs::kLines) {
      if (!is_blank(line)) add(line, pos, next);
    } else if (is_blank(line)) {
      close(pos);
    } else {
      if (open) {
        has_cr = has_cr || text[doc_end] == '\r';
      } else {
        doc_begin = pos;
        open = true;
      }
      doc_end = pos + line.size();
    }
    pos = next;
  }
  close(text.size());
}

// SentencePiece encodes this many bytes of documents per load of the model.
constexpr size_t kSentencePieceBatchBytes = size_t{16} << 20;

std::vector<uint32_t> sentencepiece_tokenize(const std::string& text, const std::string& model_path,
                                             bool add_bos, TextDocs docs,
                                             const TokenizeProgress& progress) {
  const SentencePieceInfo info = sentencepiece_info(model_path);
  CSKV_CHECK_INPUT(!add_bos || info.bos_id >= 0,
                   model_path << ": the SentencePiece model has no BOS token, but the model "
                                 "expects one");
  std::vector<uint32_t> ids;
  if (docs == TextDocs::kWhole) {  // encoded in place, not copied into a batch
    if (add_bos && !text.empty()) ids.push_back(static_cast<uint32_t>(info.bos_id));
    if (!text.empty()) {
      const auto all = sentencepiece_encode(model_path, text);
      ids.insert(ids.end(), all.begin(), all.end());
    }
    if (progress) progress(text.size(), text.size());
    return ids;
  }
  std::vector<std::string> batch;
  size_t batch_bytes = 0;
  auto flush = [&](size_t done) {
    for (const auto& doc_ids : sentencepiece_encode_documents(model_path, batch)) {
      if (add_bos) ids.push_back(static_cast<uint32_t>(info.bos_id));
      ids.insert(ids.end(), doc_ids.begin(), doc_ids.end());
    }
    batch.clear();
    batch_bytes = 0;
    if (progress) progress(done, text.size());
  };
  for_each_document(text, docs, [&](std::string_view doc, size_t, size_t end) {
    batch_bytes += doc.size();
    batch.emplace_back(doc);
    if (batch_bytes >= kSentencePieceBatchBytes) flush(end);
  });
  flush(text.size());
  return ids;
}

std::vector<uint32_t> hf_tokenize(const std::string& text, const std::string& text_path,
                                  const std::string& tokenizer_path, bool add_bos, TextDocs docs,
                                  const TokenizeProgress& progress) {
  const HfTokenizer tokenizer = HfTokenizer::load(tokenizer_path);
  // Checked on the whole file, so that the offset is the file's, not a document's.
  const size_t bad = hf::invalid_utf8_offset(text);
  CSKV_CHECK_INPUT(bad == std::string_view::npos, text_path << ": not valid UTF-8 at byte " << bad);
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 3 + 16);
  for_each_document(text, docs, [&](std::string_view doc, size_t begin, size_t end) {
    HfTokenizer::Progress bytes_done;
    if (progress) {
      bytes_done = [&](size_t done) { progress(std::min(begin + done, end), text.size()); };
    }
    try {
      // The whole file is encoded in place; a document is copied out of it.
      const auto doc_ids = docs == TextDocs::kWhole
                               ? tokenizer.encode(text, add_bos, bytes_done)
                               : tokenizer.encode(std::string(doc), add_bos, bytes_done);
      ids.insert(ids.end(), doc_ids.begin(), doc_ids.end());
    } catch (const Error& e) {
      CSKV_FAIL_INPUT(text_path << ": the document at byte " << begin << ": " << e.message());
    }
  });
  if (progress) progress(text.size(), text.size());
  return ids;
}

}  // namespace

std::vector<std::string> split_text_documents(const std::string& text, TextDocs docs) {
  std::vector<std::string> out;
  for_each_document(text, docs,
                    [&](std::string_view doc, size_t, size_t) { out.emplace_back(doc); });
  return out;
}

std::vector<uint32_t> tokenize_text_file(const std::string& text_path,
                                         const std::string& tokenizer_path, bool add_bos,
                                         TextDocs docs, const TokenizeProgress& progress) {
  const TokenizerKind kind = tokenizer_kind(tokenizer_path);
  const auto contents = files::read_whole_file_if_exists(text_path, kMaxTextFileBytes, "text file");
  CSKV_CHECK_INPUT(contents, text_path << ": cannot open text file: " << std::strerror(ENOENT));
  if (kind == TokenizerKind::kSentencePiece) {
    return sentencepiece_tokenize(*contents, tokenizer_path, add_bos, docs, progress);
  }
  return hf_tokenize(*contents, text_path, tokenizer_path, add_bos, docs, progress);
}

}  // namespace cskv::data
