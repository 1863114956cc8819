// libFuzzer target for data/hf_tokenizer (built with clang, see tests.cmake): the input up to its
// first NUL byte is a tokenizer.json, the rest a text to encode with it. Only cskv::Error may
// escape (a refused file or text); any other exception, crash or sanitizer report is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "data/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string json_text = input.substr(0, nul);
  const std::string text = nul == std::string::npos ? std::string("a b") : input.substr(nul + 1);
  try {
    const auto tok = cskv::data::HfTokenizer::from_json(json_text, "tokenizer.json");
    const auto ids = tok.encode(text, true);
    for (const uint32_t id : ids) {
      if (static_cast<int64_t>(id) >= tok.vocab_size()) __builtin_trap();  // ids stay in range
    }
  } catch (const cskv::Error&) {
  }
  return 0;
}
