// tokenizer.json normalizers (NFC, Replace, Prepend, Sequence) and pre-tokenizers (Split,
// ByteLevel, Metaspace, Digits, Sequence) as the `tokenizers` library applies them.
#include <array>

#include "common/error.h"
#include "data/hf_tokenizer_parts.h"

namespace cskv::data::hf {
namespace {

std::string type_of(const json& j, const std::string& file, const char* component) {
  CSKV_CHECK_INPUT(j.is_object() && j.contains("type") && j.at("type").is_string(),
                   file << ": " << component << " without a \"type\": " << j.dump().substr(0, 200));
  return j.at("type").get<std::string>();
}

bool bool_or(const json& j, const char* key, bool fallback) {
  return j.contains(key) && !j.at(key).is_null() ? j.at(key).get<bool>() : fallback;
}

// ---- normalizers ----------------------------------------------------------------------------

struct Nfc : Normalizer {
  void normalize(std::string& s) const override { s = nfc(s); }
};

struct Prepend : Normalizer {
  std::string prefix;
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

struct Replace : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void normalize(std::string& s) const override {
    std::string out;
    size_t last = 0;
    pattern->for_each_match(s, [&](size_t b, size_t e) {
      out.append(s, last, b - last);
      out += content;
      last = e;
    });
    if (last == 0 && out.empty()) return;
    out.append(s, last, std::string::npos);
    s.swap(out);
  }
};

struct NormalizerSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> steps;
  void normalize(std::string& s) const override {
    for (const auto& n : steps) n->normalize(s);
  }
};

// ---- splitting --------------------------------------------------------------------------------

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const json& j, const std::string& file) {
  const std::string b = j.get<std::string>();
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  CSKV_FAIL_INPUT(file << ": Split behavior '" << b
                       << "' is not supported (supported: Removed, Isolated, MergedWithPrevious, "
                          "MergedWithNext, Contiguous)");
}

struct Span {
  size_t start, end;
  bool match;
};

// NormalizedString::split as a stream: the spans of a piece arrive in order (alternating
// non-match / match, covering it), and the pieces they make leave as soon as they are known;
// a match merges with its neighbour as `behavior` says. Nothing per span is stored.
class SpanSplitter {
 public:
  SpanSplitter(const Piece& in, Behavior behavior, bool invert, const PieceSink& emit)
      : in_(in), behavior_(behavior), invert_(invert), emit_(emit) {}
  // The next match [b, e); the text since the previous one becomes a non-match span.
  void on_match(size_t b, size_t e) {
    if (prev_end_ != b) push({prev_end_, b, invert_});
    push({b, e, !invert_});
    prev_end_ = e;
  }
  void finish() {
    if (prev_end_ != in_.text.size()) push({prev_end_, in_.text.size(), invert_});
    flush();
  }

 private:
  void push(const Span& s) {
    switch (behavior_) {
      case Behavior::kRemoved:
        if (!s.match) emit(s);
        break;
      case Behavior::kIsolated:
        emit(s);
        break;
      case Behavior::kMergedWithPrevious:
        hold_or_merge(s, s.match && !previous_match_);
        break;
      case Behavior::kContiguous:
        hold_or_merge(s, s.match == previous_match_);
        break;
      case Behavior::kMergedWithNext:  // a match joins the non-match after it
        hold_or_merge(s, !s.match && has_pending_ && pending_.match);
        break;
    }
    previous_match_ = s.match;
  }
  // Either s extends the pending piece, or the pending piece leaves and s waits instead.
  void hold_or_merge(const Span& s, bool merge) {
    if (merge && has_pending_) {
      pending_.end = s.end;
      pending_.match = s.match;
      return;
    }
    flush();
    pending_ = s;
    has_pending_ = true;
  }
  void flush() {
    if (has_pending_) emit(pending_);
    has_pending_ = false;
  }
  void emit(const Span& s) {
    if (s.end == s.start) return;
    emit_(Piece{in_.text.substr(s.start, s.end - s.start), in_.offset + s.start,
                in_.segment_at_origin});
  }

