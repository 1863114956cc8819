// Helpers shared by the test executables: temp dirs, running the cskv binary, python checks.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"

namespace cskv::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int exit_code = -1;  // exit status, or 128+signal
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs argv (no shell) and captures stdout/stderr.
CommandResult run_command(const std::vector<std::string>& argv);
// Like run_command; `during(pid, exited)` runs on a second thread meanwhile (to signal the
// command or its children) and is joined before returning. `exited` turns true once the command
// has ended, so a waiting `during` can give up.
CommandResult run_command(
    const std::vector<std::string>& argv,
    const std::function<void(int pid, const std::atomic<bool>& exited)>& during);

// A running process: its pid and its MPI rank (OMPI_COMM_WORLD_RANK, -1 when not under mpirun).
struct ProcessInfo {
  int pid = 0;
  int mpi_rank = -1;
};
// Running processes whose executable's file name is `exe_name` and whose command line contains
// `needle`, in rank order.
std::vector<ProcessInfo> find_processes(const std::string& exe_name, const std::string& needle);

// Runs the built `cskv` binary with these arguments.
CommandResult run_cskv(const std::vector<std::string>& args);

// mpirun as root (CI containers) needs Open MPI's consent; a spawned mpirun inherits it.
void allow_mpirun_as_root();

// The project venv's Python (CMake's CSKV_PYTHON): numpy, h5py, torch, safetensors, transformers,
// tokenizers and sentencepiece at the versions launch/requirements.txt pins.
std::string python3();

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);

// Runs fn, expects a cskv::Error and returns its message() (fails the test otherwise).
std::string error_message(const std::function<void()>& fn);
// The same, and the error must be an input error (ErrorKind::kInput).
std::string input_error_of(const std::function<void()>& fn);

}  // namespace cskv::test

// EXPECT_CSKV_ERROR(stmt, "exact message")
#define EXPECT_CSKV_ERROR(stmt, expected) \
  EXPECT_EQ(::cskv::test::error_message([&] { stmt; }), (expected))
