// libFuzzer target for cskv's torch-free JSON readers (built with clang, see tests.cmake). The
// first byte picks the format, the rest is the file's text:
//   0 acts/manifest.json           data::parse_manifest
//   1 acts/capture.json            data::capture_identity + data::compare_capture_settings
//   2 ckpt/step-*/manifest.json    checkpoint::parse_step_manifest
//   3 a rank-file entry            checkpoint::from_json(RankFileEntry) (what ranks gather)
//   4 cskv run's job.json           cli::job_file_arguments (over keys of every setting type)
// Only cskv::Error may escape a reader (the rank-file entry's converter may also throw nlohmann's
// exceptions: its callers turn them into errors naming the operation); anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "checkpoint/step_manifest_json.h"
#include "common/error.h"
#include "data/capture_identity.h"
#include "data/manifest_json.h"
#include "launch/job_file.h"

namespace {

// What capture_config_json writes for a small capture (the "current" side of the comparison).
const char* const kCurrentCapture =
    R"({"batch":4,"device":"cpu","dtype":"float16","format_version":1,"holdout_seqs":2,)"
    R"("layers":[0,1],"model_config_hash":"h","num_seqs":6,"sampling":"random","seed":1,)"
    R"("seq_len":16,"text":"","token_dtype":"u16","token_stream_size":20000,"tokenizer":"",)"
    R"("tokens":"/t/tokens.bin","world_size":1})";

void manifest(const std::string& text) {
  const auto entries = cskv::data::parse_manifest(text, "fuzz/manifest.json");
  for (const auto& e : entries) {
    // What the parser promises: plain file names, a known split.
    if (e.file.empty() || e.file.find('/') != std::string::npos) __builtin_trap();
    if (e.split != "train" && e.split != "holdout") __builtin_trap();
  }
}

void capture(const std::string& text) {
  const std::string id = cskv::data::capture_identity(text, "fuzz/capture.json");
  if (id.size() != 22 || id.rfind("xxh64:", 0) != 0) __builtin_trap();
  const auto earlier =
      cskv::data::compare_capture_settings(text, kCurrentCapture, "fuzz/capture.json");
  if (earlier.world_size < 0) __builtin_trap();
  (void)cskv::format_config_differences(earlier.differences, cskv::ConfigValueText::kJson);
}

void step_manifest(const std::string& text) {
  const auto m = cskv::checkpoint::parse_step_manifest(text, "fuzz/step-00000004/manifest.json", 4);
  if (m.step != 4 || m.world_size < 1 || static_cast<int>(m.files.size()) != m.world_size) {
    __builtin_trap();
  }
  for (int r = 0; r < m.world_size; ++r) {
    if (m.files[r].rank != r || m.files[r].file != cskv::checkpoint::rank_file_name(r)) {
      __builtin_trap();
    }
  }
}

void rank_file_entry(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return;
  try {
    cskv::checkpoint::RankFileEntry e;
    cskv::checkpoint::from_json(j, e);
    nlohmann::json back;
    cskv::checkpoint::to_json(back, e);
  } catch (const nlohmann::json::exception&) {
  }
}

void job_file(const std::string& text) {
  using cskv::cli::JobKey;
  using T = cskv::cli::SettingType;
  static const std::vector<JobKey> keys = {{"model", T::kString},    {"export-cskv", T::kBool},
                                           {"lr", T::kDouble},       {"epochs", T::kInt64},
                                           {"threads", T::kInt},     {"seed", T::kUint64},
                                           {"k-density", T::kDouble}};
  const auto args = cskv::cli::job_file_arguments(text, "fuzz/job.json", keys);
  for (const std::string& a : args) {  // each an "--flag=value" of a known flag
    const size_t eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) __builtin_trap();
    bool known = false;
    for (const JobKey& k : keys) known = known || a.compare(2, eq - 2, k.flag) == 0;
    if (!known || a.size() > cskv::cli::kMaxArgumentBytes + 64) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 5) {
      case 0:
        manifest(text);
        break;
      case 1:
        capture(text);
        break;
      case 2:
        step_manifest(text);
        break;
      case 3:
        rank_file_entry(text);
        break;
      default:
        job_file(text);
        break;
    }
  } catch (const cskv::Error&) {
  }
  return 0;
}
