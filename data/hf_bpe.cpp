// tokenizer.json BPE model: vocabulary, merges applied by rank, unknown chars (byte_fallback to
// <0xXX> tokens, unk_token, fuse_unk) and ignore_merges, as `tokenizers`' BPE computes them.
#include <cstdio>
#include <functional>
#include <limits>
#include <queue>

#include "common/error.h"
#include "common/json_integer.h"
#include "data/hf_tokenizer_parts.h"

namespace cskv::data::hf {
namespace {

constexpr size_t kMaxCachedWords = size_t{1} << 20;
constexpr size_t kMaxCachedWordBytes = 256;

uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t{a} << 32) | b; }

void refuse_set(const json& model, const char* key, const std::string& file) {
  const bool set = model.contains(key) && !model.at(key).is_null() &&
                   !(model.at(key).is_string() && model.at(key).get<std::string>().empty());
  CSKV_CHECK_INPUT(!set, file << ": BPE " << key << " " << model.at(key).dump()
                              << " is not supported (only null)");
}

}  // namespace

uint32_t token_id(const json& v, const std::string& file, const std::string& what) {
  CSKV_CHECK_INPUT(json_integer_fits<uint32_t>(v), file << ": " << what << ": id " << v.dump()
                                                        << " is not an integer in [0, 2^32)");
  return v.get<uint32_t>();
}

Bpe::Bpe(const json& model, const std::string& file) {
  refuse_set(model, "dropout", file);
  refuse_set(model, "continuing_subword_prefix", file);
  refuse_set(model, "end_of_word_suffix", file);
  for (const auto& [token, id] : model.at("vocab").items()) {
    const uint32_t v = token_id(id, file, "vocab entry '" + token + "'");
    vocab_[token] = v;
    max_id_ = std::max(max_id_, int64_t{v});
  }
  const auto& merges = model.at("merges");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    if (m.is_array() && m.size() == 2) {
      add_merge(m[0].get<std::string>(), m[1].get<std::string>(), static_cast<uint32_t>(rank),
                file);
      continue;
    }
    const std::string line = m.is_string() ? m.get<std::string>() : std::string();
    const size_t space = line.find(' ');
    CSKV_CHECK_INPUT(!line.empty() && space != std::string::npos &&
                         line.find(' ', space + 1) == std::string::npos,
                     file << ": merge " << rank << " is not \"a b\" or [a, b]: " << m.dump());
    add_merge(line.substr(0, space), line.substr(space + 1), static_cast<uint32_t>(rank), file);
  }
  if (model.contains("unk_token") && !model.at("unk_token").is_null()) {
    const auto unk = model.at("unk_token").get<std::string>();
    const auto it = vocab_.find(unk);
    CSKV_CHECK_INPUT(it != vocab_.end(), file << ": unk_token '" << unk << "' is not in the vocab");
    unk_id_ = it->second;
  }
  fuse_unk_ = model.value("fuse_unk", false);
  byte_fallback_ = model.value("byte_fallback", false);
  ignore_merges_ = model.value("ignore_merges", false);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab_.find(name);
    byte_ids_[b] = it == vocab_.end() ? -1 : int64_t{it->second};
  }
}

void Bpe::add_merge(const std::string& a, const std::string& b, uint32_t rank,
                    const std::string& file) {
  const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
  CSKV_CHECK_INPUT(ia != vocab_.end() && ib != vocab_.end() && iab != vocab_.end(),
                   file << ": merge " << rank << " '" << a << " " << b
                        << "' uses a token that is not in the vocab");
  merges_[pair_key(ia->second, ib->second)] = {rank, iab->second};
}

void Bpe::initial_symbols(std::string_view word, std::vector<uint32_t>& symbols) const {
  int64_t pending_unk = -1;  // a run of unknown chars not yet emitted (fuse_unk)
  std::string ch;
  for (size_t i = 0; i < word.size();) {
    int len = 1;
    decode_utf8(word, i, &len);
    ch.assign(word.data() + i, static_cast<size_t>(len));
    i += static_cast<size_t>(len);
    const auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      if (pending_unk >= 0) symbols.push_back(static_cast<uint32_t>(pending_unk));
      pending_unk = -1;
      symbols.push_back(it->second);
      continue;
    }
    bool all_bytes = byte_fallback_;
    for (const char c : ch) all_bytes = all_bytes && byte_ids_[static_cast<unsigned char>(c)] >= 0;
    if (all_bytes) {  // as tokenizers: a pending unk is not flushed before the bytes
      for (const char c : ch) {
        symbols.push_back(static_cast<uint32_t>(byte_ids_[static_cast<unsigned char>(c)]));
      }
      continue;
    }
    if (unk_id_ < 0) continue;  // no unk token: the char is dropped, as tokenizers does
    if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(static_cast<uint32_t>(pending_unk));
    pending_unk = unk_id_;
  }
  if (pending_unk >= 0) symbols.push_back(static_cast<uint32_t>(pending_unk));
}

// As tokenizers' Word::merge_all: the pair of lowest rank merges first (leftmost among equal
// ranks), with a heap of candidate merges over a linked list of symbols: O(n log n) per word.
void Bpe::merge(std::vector<uint32_t>& s) const {
  if (s.size() < 2) return;
  struct Candidate {
    uint32_t rank, pos, id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  const auto n = static_cast<int64_t>(s.size());
  std::vector<int64_t> prev(s.size()), next(s.size());
  std::vector<bool> alive(s.size(), true);
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto consider = [&](int64_t a, int64_t b) {
    if (a < 0 || b >= n) return;
    const auto it = merges_.find(pair_key(s[a], s[b]));
    if (it != merges_.end()) {
      heap.push({it->second.first, static_cast<uint32_t>(a), it->second.second});
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1;
    consider(i - 1, i);
  }
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int64_t a = c.pos, b = next[a];
    if (!alive[a] || b >= n) continue;
    const auto it = merges_.find(pair_key(s[a], s[b]));
    if (it == merges_.end() || it->second.second != c.id) continue;  // stale candidate
    s[a] = c.id;
    alive[b] = false;
    next[a] = next[b];
    if (next[b] < n) prev[next[b]] = a;
    consider(prev[a], a);
    consider(a, next[a]);
  }
  size_t out = 0;
  for (int64_t i = 0; i < n; i = next[i]) s[out++] = s[i];
  s.resize(out);
}

void Bpe::encode_word(std::string_view word, std::vector<uint32_t>& out, Cache& cache) const {
  std::string key(word);
  if (const auto hit = cache.find(key); hit != cache.end()) {
    out.insert(out.end(), hit->second.begin(), hit->second.end());
    return;
  }
  std::vector<uint32_t> symbols;
  if (const auto it = ignore_merges_ ? vocab_.find(key) : vocab_.end(); it != vocab_.end()) {
    symbols.push_back(it->second);
  } else {
    initial_symbols(word, symbols);
    merge(symbols);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
  if (key.size() <= kMaxCachedWordBytes && cache.size() < kMaxCachedWords)
    cache.emplace(std::move(key), std::move(symbols));
}

}  // namespace cskv::data::hf
