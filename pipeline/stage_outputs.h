// The stages' output directories: the lock (common/output_dir.h), taken collectively — rank 0
// holds it for the stage's lifetime (the ranks share the directory) — and the check that every
// file a stage would replace is one cskv wrote.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "common/output_dir.h"

namespace cskv::pipeline {

// Rank 0 locks dir (creating it) before anything in it is created or truncated; the other ranks
// get an empty lock. When another run holds dir, every rank throws the same input error
// "<dir>: in use by another cskv run (pid P on host H); wait for it to finish, or use another
// <flag>". Call it at the same point on every rank (it is a collective).
std::optional<files::DirectoryLock> lock_output_dir(comm::Communicator& comm,
                                                    const std::string& dir,
                                                    const std::string& flag);

// A file a stage writes into its directory, and how to recognise that cskv wrote it.
struct OwnedOutput {
  std::string name;
  std::function<bool(const std::string& path)> is_ours;
  std::string what;  // what a file of ours would be ("a cskv compressor file")
};

// For each output in order that exists in dir: unless is_ours(path), the refusal of
// files::refuse_foreign_file naming the path and "expected <what>". Nothing when none exists.
void refuse_foreign_outputs(const std::string& dir, const std::vector<OwnedOutput>& outputs,
                            const std::string& flag);

// refuse_foreign_outputs(dir, outputs(), flag) decided by rank 0 for every rank (a collective:
// one refusal, printed once); nothing when overwrite.
void refuse_foreign_outputs(comm::Communicator& comm, const std::string& dir,
                            const std::function<std::vector<OwnedOutput>()>& outputs,
                            bool overwrite, const std::string& flag);

// Recognisers: a JSON object holding every one of keys; a file whose first bytes are prefix.
bool is_json_object_with(const std::string& path, const std::vector<std::string>& keys);
bool starts_with_text(const std::string& path, const std::string& prefix);

}  // namespace cskv::pipeline
