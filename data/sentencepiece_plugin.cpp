// libcskv_sentencepiece.so: a C API over libsentencepiece, dlopen'ed with RTLD_DEEPBIND by
// data/sentencepiece.cpp, because libsentencepiece exports its own protobuf-lite, which clashes
// with LibTorch's libprotobuf when both are linked into one executable.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

int fail(char** error, const std::string& message) {
  if (error != nullptr) *error = copy_string(message);
  return 1;
}

int load(sentencepiece::SentencePieceProcessor& sp, const char* model_path, char** error) {
  const auto status = sp.Load(model_path);
  if (!status.ok()) return fail(error, "cannot load SentencePiece model: " + status.ToString());
  return 0;
}

}  // namespace

extern "C" {

// Every function returns 0 on success, or non-zero with *error set to a malloc'd message that
// the caller frees with cskv_spm_free. No C++ exception crosses this boundary.

__attribute__((visibility("default"))) int cskv_spm_info(const char* model_path, int64_t* bos_id,
                                                         int64_t* vocab_size, char** error) {
  try {
    sentencepiece::SentencePieceProcessor sp;
    if (load(sp, model_path, error) != 0) return 1;
    *bos_id = sp.bos_id();
    *vocab_size = sp.GetPieceSize();
    return 0;
  } catch (const std::exception& e) {
    return fail(error, e.what());
  }
}

__attribute__((visibility("default"))) int cskv_spm_encode(const char* model_path, const char* text,
                                                           size_t text_len, uint32_t** ids,
                                                           size_t* count, char** error) {
  try {
    sentencepiece::SentencePieceProcessor sp;
    if (load(sp, model_path, error) != 0) return 1;
    std::vector<int> out;
    const auto status = sp.Encode(std::string(text, text_len), &out);
    if (!status.ok()) return fail(error, "SentencePiece encoding failed: " + status.ToString());
    *count = out.size();
    *ids = static_cast<uint32_t*>(std::malloc(std::max<size_t>(out.size(), 1) * sizeof(uint32_t)));
    if (*ids == nullptr)
      return fail(error, "out of memory for " + std::to_string(out.size()) + " ids");
    for (size_t i = 0; i < out.size(); ++i) (*ids)[i] = static_cast<uint32_t>(out[i]);
    return 0;
  } catch (const std::exception& e) {
    return fail(error, e.what());
  }
}

// Encodes n documents with one load of the model: document i is text[offsets[i], offsets[i+1])
// (offsets has n + 1 entries). *ids holds their ids back to back, (*counts)[i] those of document i.
__attribute__((visibility("default"))) int cskv_spm_encode_documents(
    const char* model_path, const char* text, const size_t* offsets, size_t n, uint32_t** ids,
    size_t** counts, char** error) {
  try {
    sentencepiece::SentencePieceProcessor sp;
    if (load(sp, model_path, error) != 0) return 1;
    std::vector<int> all, one;
    std::vector<size_t> sizes(n);
    for (size_t i = 0; i < n; ++i) {
      const auto status =
          sp.Encode(std::string_view(text + offsets[i], offsets[i + 1] - offsets[i]), &one);
      if (!status.ok()) return fail(error, "SentencePiece encoding failed: " + status.ToString());
      sizes[i] = one.size();
      all.insert(all.end(), one.begin(), one.end());
    }
    *ids = static_cast<uint32_t*>(std::malloc(std::max<size_t>(all.size(), 1) * sizeof(uint32_t)));
    *counts = static_cast<size_t*>(std::malloc(std::max<size_t>(n, 1) * sizeof(size_t)));
    if (*ids == nullptr || *counts == nullptr) {
      std::free(*ids);
      std::free(*counts);
      return fail(error, "out of memory for " + std::to_string(all.size()) + " ids");
    }
    for (size_t i = 0; i < all.size(); ++i) (*ids)[i] = static_cast<uint32_t>(all[i]);
    std::copy(sizes.begin(), sizes.end(), *counts);
    return 0;
  } catch (const std::exception& e) {
    return fail(error, e.what());
  }
}

__attribute__((visibility("default"))) int cskv_spm_decode(const char* model_path,
                                                           const uint32_t* ids, size_t count,
                                                           char** text, char** error) {
  try {
    sentencepiece::SentencePieceProcessor sp;
    if (load(sp, model_path, error) != 0) return 1;
    std::vector<int> in(ids, ids + count);
    std::string out;
    const auto status = sp.Decode(in, &out);
    if (!status.ok()) return fail(error, "SentencePiece decoding failed: " + status.ToString());
    *text = copy_string(out);
    return 0;
  } catch (const std::exception& e) {
    return fail(error, e.what());
  }
}

__attribute__((visibility("default"))) int cskv_spm_train(const char* args, char** error) {
  try {
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) return fail(error, "SentencePiece training failed: " + status.ToString());
    return 0;
  } catch (const std::exception& e) {
    return fail(error, e.what());
  }
}

__attribute__((visibility("default"))) void cskv_spm_free(void* p) { std::free(p); }

}  // extern "C"
