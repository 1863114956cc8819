// spdlog loggers per component ("model", "data", "comm", ...) with the MPI rank in the pattern.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace cskv::log {

// The logger for a component, created on first use with the current pattern and level.
std::shared_ptr<spdlog::logger> get(const std::string& component);

// Called once the rank is known; every logger's lines then carry "r<rank>".
void set_rank(int rank, int world_size);
// The rank set_rank gave (0 before): for what one rank says for all (a warning every rank would
// repeat).
int rank();

// "trace" | "debug" | "info" | "warn" | "error" | "off"; throws a usage error otherwise.
void set_level(const std::string& level);

// Additionally write every line of this process to <dir>/rank-<R>.log.
void add_file_sink(const std::string& dir, int rank);

}  // namespace cskv::log
