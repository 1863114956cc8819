// `cskv run`: the whole compression as one command — capture → train → merge — from a JSON job
// file whose keys are the flags (flags override the file), each stage skipped when complete and
// resumed when partial, all ranks agreeing; a stop signal checkpoints and exits 75.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoint/export_cskv.h"
#include "checkpoint/merge.h"
#include "checkpoint/resume_config.h"
#include "pipeline/train.h"
#include "comm/communicator.h"
#include "common/error.h"
#include "common/log.h"
#include "common/stop_signal.h"
#include "data/atomic_file.h"
#include "pipeline/capture.h"
#include "pipeline/eval.h"
#include "launch/cli.h"
#include "launch/run_config.h"
#include "launch/stage_flags.h"
#include "launch/subcommands.h"
#include "model/config.h"

namespace cskv::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
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
                             cxxopts::value<std::string>())(
      "out", "Output directory of the whole run (required)", cxxopts::value<std::string>())(
      "model", "HF model directory (required)", cxxopts::value<std::string>())(
      "layers", "Layers to capture and train: all | 0-7 | 0,2,5",
      cxxopts::value<std::string>()->default_value("all"))(
      "seed", "Seed of the sampling and of the training",
      cxxopts::value<uint64_t>()->default_value("0"));
  add_capture_flags(options);
  add_train_flags(options);
  options.add_options("merge")("export-cskv",
                               "Also write the reference .ckpt pair into <out>/export",
                               cxxopts::value<bool>()->default_value("false"))(
      "name", "File-name prefix of the exported .ckpt files",
      cxxopts::value<std::string>()->default_value("cskv"));
  options.add_options("eval")("eval",
                              "Run the evaluation stage (cskv eval) last; --eval=false skips it",
                              cxxopts::value<bool>()->default_value("true"))(
      "plots", "Write the evaluation's PNG plots (needs gnuplot); --plots=false: tables only",
      cxxopts::value<bool>()->default_value("true"));
  add_eval_flags(options, "eval-");
  add_runtime_options(options);
  return options;
}

// <out>/stages.json: for every completed stage, the settings it completed with.
json read_stages(const std::string& path) {
  std::ifstream f(path);
  if (!f) return json::object();
  const json j = json::parse(f, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : json::object();
}

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

}  // namespace

