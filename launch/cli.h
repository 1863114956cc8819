// Shared CLI plumbing for the `cskv` subcommands: option parsing, --help, exit codes.
#pragma once

#include <cxxopts.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch/job_file.h"

namespace cskv::cli {

// Exit statuses documented in README.md.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;       // runtime error (bad input file, library failure, dead peer)
constexpr int kExitUsage = 2;       // bad command line
constexpr int kExitPreempted = 75;  // checkpoint written after SIGTERM/SIGUSR1/SIGINT; requeue

struct Subcommand {
  std::string name;
  std::string summary;
  std::function<int(int argc, char** argv)> run;
};

// Every subcommand that works, in the order `cskv --help` lists them.
const std::vector<Subcommand>& subcommands();

// Options object for `cskv <sub>` with the flags every subcommand shares (--help, --log-level).
cxxopts::Options make_options(const std::string& sub, const std::string& description);

// Whether a flag may appear more than once: never on a user's command line; `cskv run` places the
// job file's settings before the command line, where the later one wins.
enum class RepeatedFlags { kRefuse, kLastWins };

// Parses argv; prints help and returns nullopt on --help; throws a usage cskv::Error on bad flags
// ("--model: an argument of 60008 bytes; at most 8192 are accepted", "--lr is given twice").
// Applies --log-level.
std::optional<cxxopts::ParseResult> parse(cxxopts::Options& options, int argc, char** argv,
                                          RepeatedFlags repeated = RepeatedFlags::kRefuse);

// The value of a required flag, or a usage error naming it.
template <typename T>
T required(const cxxopts::ParseResult& r, const std::string& flag);

// Runs a subcommand body, turning cskv::Error and std::exception into one line on stderr and the
// documented exit status.
int guarded(const std::string& sub, const std::function<int()>& body);

}  // namespace cskv::cli

namespace cskv::comm {
class Communicator;
}

namespace cskv::cli {

// Flags shared by the distributed subcommands: --backend, --threads, --log-dir.
void add_runtime_options(cxxopts::Options& options);

// Builds the world communicator (local, or MPI under mpirun/srun), fixes the intra-op thread
// count (never derived from the number of ranks, so results do not depend on it) and opens the
// per-rank log file when --log-dir is given. Checks that the launcher's variables (SLURM_PROCID,
// OMPI_COMM_WORLD_RANK, ...) agree with MPI on every rank (launch/env.h; a mismatch stops all
// ranks with one message) and logs one line per rank: host, rank, local rank, device, threads,
// backend, launcher. `device` is the subcommand's --device ("cpu" | "cuda": GPU local rank mod
// the visible GPUs); the nccl backend implies cuda:<local rank>.
std::unique_ptr<comm::Communicator> start_runtime(const cxxopts::ParseResult& r,
                                                  const std::string& device = "cpu");

}  // namespace cskv::cli
