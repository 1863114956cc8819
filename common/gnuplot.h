// Drawing PNG plots with gnuplot (cskv analyze, cskv eval): find it in $PATH, run a kept script,
// report gnuplot's own message when it fails.
#pragma once

#include <string>

namespace cskv {

// The first executable `name` in $PATH, or "" when there is none.
std::string find_in_path(const std::string& name);

// Runs `gnuplot script` with stdout/stderr in log_path (removed on success); a runtime error with
// gnuplot's messages when it fails.
void run_gnuplot(const std::string& gnuplot, const std::string& script,
                 const std::string& log_path);

}  // namespace cskv