  const Piece& in_;
  Behavior behavior_;
  bool invert_;
  const PieceSink& emit_;
  size_t prev_end_ = 0;
  Span pending_{0, 0, false};
  bool has_pending_ = false, previous_match_ = false;
};

void split_by_chars(const Piece& in, bool (*pred)(int32_t), Behavior behavior,
                    const PieceSink& emit) {
  SpanSplitter splitter(in, behavior, false, emit);
  for (size_t i = 0; i < in.text.size();) {
    int len = 1;
    const int32_t cp = decode_utf8(in.text, i, &len);
    if (pred(cp)) splitter.on_match(i, i + static_cast<size_t>(len));
    i += static_cast<size_t>(len);
  }
  splitter.finish();
}

// ---- pre-tokenizers -------------------------------------------------------------------------

struct Split : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  void split(const Piece& in, const PieceSink& emit) const override {
    SpanSplitter splitter(in, behavior, invert, emit);
    pattern->for_each_match(in.text, [&](size_t b, size_t e) { splitter.on_match(b, e); });
    splitter.finish();
  }
};

struct Digits : PreTokenizer {
  bool individual = false;
  void split(const Piece& in, const PieceSink& emit) const override {
    split_by_chars(in, is_unicode_numeric, individual ? Behavior::kIsolated : Behavior::kContiguous,
                   emit);
  }
};

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100...
std::array<std::string, 256> byte_level_alphabet() {
  std::array<std::string, 256> table;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    std::string& s = table[static_cast<size_t>(b)];
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return table;
}

constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevel : PreTokenizer {
  bool add_prefix_space = true;
  std::unique_ptr<Regex> gpt2;  // when use_regex
  std::array<std::string, 256> alphabet = byte_level_alphabet();

  void map_bytes(const Piece& p, const PieceSink& emit) const {
    std::string mapped;
    mapped.reserve(p.text.size() * 2);
    for (const char c : p.text) mapped += alphabet[static_cast<unsigned char>(c)];
    emit(Piece{mapped, p.offset, p.segment_at_origin});
  }
  void split(const Piece& in, const PieceSink& emit) const override {
    std::string prefixed;
    Piece p = in;
    if (add_prefix_space && (in.text.empty() || in.text.front() != ' ')) {
      prefixed = " " + std::string(in.text);
      p.text = prefixed;
    }
    if (!gpt2) return map_bytes(p, emit);
    const PieceSink to_bytes = [&](const Piece& sub) { map_bytes(sub, emit); };
    SpanSplitter splitter(p, Behavior::kIsolated, false, to_bytes);
    gpt2->for_each_match(p.text, [&](size_t b, size_t e) { splitter.on_match(b, e); });
    splitter.finish();
  }
};

struct Metaspace : PreTokenizer {
  std::string replacement;
  enum class Prepend { kAlways, kNever, kFirst } prepend = Prepend::kAlways;
  bool split_words = true;

  void split(const Piece& in, const PieceSink& emit) const override {
    std::string s;
    s.reserve(in.text.size() + replacement.size());
    for (const char c : in.text) {
      if (c == ' ') {
        s += replacement;
      } else {
        s.push_back(c);
      }
    }
    const bool starts = s.compare(0, replacement.size(), replacement) == 0;
    if (!starts &&
        (prepend == Prepend::kAlways || (prepend == Prepend::kFirst && in.at_origin()))) {
      s.insert(0, replacement);
    }
    const Piece p{s, in.offset, in.segment_at_origin};
    if (!split_words) {
      if (!s.empty()) emit(p);
      return;
    }
    SpanSplitter splitter(p, Behavior::kMergedWithNext, false, emit);
    for (size_t at = s.find(replacement); at != std::string::npos;
         at = s.find(replacement, at + replacement.size())) {
      splitter.on_match(at, at + replacement.size());
    }
    splitter.finish();
  }
};

std::unique_ptr<PreTokenizer> make_split(const json& j, const std::string& file) {
  auto s = std::make_unique<Split>();
  s->pattern = std::make_unique<Pattern>(j.at("pattern"), file + ": pre_tokenizer Split");
  s->behavior = parse_behavior(j.at("behavior"), file);
  s->invert = bool_or(j, "invert", false);
  return s;
}

