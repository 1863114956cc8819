// HfTokenizer: reads tokenizer.json, refuses what it does not implement, and encodes text as
// `tokenizers` does: added tokens split out first, then per part normalizer -> pre-tokenizers ->
// BPE, then the post-processor's template around the whole.
#include "data/hf_tokenizer.h"

#include <algorithm>
#include <cstdio>

#include "common/error.h"
#include "common/fs.h"
#include "common/json_bounds.h"
#include "data/hf_tokenizer_parts.h"

namespace cskv::data {
namespace hf {
namespace {

constexpr std::uint64_t kMaxTokenizerJsonBytes = std::uint64_t{1} << 30;
constexpr size_t kProgressEveryPieces = size_t{1} << 16;

void refuse_non_null(const json& j, const char* key, const std::string& file) {
  CSKV_CHECK_INPUT(!j.contains(key) || j.at(key).is_null(),
                   file << ": " << key << " " << j.at(key).dump().substr(0, 200)
                        << " is not supported (only null: cskv encodes one unpadded sequence)");
}

// Ids of a TemplateProcessing "single" template before and after the sequence $A.
void template_ids(const json& tp, const std::string& file, std::vector<uint32_t>& before,
                  std::vector<uint32_t>& after) {
  bool seen_sequence = false;
  for (const auto& item : tp.at("single")) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    CSKV_CHECK_INPUT(item.contains("SpecialToken"),
                     file << ": TemplateProcessing item " << item.dump() << " is not supported");
    const auto name = item.at("SpecialToken").at("id").get<std::string>();
    CSKV_CHECK_INPUT(tp.at("special_tokens").contains(name),
                     file << ": TemplateProcessing names special token '" << name
                          << "' that its special_tokens do not define");
    for (const auto& id : tp.at("special_tokens").at(name).at("ids")) {
      (seen_sequence ? after : before)
          .push_back(token_id(id, file, "TemplateProcessing special token '" + name + "'"));
    }
  }
}

}  // namespace

// ---- added tokens ---------------------------------------------------------------------------

void AddedTokenMatcher::finalize() {
  by_first_byte_.assign(256, {});
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (tokens_[i].content.empty()) continue;
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  }
  for (auto& list : by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
      return tokens_[a].content.size() > tokens_[b].content.size();
    });
  }
}

bool AddedTokenMatcher::match_at(std::string_view text, size_t pos, size_t* len,
                                 const AddedToken** tok) const {
  for (const size_t i : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
    const std::string& c = tokens_[i].content;
    if (text.compare(pos, c.size(), c) == 0) {
      *len = c.size();
      *tok = &tokens_[i];
      return true;
    }
  }
  return false;
}

namespace {
// Start of the whitespace run that ends at `end` (not before `floor`).
size_t whitespace_run_start(std::string_view text, size_t end, size_t floor) {
  size_t s = end;
  while (s > floor) {
    size_t c = s - 1;
    while (c > floor && (static_cast<unsigned char>(text[c]) & 0xC0) == 0x80) --c;
    int len = 1;
    if (!is_unicode_whitespace(decode_utf8(text, c, &len))) break;
    s = c;
  }
  return s;
}

size_t whitespace_run_end(std::string_view text, size_t start) {
  size_t e = start;
  int len = 1;
  while (e < text.size() && is_unicode_whitespace(decode_utf8(text, e, &len))) {
    e += static_cast<size_t>(len);
  }
  return e;
}

bool word_char_before(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  size_t c = pos - 1;
  while (c > 0 && (static_cast<unsigned char>(text[c]) & 0xC0) == 0x80) --c;
  int len = 1;
  return is_unicode_alphanumeric(decode_utf8(text, c, &len));
}

bool word_char_after(std::string_view text, size_t pos) {
  int len = 1;
  return pos < text.size() && is_unicode_alphanumeric(decode_utf8(text, pos, &len));
}
}  // namespace

void AddedTokenMatcher::split(std::string_view text,
                              const std::function<void(size_t, size_t)>& on_text,
                              const std::function<void(uint32_t)>& on_token) const {
  size_t done = 0;  // text before this is emitted
  for (size_t pos = 0; !tokens_.empty() && pos < text.size();) {
    size_t len = 0;
    const AddedToken* tok = nullptr;
    if (!match_at(text, pos, &len, &tok)) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;
    if (tok->single_word && (word_char_before(text, start) || word_char_after(text, stop))) {
      continue;
    }
    if (tok->lstrip) start = whitespace_run_start(text, start, done);
    if (tok->rstrip) stop = whitespace_run_end(text, stop);
    if (done < start) on_text(done, start);
    on_token(tok->id);
    done = pos = stop;
  }
  if (done < text.size()) on_text(done, text.size());
}

// ---- pipeline -------------------------------------------------------------------------------

Pipeline::Pipeline(const json& j, const std::string& file) {
  CSKV_CHECK_INPUT(j.is_object() && j.contains("model"),
                   file << ": not a tokenizer.json (no \"model\" object)");
  refuse_non_null(j, "truncation", file);
  refuse_non_null(j, "padding", file);
  const json null;
  normalizer_ = make_normalizer(j.contains("normalizer") ? j.at("normalizer") : null, file);
  pre_tokenizers_ =
      make_pre_tokenizers(j.contains("pre_tokenizer") ? j.at("pre_tokenizer") : null, file);
  const json& model = j.at("model");
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  CSKV_CHECK_INPUT(type == "BPE",
                   file << ": model '" << type << "' is not supported (supported: BPE)");
  model_ = std::make_unique<Bpe>(model, file);
  vocab_size_ = model_->max_id() + 1;
  if (j.contains("added_tokens")) parse_added_tokens(j.at("added_tokens"), file);
  if (j.contains("post_processor")) parse_post_processor(j.at("post_processor"), file);
}