int run_run(int argc, char** argv) {
  return guarded("run", [&] {
    auto options = run_options();
    const auto first = parse(options, argc, argv);
    if (!first) return kExitOk;
    // The job file's keys become flags placed before the command line's, so flags win.
    std::vector<std::string> args = {"cskv run"};
    if (first->count("config")) {
      const std::string path = (*first)["config"].as<std::string>();
      const auto from_file = config_file_arguments(options, path);
      args.insert(args.end(), from_file.begin(), from_file.end());
    }
    for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    const auto r = parse(options, static_cast<int>(cargs.size()), cargs.data());
    if (!r) return kExitOk;
    const std::string out = required_setting<std::string>(*r, "out");
    required_setting<std::string>(*r, "model");
    const json resolved = json::parse(resolved_settings_json(options, *r));

    pipeline::CaptureOptions co = capture_options(*r, "seed");
    co.out_dir = out + "/acts";
    pipeline::TrainRunOptions to = train_options(*r);
    to.acts_dir = co.out_dir;
    to.ckpt_dir = out + "/ckpt";
    const bool export_cskv = (*r)["export-cskv"].as<bool>();
    const std::string name = (*r)["name"].as<std::string>();

    install_stop_handlers();
    auto world = start_runtime(*r, co.device);
    const bool root = world->rank() == 0;
    auto log = log::get("run");

    // Rank 0 reads what earlier runs completed; every rank decides from the same bytes.
    std::string stages_text;
    if (root) {
      fs::create_directories(out);
      const std::string run_json = out + "/run.json";
      if (fs::exists(run_json)) {
        std::ifstream f(run_json);
        std::stringstream ss;
        ss << f.rdbuf();
        log->info("{} exists: the stages check their own settings against it", run_json);
        const auto diffs = checkpoint::config_differences(ss.str(), resolved.dump());
        if (!diffs.empty()) {
          std::string joined;
          for (const auto& d : diffs) joined += (joined.empty() ? "" : "; ") + d;
          log->info("settings changed since the last run of {}: {}", out, joined);
        }
      }
      data::write_file_atomic(run_json, resolved.dump(2) + "\n");
      stages_text = read_stages(out + "/stages.json").dump();
    }
    world->broadcast_bytes(stages_text, 0);
    json stages = json::parse(stages_text);
    auto mark_done = [&](const std::string& stage, const json& settings) {
      stages[stage] = settings;
      if (root) data::write_file_atomic(out + "/stages.json", stages.dump(2) + "\n");
    };

    struct StageLine {
      std::string name, what;
      double seconds = 0;
    };
    std::vector<StageLine> summary;
    int ran = 0;
    const auto t_all = Clock::now();

    // 1. capture: skipped when recorded complete with these settings (a rerun may use another
    // number of ranks); otherwise run_capture reuses complete shards and redoes the rest.
    const model::ModelConfig model = model::load_config(co.model_dir);
    json capture_settings = {{"model_config_hash", model.hash()}};
    for (const char* k : {"tokens", "token_dtype", "text", "tokenizer", "num_seqs", "seq_len",
                          "holdout_seqs", "sampling", "seed", "dtype", "layers"}) {
      capture_settings[k] = resolved.value(k, json());
    }
    const int64_t tokens = (co.num_seqs + co.holdout_seqs) * co.seq_len;
    auto t0 = Clock::now();
    if (stages.value("capture", json()) == capture_settings &&
        fs::exists(co.out_dir + "/stats.h5") && fs::exists(co.out_dir + "/manifest.json")) {
      summary.push_back({"capture", "complete, skipped", 0});
    } else {
      const auto cap = pipeline::run_capture(co, *world);
      if (cap.interrupted) return kExitPreempted;
      if (cap.already_complete) {
        summary.push_back({"capture", "complete, skipped", 0});
      } else {
        ++ran;
        summary.push_back({"capture",
                           std::to_string(tokens) + " tokens captured (" +
                               std::to_string(cap.tokens_captured) + " by rank 0)",
                           std::chrono::duration<double>(Clock::now() - t0).count()});
      }
      mark_done("capture", capture_settings);
    }
    if (root) log->info("capture: {}", summary.back().what);

    // 2. train: skipped when recorded complete with these settings and its outputs exist.
    const json train_settings = json::parse(pipeline::resolved_config_json(to, model));
    const std::string factors = to.ckpt_dir + "/compressor.safetensors";
    trainer::RunMetrics metrics;
    bool have_metrics = false;
    if (stages.value("train", json()) == train_settings && fs::exists(factors) &&
        fs::exists(to.ckpt_dir + "/metrics.json")) {
      summary.push_back({"train", "complete, skipped", 0});
    } else {
      t0 = Clock::now();
      const auto tr = pipeline::run_training(to, *world);
      if (tr.interrupted) return kExitPreempted;
      ++ran;
      metrics = tr.metrics;
      have_metrics = true;
      int64_t steps = 0;
      for (const auto& s : tr.states) steps += s.step;
      summary.push_back({"train",
                         std::to_string(tr.states.size()) + " jobs, " + std::to_string(steps) +
                             " steps" +
                             (tr.resumed_from >= 0
                                  ? " (resumed from step " + std::to_string(tr.resumed_from) + ")"
                                  : ""),
                         std::chrono::duration<double>(Clock::now() - t0).count()});
      mark_done("train", train_settings);
    }
    if (root) log->info("train: {}", summary.back().what);

    // 3. merge (rank 0): the newest complete step into <out>/compressor.safetensors.
    const json merge_settings = {
        {"train", train_settings}, {"export_cskv", export_cskv}, {"name", name}};
    const std::string merged = out + "/compressor.safetensors";
    if (stages.value("merge", json()) == merge_settings && fs::exists(merged)) {
      summary.push_back({"merge", "complete, skipped", 0});
    } else {
      t0 = Clock::now();
      std::string what;
      if (root) {
        const auto m = checkpoint::merge_checkpoint(to.ckpt_dir, merged);
        what = std::to_string(m.jobs) + " jobs of step " + std::to_string(m.step) + " -> " + merged;
        if (export_cskv) {
          const auto files = checkpoint::export_cskv(m.factors, out + "/export", name);
          what += ", exported " + files.k_path + " and " + files.v_path;
        }
      }
      world->broadcast_bytes(what, 0);
      ++ran;
      summary.push_back({"merge", what, std::chrono::duration<double>(Clock::now() - t0).count()});
      mark_done("merge", merge_settings);
    }
    if (root) log->info("merge: {}", summary.back().what);

    // 4. eval (all ranks share the sequences and layers): <out>/eval/report.*.
    pipeline::EvalOptions eo;
    eo.model_dir = co.model_dir;
    eo.acts_dir = co.out_dir;
    eo.compressor_path = merged;
    eo.out_dir = out + "/eval";
    eval_options(*r, "eval-", eo);
    eo.plots = (*r)["plots"].as<bool>();
    json eval_settings = {{"merge", merge_settings},
                          {"context", eo.context},
                          {"decode", eo.decode},
                          {"sequences", eo.max_sequences},
                          {"memory_contexts", eo.memory_contexts},
                          {"plots", eo.plots}};
    std::string headline;
    const bool want_eval = (*r)["eval"].as<bool>();
    if (!want_eval) {
      summary.push_back({"eval", "off (--eval=false)", 0});
    } else if (stages.value("eval", json()) == eval_settings &&
               fs::exists(eo.out_dir + "/report.json")) {
      summary.push_back({"eval", "complete, skipped", 0});
      if (root) {
        std::ifstream f(eo.out_dir + "/report.json");
        headline = json::parse(f).value("headline", std::string());
      }
    } else {
      t0 = Clock::now();
      const eval::EvalReport report = pipeline::run_eval(eo, *world);
      ++ran;
      headline = report.headline();
      summary.push_back({"eval", eo.out_dir + "/report.md",
                         std::chrono::duration<double>(Clock::now() - t0).count()});
      mark_done("eval", eval_settings);
    }
    if (root) log->info("eval: {}", summary.back().what);
    world->barrier();
    if (!root) return kExitOk;

    // The final summary: stage times, tokens, compression (from the metrics of the run).
    if (!have_metrics) {
      std::ifstream f(to.ckpt_dir + "/metrics.json");
      const json m = json::parse(f);
      metrics.context = m.at("context").get<int64_t>();
      metrics.compressed_bytes = m.at("compressed_cache_bytes").get<double>();
      metrics.fp16_bytes = m.at("fp16_cache_bytes").get<double>();
      for (const auto& j : m.at("jobs")) {
        trainer::JobMetrics jm;
        jm.job.kind = j.at("kind") == "K" ? trainer::KvKind::kKey : trainer::KvKind::kValue;
        jm.holdout_error_q = j.at("holdout_error_quantized").get<double>();
        metrics.jobs.push_back(jm);
      }
    }
    double ek = 0, ev = 0;
    int nk = 0, nv = 0;
    for (const auto& j : metrics.jobs) {
      (j.job.kind == trainer::KvKind::kKey ? ek : ev) += j.holdout_error_q;
      (j.job.kind == trainer::KvKind::kKey ? nk : nv) += 1;
    }
    const double ratio =
        metrics.compressed_bytes > 0 ? metrics.fp16_bytes / metrics.compressed_bytes : 0;
    const double total_s = std::chrono::duration<double>(Clock::now() - t_all).count();
    json js;
    js["out"] = out;
    js["stages_run"] = ran;
    for (const auto& s : summary) js["stages"][s.name] = {{"what", s.what}, {"seconds", s.seconds}};
    js["tokens_captured"] = tokens;
    js["context"] = metrics.context;
    js["compressed_cache_bytes"] = metrics.compressed_bytes;
    js["fp16_cache_bytes"] = metrics.fp16_bytes;
    js["compression_ratio"] = ratio;
    js["mean_holdout_error_k"] = nk ? ek / nk : 0.0;
    js["mean_holdout_error_v"] = nv ? ev / nv : 0.0;
    js["seconds"] = total_s;
    if (!headline.empty()) js["eval_headline"] = headline;
    data::write_file_atomic(out + "/summary.json", js.dump(2) + "\n");

    std::ostringstream o;
    if (ran == 0) {
      o << "nothing to do: every stage of " << out << " is complete\n";
    }
    o << "summary (" << out << "):\n";
    for (const auto& s : summary) {
      o << "  " << s.name << std::string(9 - s.name.size(), ' ')
        << (s.seconds > 0 ? fmt_seconds(s.seconds) : std::string("-")) << "  " << s.what << "\n";
    }
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "  tokens   %lld captured (calibration + held-out)\n"
                  "  cache    %.0f bytes vs %.0f fp16 at context %lld: %.2fx smaller\n"
                  "  error    held-out relative error (quantized) mean K %.4g, mean V %.4g\n"
                  "  total    %.1f s\n",
                  static_cast<long long>(tokens), metrics.compressed_bytes, metrics.fp16_bytes,
                  static_cast<long long>(metrics.context), ratio, nk ? ek / nk : 0.0,
                  nv ? ev / nv : 0.0, total_s);
    o << buf;
    if (!headline.empty()) o << "  eval     " << headline << "\n";
    std::cout << o.str() << std::flush;
    return kExitOk;
  });
}

}  // namespace cskv::cli