std::unique_ptr<PreTokenizer> make_byte_level(const json& j, const std::string& file) {
  auto b = std::make_unique<ByteLevel>();
  b->add_prefix_space = bool_or(j, "add_prefix_space", true);
  if (bool_or(j, "use_regex", true)) {
    b->gpt2 = std::make_unique<Regex>(kGpt2Regex, file + ": pre_tokenizer ByteLevel");
  }
  return b;
}

std::unique_ptr<PreTokenizer> make_metaspace(const json& j, const std::string& file) {
  auto m = std::make_unique<Metaspace>();
  m->replacement = j.contains("replacement") ? j.at("replacement").get<std::string>() : "\u2581";
  int len = 0;
  if (!m->replacement.empty()) decode_utf8(m->replacement, 0, &len);
  CSKV_CHECK_INPUT(
      len > 0 && static_cast<size_t>(len) == m->replacement.size(),
      file << ": Metaspace replacement must be one character, found '" << m->replacement << "'");
  const std::string scheme = j.contains("prepend_scheme") && !j.at("prepend_scheme").is_null()
                                 ? j.at("prepend_scheme").get<std::string>()
                                 : (bool_or(j, "add_prefix_space", true) ? "always" : "never");
  if (scheme == "always") {
    m->prepend = Metaspace::Prepend::kAlways;
  } else if (scheme == "never") {
    m->prepend = Metaspace::Prepend::kNever;
  } else if (scheme == "first") {
    m->prepend = Metaspace::Prepend::kFirst;
  } else {
    CSKV_FAIL_INPUT(file << ": Metaspace prepend_scheme '" << scheme
                         << "' is not supported (supported: always, never, first)");
  }
  m->split_words = bool_or(j, "split", true);
  return m;
}

void add_pre_tokenizers(const json& j, const std::string& file,
                        std::vector<std::unique_ptr<PreTokenizer>>& out) {
  const std::string type = type_of(j, file, "pre_tokenizer");
  if (type == "Sequence") {
    for (const auto& p : j.at("pretokenizers")) add_pre_tokenizers(p, file, out);
  } else if (type == "Split") {
    out.push_back(make_split(j, file));
  } else if (type == "ByteLevel") {
    out.push_back(make_byte_level(j, file));
  } else if (type == "Metaspace") {
    out.push_back(make_metaspace(j, file));
  } else if (type == "Digits") {
    auto d = std::make_unique<Digits>();
    d->individual = bool_or(j, "individual_digits", false);
    out.push_back(std::move(d));
  } else {
    CSKV_FAIL_INPUT(file << ": pre_tokenizer '" << type
                         << "' is not supported (supported: Split, ByteLevel, Metaspace, Digits, "
                            "Sequence)");
  }
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& file) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, file, "normalizer");
  if (type == "NFC") return std::make_unique<Nfc>();
  if (type == "Prepend") {
    auto p = std::make_unique<Prepend>();
    p->prefix = j.at("prepend").get<std::string>();
    return p;
  }
  if (type == "Replace") {
    auto r = std::make_unique<Replace>();
    r->pattern = std::make_unique<Pattern>(j.at("pattern"), file + ": normalizer Replace");
    r->content = j.at("content").get<std::string>();
    return r;
  }
  if (type == "Sequence") {
    auto seq = std::make_unique<NormalizerSequence>();
    for (const auto& n : j.at("normalizers")) {
      if (auto step = make_normalizer(n, file)) seq->steps.push_back(std::move(step));
    }
    return seq;
  }
  CSKV_FAIL_INPUT(file << ": normalizer '" << type
                       << "' is not supported (supported: NFC, Replace, Prepend, Sequence)");
}

std::vector<std::unique_ptr<PreTokenizer>> make_pre_tokenizers(const json& j,
                                                               const std::string& file) {
  std::vector<std::unique_ptr<PreTokenizer>> out;
  if (!j.is_null()) add_pre_tokenizers(j, file, out);
  return out;
}

}  // namespace cskv::data::hf
