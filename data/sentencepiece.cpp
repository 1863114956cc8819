// Loads libcskv_sentencepiece.so once (dlopen RTLD_LOCAL | RTLD_DEEPBIND) and wraps its C API
// in throwing C++ calls.
#include "data/sentencepiece.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>

#include "common/error.h"

#ifndef CSKV_SENTENCEPIECE_PLUGIN_BUILD_PATH
#define CSKV_SENTENCEPIECE_PLUGIN_BUILD_PATH ""
#endif

namespace cskv::data {
namespace {

constexpr const char* kPluginName = "libcskv_sentencepiece.so";

struct Plugin {
  int (*info)(const char*, int64_t*, int64_t*, char**) = nullptr;
  int (*encode)(const char*, const char*, size_t, uint32_t**, size_t*, char**) = nullptr;
  int (*encode_documents)(const char*, const char*, const size_t*, size_t, uint32_t**, size_t**,
                          char**) = nullptr;
  int (*decode)(const char*, const uint32_t*, size_t, char**, char**) = nullptr;
  int (*train)(const char*, char**) = nullptr;
  void (*free_fn)(void*) = nullptr;
};

template <typename F>
void bind(void* handle, const char* name, F& fn, const std::string& path) {
  void* sym = dlsym(handle, name);
  CSKV_CHECK(sym != nullptr, path << ": SentencePiece plugin lacks symbol " << name);
  fn = reinterpret_cast<F>(sym);
}

const Plugin& plugin() {
  static std::once_flag once;
  static Plugin p;
  static std::string load_error;
  std::call_once(once, [] {
    std::string tried;
    for (const auto& path : sentencepiece_plugin_candidates()) {
      std::error_code ec;
      if (!std::filesystem::is_regular_file(path, ec)) {
        tried += (tried.empty() ? "" : ", ") + path;
        continue;
      }
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle == nullptr) {
        const char* err = dlerror();
        load_error = path + ": cannot load the SentencePiece plugin: " + (err ? err : "?");
        return;
      }
      bind(handle, "cskv_spm_info", p.info, path);
      bind(handle, "cskv_spm_encode", p.encode, path);
      bind(handle, "cskv_spm_encode_documents", p.encode_documents, path);
      bind(handle, "cskv_spm_decode", p.decode, path);
      bind(handle, "cskv_spm_train", p.train, path);
      bind(handle, "cskv_spm_free", p.free_fn, path);
      return;
    }
    load_error = std::string("SentencePiece plugin ") + kPluginName + " not found (tried " + tried +
                 "); set CSKV_SENTENCEPIECE_PLUGIN to its path";
  });
  CSKV_CHECK(load_error.empty(), load_error);
  return p;
}

// Takes ownership of a plugin-allocated message and throws it with the model path in front.
[[noreturn]] void throw_plugin_error(const Plugin& p, char* error, const std::string& context) {
  std::string message = error != nullptr ? error : "unknown SentencePiece error";
  if (error != nullptr) p.free_fn(error);
  CSKV_FAIL_INPUT(context << ": " << message);
}

}  // namespace

std::vector<std::string> sentencepiece_plugin_candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("CSKV_SENTENCEPIECE_PLUGIN"); env != nullptr && *env) {
    out.emplace_back(env);
  }
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path() / kPluginName).string());
    out.push_back((exe.parent_path().parent_path() / "lib" / kPluginName).string());
  }
  if (*CSKV_SENTENCEPIECE_PLUGIN_BUILD_PATH) out.emplace_back(CSKV_SENTENCEPIECE_PLUGIN_BUILD_PATH);
  return out;
}

SentencePieceInfo sentencepiece_info(const std::string& model_path) {
  const Plugin& p = plugin();
  SentencePieceInfo info;
  char* error = nullptr;
  if (p.info(model_path.c_str(), &info.bos_id, &info.vocab_size, &error) != 0) {
    throw_plugin_error(p, error, model_path);
  }
  return info;
}

std::vector<uint32_t> sentencepiece_encode(const std::string& model_path, const std::string& text) {
  const Plugin& p = plugin();
  uint32_t* ids = nullptr;
  size_t count = 0;
  char* error = nullptr;
  if (p.encode(model_path.c_str(), text.data(), text.size(), &ids, &count, &error) != 0) {
    throw_plugin_error(p, error, model_path);
  }
  std::vector<uint32_t> out(ids, ids + count);
  p.free_fn(ids);
  return out;
}

std::vector<std::vector<uint32_t>> sentencepiece_encode_documents(
    const std::string& model_path, const std::vector<std::string>& documents) {
  const Plugin& p = plugin();
  std::string text;
  std::vector<size_t> offsets{0};
  for (const std::string& d : documents) {
    text += d;
    offsets.push_back(text.size());
  }
  uint32_t* ids = nullptr;
  size_t* counts = nullptr;
  char* error = nullptr;
  if (p.encode_documents(model_path.c_str(), text.data(), offsets.data(), documents.size(), &ids,
                         &counts, &error) != 0) {
    throw_plugin_error(p, error, model_path);
  }
  std::vector<std::vector<uint32_t>> out(documents.size());
  const uint32_t* next = ids;
  for (size_t i = 0; i < documents.size(); ++i) {
    out[i].assign(next, next + counts[i]);
    next += counts[i];
  }
  p.free_fn(ids);
  p.free_fn(counts);
  return out;
}

std::string sentencepiece_decode(const std::string& model_path, const std::vector<uint32_t>& ids) {
  const Plugin& p = plugin();
  char* text = nullptr;
  char* error = nullptr;
  if (p.decode(model_path.c_str(), ids.data(), ids.size(), &text, &error) != 0) {
    throw_plugin_error(p, error, model_path);
  }
  std::string out = text != nullptr ? text : "";
  p.free_fn(text);
  return out;
}

void train_sentencepiece(const std::string& flags) {
  const Plugin& p = plugin();
  char* error = nullptr;
  if (p.train(flags.c_str(), &error) != 0) throw_plugin_error(p, error, "spm_train " + flags);
}

}  // namespace cskv::data
