// lock_output_dir: rank 0 takes the directory lock inside root_decides, so its refusal is every
// rank's (the same kind and message, raised as a collective error); the foreign-file check.
#include "pipeline/stage_outputs.h"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "comm/collectives.h"
#include "common/error.h"
#include "common/fs.h"

namespace cskv::pipeline {

std::optional<files::DirectoryLock> lock_output_dir(comm::Communicator& comm,
                                                    const std::string& dir,
                                                    const std::string& flag) {
  std::optional<files::DirectoryLock> lock;
  comm::root_decides(comm, std::function<void()>([&] {
                       try {
                         lock.emplace(files::DirectoryLock::acquire(dir, flag));
                       } catch (const Error& e) {  // the message alone, on every rank
                         throw Error(e.kind(), e.message(), {}, /*collective=*/true);
                       }
                     }));
  return lock;
}

void refuse_foreign_outputs(const std::string& dir, const std::vector<OwnedOutput>& outputs,
                            const std::string& flag) {
  for (const OwnedOutput& out : outputs) {
    const std::string path = dir + "/" + out.name;
    std::error_code ec;
    if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) continue;
    if (!out.is_ours(path)) files::refuse_foreign_file(path, "expected " + out.what, flag);
  }
}

bool is_json_object_with(const std::string& path, const std::vector<std::string>& keys) {
  try {
    const auto j = nlohmann::json::parse(files::read_whole_file(path), nullptr, false);
    if (!j.is_object()) return false;
    for (const auto& k : keys) {
      if (!j.contains(k)) return false;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

bool starts_with_text(const std::string& path, const std::string& prefix) {
  try {
    return files::read_whole_file(path).rfind(prefix, 0) == 0;
  } catch (const Error&) {
    return false;
  }
}

void refuse_foreign_outputs(comm::Communicator& comm, const std::string& dir,
                            const std::function<std::vector<OwnedOutput>()>& outputs,
                            bool overwrite, const std::string& flag) {
  comm::root_decides(comm, std::function<void()>([&] {
                       if (overwrite) return;
                       try {
                         refuse_foreign_outputs(dir, outputs(), flag);
                       } catch (const Error& e) {
                         throw Error(e.kind(), e.message(), {}, /*collective=*/true);
                       }
                     }));
}

}  // namespace cskv::pipeline