void Pipeline::parse_added_tokens(const json& list, const std::string& file) {
  for (const auto& t : list) {
    AddedToken a;
    a.content = t.at("content").get<std::string>();
    a.id = token_id(t.at("id"), file, "added token '" + a.content + "'");
    a.single_word = t.value("single_word", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.normalized = t.value("normalized", !t.value("special", false));
    vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{a.id} + 1);
    if (a.normalized && normalizer_) normalizer_->normalize(a.content);
    (a.normalized ? normalized_tokens_ : raw_tokens_).add(a);
  }
  raw_tokens_.finalize();
  normalized_tokens_.finalize();
}

void Pipeline::parse_post_processor(const json& p, const std::string& file) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  if (type == "ByteLevel") return;  // only moves offsets
  if (type == "Sequence") {
    for (const auto& step : p.at("processors")) parse_post_processor(step, file);
    return;
  }
  CSKV_CHECK_INPUT(type == "TemplateProcessing",
                   file << ": post_processor '" << type
                        << "' is not supported (supported: TemplateProcessing, ByteLevel, "
                           "Sequence)");
  std::vector<uint32_t> before, after;
  template_ids(p, file, before, after);
  for (const uint32_t id : before) vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{id} + 1);
  for (const uint32_t id : after) vocab_size_ = std::max<int64_t>(vocab_size_, int64_t{id} + 1);
  prefix_ids_.insert(prefix_ids_.begin(), before.begin(), before.end());
  suffix_ids_.insert(suffix_ids_.end(), after.begin(), after.end());
}

std::vector<uint32_t> Pipeline::encode(const std::string& text, bool add_special_tokens,
                                       const std::function<void(size_t)>& progress) const {
  const size_t bad = invalid_utf8_offset(text);
  CSKV_CHECK_INPUT(bad == std::string_view::npos, "not valid UTF-8 at byte " << bad);
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 3 + 16);
  if (add_special_tokens) ids = prefix_ids_;
  Bpe::Cache cache;
  raw_tokens_.split(
      text,
      [&](size_t b, size_t e) {
        encode_segment(std::string_view(text).substr(b, e - b), b, ids, cache, progress);
      },
      [&](uint32_t id) { ids.push_back(id); });
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  if (progress) progress(text.size());
  return ids;
}

void Pipeline::encode_segment(std::string_view raw, size_t raw_offset, std::vector<uint32_t>& ids,
                              Bpe::Cache& cache,
                              const std::function<void(size_t)>& progress) const {
  std::string norm(raw);
  if (normalizer_) normalizer_->normalize(norm);
  size_t pieces = 0;
  const double scale = norm.empty() ? 0.0 : static_cast<double>(raw.size()) / norm.size();
  const PieceSink to_model = [&](const Piece& p) {
    model_->encode_word(p.text, ids, cache);
    if (progress && ++pieces % kProgressEveryPieces == 0) {
      progress(raw_offset + static_cast<size_t>(static_cast<double>(p.offset) * scale));
    }
  };
  // chain[i] runs pre-tokenizer i on a piece and hands what it emits to chain[i + 1].
  std::vector<PieceSink> chain(pre_tokenizers_.size() + 1);
  chain.back() = to_model;
  for (size_t i = pre_tokenizers_.size(); i-- > 0;) {
    chain[i] = [&, i](const Piece& p) { pre_tokenizers_[i]->split(p, chain[i + 1]); };
  }
  const bool at_origin = raw_offset == 0;
  normalized_tokens_.split(
      norm,
      [&](size_t b, size_t e) {
        chain.front()(Piece{std::string_view(norm).substr(b, e - b), b, at_origin});
      },
      [&](uint32_t id) { ids.push_back(id); });
}

}  // namespace hf

// ---- HfTokenizer ------------------------------------------------------------------------------

HfTokenizer::HfTokenizer(std::unique_ptr<hf::Pipeline> p) : pipeline_(std::move(p)) {}
HfTokenizer::~HfTokenizer() = default;
HfTokenizer::HfTokenizer(HfTokenizer&&) noexcept = default;
HfTokenizer& HfTokenizer::operator=(HfTokenizer&&) noexcept = default;

HfTokenizer HfTokenizer::from_json(const std::string& json_text, const std::string& name) {
  JsonBounds bounds;
  bounds.max_bytes = hf::kMaxTokenizerJsonBytes;
  check_json_bounds(json_text, name, bounds);
  hf::json j;
  try {
    j = hf::json::parse(json_text);
  } catch (const hf::json::exception& e) {
    CSKV_FAIL_INPUT(name << ": not valid JSON: " << e.what());
  }
  try {
    return HfTokenizer(std::make_unique<hf::Pipeline>(j, name));
  } catch (const hf::json::exception& e) {
    CSKV_FAIL_INPUT(name << ": unexpected tokenizer.json content: " << e.what());
  }
}

HfTokenizer HfTokenizer::load(const std::string& path) {
  return from_json(files::read_whole_file(path, hf::kMaxTokenizerJsonBytes, "tokenizer.json"),
                   path);
}

std::vector<uint32_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens,
                                          const Progress& progress) const {
  return pipeline_->encode(text, add_special_tokens, progress);
}

int64_t HfTokenizer::vocab_size() const { return pipeline_->vocab_size(); }

const std::vector<uint32_t>& HfTokenizer::template_prefix_ids() const {
  return pipeline_->prefix_ids();
}

}  // namespace cskv::data
