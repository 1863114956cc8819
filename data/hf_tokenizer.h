// Hugging Face `tokenizer.json` encoding without LibTorch: the subset of the `tokenizers` pipeline
// that Llama-3, Qwen2 and Mistral use (added/special tokens, normalizers, pre-tokenizers, BPE,
// the post-processor's template). Anything else is refused by name when the file is loaded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cskv::data {

namespace hf {
class Pipeline;
}  // namespace hf

class HfTokenizer {
 public:
  // Reads and checks a tokenizer.json. Errors (input) name the file and the component:
  // "<path>: normalizer 'BertNormalizer' is not supported (supported: NFC, Replace, Prepend,
  // Sequence)".
  static HfTokenizer load(const std::string& path);
  // The same from JSON text; `name` stands for the path in messages.
  static HfTokenizer from_json(const std::string& json_text, const std::string& name);
  ~HfTokenizer();
  HfTokenizer(HfTokenizer&&) noexcept;
  HfTokenizer& operator=(HfTokenizer&&) noexcept;

  // Called now and then during encode() with the bytes of the text handled so far.
  using Progress = std::function<void(size_t bytes_done)>;
  // The ids of `tokenizers`' Tokenizer.encode(text, add_special_tokens).ids for one sequence.
  // Text that is not UTF-8 is an input error: "not valid UTF-8 at byte 17".
  std::vector<uint32_t> encode(const std::string& text, bool add_special_tokens,
                               const Progress& progress = {}) const;

  // 1 + the largest id of the model's vocabulary, the added tokens and the template.
  int64_t vocab_size() const;
  // Ids the post-processor's single-sequence template puts before the text (BOS), maybe none.
  const std::vector<uint32_t>& template_prefix_ids() const;

 private:
  explicit HfTokenizer(std::unique_ptr<hf::Pipeline> p);
  std::unique_ptr<hf::Pipeline> pipeline_;
};

}  // namespace cskv::data
