// SentencePiece tokenizer access for text calibration input. Calls go through the plugin
// libcskv_sentencepiece.so, loaded isolated (RTLD_LOCAL | RTLD_DEEPBIND) so that the protobuf
// copy inside libsentencepiece never meets LibTorch's libprotobuf.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cskv::data {

// Where the plugin is looked for, in order: $CSKV_SENTENCEPIECE_PLUGIN, next to the running
// executable, <exe dir>/../lib, the build tree it was compiled in.
std::vector<std::string> sentencepiece_plugin_candidates();

struct SentencePieceInfo {
  int64_t bos_id = -1;  // -1: the model has no BOS piece
  int64_t vocab_size = 0;
};
// Errors (input) name the model file and SentencePiece's status message.
SentencePieceInfo sentencepiece_info(const std::string& model_path);
std::vector<uint32_t> sentencepiece_encode(const std::string& model_path, const std::string& text);
// The ids of each document, encoded on its own, with one load of the model.
std::vector<std::vector<uint32_t>> sentencepiece_encode_documents(
    const std::string& model_path, const std::vector<std::string>& documents);
std::string sentencepiece_decode(const std::string& model_path, const std::vector<uint32_t>& ids);
// SentencePieceTrainer::Train with a flag string ("--input=... --model_prefix=... ..."), for
// toy tokenizers in tests and demos.
void train_sentencepiece(const std::string& flags);

}  // namespace cskv::data
