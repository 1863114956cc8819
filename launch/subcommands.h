// Declarations of the subcommand entry points, one per launch/cmd_*.cpp file.
#pragma once

namespace cskv::cli {
int run_toy_model(int argc, char** argv);
int run_toy_tokens(int argc, char** argv);
int run_tokenize(int argc, char** argv);
int run_inspect(int argc, char** argv);
int run_capture(int argc, char** argv);
int run_comm_check(int argc, char** argv);
int run_train(int argc, char** argv);
int run_analyze(int argc, char** argv);
int run_merge(int argc, char** argv);
int run_eval(int argc, char** argv);
int run_run(int argc, char** argv);
}  // namespace cskv::cli
