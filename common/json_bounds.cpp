// The pre-parse scan of JSON text: a small state machine over strings, escapes and brackets.
#include "common/json_bounds.h"

#include "common/error.h"

namespace cskv {

void check_json_bounds(const std::string& text, const std::string& path, const JsonBounds& bounds) {
  CSKV_CHECK_INPUT(text.size() <= bounds.max_bytes, path << ": " << text.size()
                                                         << " bytes of JSON; at most "
                                                         << bounds.max_bytes << " are read");
  int depth = 0;
  bool in_string = false, escaped = false;
  std::size_t string_start = 0;  // the opening quote
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (!escaped && c == '"') {
        in_string = false;
        continue;
      }
      escaped = !escaped && c == '\\';
      CSKV_CHECK_INPUT(i - string_start <= bounds.max_string_bytes,
                       path << ": a JSON string longer than " << bounds.max_string_bytes
                            << " bytes (at byte " << string_start << ")");
    } else if (c == '"') {
      in_string = true;
      string_start = i;
    } else if (c == '[' || c == '{') {
      CSKV_CHECK_INPUT(++depth <= bounds.max_depth, path << ": JSON nested deeper than "
                                                         << bounds.max_depth << " levels (at byte "
                                                         << i << ")");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

}  // namespace cskv
