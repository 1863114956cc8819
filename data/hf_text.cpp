// tokenizer.json text stages: Unicode helpers (utf8proc), PCRE2 patterns, the normalizers (NFC,
// Replace, Prepend, Sequence) and the pre-tokenizers (Split, ByteLevel, Metaspace, Digits).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "common/error.h"
#include "data/hf_tokenizer_parts.h"

namespace cskv::data::hf {

// ---- Unicode --------------------------------------------------------------------------------

int32_t decode_utf8(std::string_view s, size_t i, int* len) {
  utf8proc_int32_t cp = 0;
  const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                  static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  *len = n > 0 ? static_cast<int>(n) : 1;
  return n > 0 ? cp : 0xFFFD;
}

size_t invalid_utf8_offset(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t cp = 0;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                    static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n <= 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

bool is_unicode_whitespace(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_unicode_numeric(int32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto cat = utf8proc_category(c);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool is_unicode_alphanumeric(int32_t c) {
  const auto cat = utf8proc_category(c);
  return is_unicode_numeric(c) || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO);
}

std::string nfc(std::string_view s) {
  // Below U+0300 every char is NFC-stable and none combines with its neighbours: the lead bytes
  // of everything else are >= 0xCC.
  bool stable = true;
  for (const char ch : s) stable = stable && static_cast<unsigned char>(ch) < 0xCC;
  if (stable) return std::string(s);
  utf8proc_uint8_t* out = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                              static_cast<utf8proc_ssize_t>(s.size()), &out,
                              static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  CSKV_CHECK_INPUT(n >= 0, "NFC normalization failed: " << utf8proc_errmsg(n));
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// ---- Regex ----------------------------------------------------------------------------------

namespace {
// One match-data block per thread, for every pattern (only the whole match is read).
pcre2_match_data* thread_match_data() {
  thread_local std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
      pcre2_match_data_create(1, nullptr), pcre2_match_data_free);
  return md.get();
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) {
  int err = 0;
  PCRE2_SIZE at = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &at, nullptr);
  CSKV_CHECK_INPUT(code, where << ": regex '" << pattern << "' does not compile at offset " << at
                               << ": " << pcre2_message(err));
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::for_each_match(std::string_view text,
                           const std::function<void(size_t, size_t)>& on_match) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    CSKV_CHECK_INPUT(rc >= 0, "regex match failed: " << pcre2_message(rc));
    // Copied before on_match: later stages run inside it and reuse this thread's match data.
    const PCRE2_SIZE start = pcre2_get_ovector_pointer(md)[0];
    const PCRE2_SIZE end = pcre2_get_ovector_pointer(md)[1];
    on_match(start, end);
    if (end > start) {
      pos = end;
    } else {  // an empty match: step over one char
      if (pos == text.size()) return;
      int len = 1;
      decode_utf8(text, pos, &len);
      pos += static_cast<size_t>(len);
    }
  }
}

Pattern::Pattern(const json& j, const std::string& where) {
  CSKV_CHECK_INPUT(
      j.is_object() && j.size() == 1 && (j.contains("String") || j.contains("Regex")),
      where << ": pattern must be {\"String\": ...} or {\"Regex\": ...}, found " << j.dump());
  if (j.contains("String")) {
    literal_ = j.at("String").get<std::string>();
  } else {
    regex_ = std::make_unique<Regex>(j.at("Regex").get<std::string>(), where);
  }
}

void Pattern::for_each_match(std::string_view text,
                             const std::function<void(size_t, size_t)>& on_match) const {
  if (regex_) return regex_->for_each_match(text, on_match);
  if (literal_.empty()) return;
  for (size_t p = text.find(literal_); p != std::string_view::npos;
       p = text.find(literal_, p + literal_.size())) {
    on_match(p, p + literal_.size());
  }
}

}  // namespace cskv::data::hf
