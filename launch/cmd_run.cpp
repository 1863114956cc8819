// `cskv run`: the whole compression as one command — capture → train → merge → eval — from a JSON
// job file whose keys are the flags (flags override the file); the stages run in pipeline/run.h.
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "comm/communicator.h"
#include "common/error.h"
#include "common/stop_signal.h"
#include "launch/cli.h"
#include "launch/run_config.h"
#include "launch/settings.h"
#include "launch/stage_flags.h"
#include "launch/subcommands.h"
#include "pipeline/run.h"

namespace cskv::cli {

namespace {

using json = nlohmann::json;

cxxopts::Options run_options() {
  auto options = make_options(
      "run",
      "The whole compression in one command: capture -> train -> merge -> eval, into --out "
      "(acts/, ckpt/, compressor.safetensors, export/, eval/, run.json, summary.json). Settings "
      "come from "
      "--config job.json, whose keys are these flags' names with '_' for '-' (\"k_density\": "
      "0.25); flags given on the command line override the file. Each stage is skipped when it "
      "is complete and resumed when it is partial; SIGTERM/SIGUSR1/SIGINT checkpoint and exit "
      "75, and the same command continues.");
  options.add_options("job")("config", "JSON job file (keys = flag names, '_' for '-')",
                             cxxopts::value<std::string>());
  SettingTable rest = run_settings();
  rest.erase(rest.begin(), rest.begin() + static_cast<long>(general_settings().size()));
  add_settings(options, rest);  // --log-level came with make_options
  return options;
}

// The command line with the job file's keys placed before its own arguments, so flags win.
std::optional<cxxopts::ParseResult> parse_with_job_file(cxxopts::Options& options, int argc,
                                                        char** argv) {
  const auto first = parse(options, argc, argv);
  if (!first) return std::nullopt;
  std::vector<std::string> args = {"cskv run"};
  if (first->count("config")) {
    const auto from_file =
        config_file_arguments(run_settings(), (*first)["config"].as<std::string>());
    args.insert(args.end(), from_file.begin(), from_file.end());
  }
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  return parse(options, static_cast<int>(cargs.size()), cargs.data(), RepeatedFlags::kLastWins);
}

pipeline::RunOptions job_options(const cxxopts::ParseResult& r) {
  pipeline::RunOptions o;
  o.out = required_setting<std::string>(r, "out");
  required_setting<std::string>(r, "model");
  // Through text, as run.json is read back: the stage records compare equal across runs.
  o.resolved = json::parse(resolved_settings(run_settings(), r).dump());
  o.capture_identity = capture_identity(run_settings(), o.resolved);
  o.capture = capture_options(r, "seed");
  o.train = train_options(r);
  o.export_cskv = r["export-cskv"].as<bool>();
  o.name = r["name"].as<std::string>();
  eval_options(r, "eval-", o.eval);
  o.eval.plots = r["plots"].as<bool>();
  o.eval.device = o.capture.device;  // one --device for every stage
  // One --overwrite for every stage: each replaces only what it would otherwise refuse (a
  // stage recorded complete with these settings is still skipped, a partial one resumed,
  // except a partial capture, which starts over).
  o.capture.overwrite = o.train.overwrite = o.eval.overwrite = r["overwrite"].as<bool>();
  o.want_eval = r["eval"].as<bool>();
  return o;
}

}  // namespace

int run_run(int argc, char** argv) {
  return guarded("run", [&] {
    auto options = run_options();
    const auto r = parse_with_job_file(options, argc, argv);
    if (!r) return kExitOk;
    const pipeline::RunOptions o = job_options(*r);
    install_stop_handlers();
    auto world = start_runtime(*r, o.capture.device);
    const pipeline::RunResult result = pipeline::run_job(o, *world);
    if (result.interrupted) return kExitPreempted;
    if (world->rank() == 0) std::cout << result.summary << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
