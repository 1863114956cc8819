// The run stage driver: read the record of completed stages, then capture, train, merge and eval
// (each skipped when complete with the same settings), then the summary (printed and summary.json).
#include "pipeline/run.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <sstream>
#include <vector>

#include "checkpoint/export_cskv.h"
#include "checkpoint/merge.h"
#include "checkpoint/resume_config.h"
#include "comm/collectives.h"
#include "common/fs.h"
#include "common/json_bounds.h"
#include "common/log.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "pipeline/stage_outputs.h"

namespace cskv::pipeline {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string fmt_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

struct StageLine {
  std::string name, what;
  double seconds = 0;
};

// What the stages share while the job runs: the options with their directories, the record of
// completed stages (the same on every rank) and what the summary needs.
struct RunState {
  RunOptions o;
  comm::Communicator* comm = nullptr;
  bool root = false;
  json stages;
  std::vector<StageLine> summary;
  int ran = 0;
  int64_t tokens = 0;
  json train_settings, merge_settings;
  trainer::RunMetrics metrics;
  bool have_metrics = false;
  std::string headline;

  void mark_done(const std::string& stage, const json& settings) {
    stages[stage] = settings;
    if (root) files::write_file_atomic(o.out + "/stages.json", stages.dump(2) + "\n");
  }
  void add(const std::string& stage, const std::string& what, double seconds) {
    summary.push_back({stage, what, seconds});
  }
  bool recorded(const std::string& stage, const json& settings) const {
    return stages.value(stage, json()) == settings;
  }
};

// The stage directories under <out>.
RunOptions with_layout(RunOptions o) {
  o.capture.out_dir = o.out + "/acts";
  o.train.acts_dir = o.capture.out_dir;
  o.train.ckpt_dir = o.out + "/ckpt";
  o.eval.model_dir = o.capture.model_dir;
  o.eval.acts_dir = o.capture.out_dir;
  o.eval.compressor_path = o.out + "/compressor.safetensors";
  o.eval.out_dir = o.out + "/eval";
  return o;
}

// <out>/stages.json: for every completed stage, the settings it completed with.
json read_stages(const std::string& path) {
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "record");
  if (!text) return json::object();
  check_json_bounds(*text, path);
  const json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : json::object();
}

// Rank 0 logs what changed since the last run (run.json) and reads what earlier runs completed;
// every rank decides from the same record.
json read_completed_stages(const RunOptions& o, comm::Communicator& comm) {
  return comm::root_decides<json>(comm, [&] {
    auto log = log::get("run");
    const std::string run_json = o.out + "/run.json";
    if (fs::exists(run_json)) {
      const std::string before = files::read_whole_file(run_json);
      log->info("{} exists: the stages check their own settings against it", run_json);
      const auto diffs = checkpoint::config_differences(before, o.resolved.dump());
      if (!diffs.empty()) {
        std::string joined;
        for (const auto& d : diffs) joined += (joined.empty() ? "" : "; ") + d;
        log->info("settings changed since the last run of {}: {}", o.out, joined);
      }
    }
    return read_stages(o.out + "/stages.json");
  });
}

// The weights of model_dir, checked against config.json, as model::weights_fingerprint: what
// decides whether a recorded stage was run on this model.
std::string model_weights_fingerprint(const model::ModelConfig& model,
                                      const std::string& model_dir) {
  const auto weights = model::SafetensorsModel::open_dir(model_dir);
  model::validate_weights(model, weights, model_dir);
  return model::weights_fingerprint(model, weights);
}

// Rank 0 records the settings of a run its stages accepted (it completed, or stopped on a signal
// to be continued): a refused run leaves run.json as it was, and equal settings leave its bytes.
void write_run_json(const RunOptions& o, comm::Communicator& comm) {
  if (comm.rank() != 0) return;
  const std::string path = o.out + "/run.json", text = o.resolved.dump(2) + "\n";
  if (files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "record") != text) {
    files::write_file_atomic(path, text);
  }
}

// Every stage's settings, the cross-stage ones included (the training window against the
// captured seq_len, the eval lengths against the held-out sequences), checked by rank 0 before
// the first stage works; a refusal is every rank's.
void validate_stages(const RunOptions& o, const model::ModelConfig& model,
                     comm::Communicator& comm) {
  comm::root_decides(comm, std::function<void()>([&] {
                       try {
                         validate_capture_options(o.capture, comm.size());
                         validate_train_settings(o.train, model, o.capture.seq_len);
                         if (o.export_cskv) {
                           CSKV_CHECK_USAGE(o.train.cfg.quant == trainer::QuantMode::kUniform,
                                            "export_cskv: --quant waterfill codes cannot be "
                                            "exported to the reference CSKV format (a width and "
                                            "static range per latent channel); set "
                                            "export_cskv to false");
                           checkpoint::check_reference_plan(model, o.train.k_density,
                                                            o.train.v_density, o.train.budget);
                         }
                         if (o.want_eval) {
                           validate_eval_settings(o.eval, o.capture.seq_len,
                                                  o.capture.holdout_seqs);
                         }
                       } catch (const Error& e) {  // the message alone, on every rank
                         throw Error(e.kind(), e.message(), {}, /*collective=*/true);
                       }
                     }));
}

// 1. capture: skipped when recorded complete with these settings (a rerun may use another number
// of ranks); otherwise run_capture reuses complete shards and redoes the rest.
bool capture_stage(RunState& s, const model::ModelConfig& model, const std::string& fingerprint) {
  const CaptureOptions& co = s.o.capture;
  json settings = s.o.capture_identity;
  settings["model_config_hash"] = model.hash();
  settings["model_weights_fingerprint"] = fingerprint;
  s.tokens = (co.num_seqs + co.holdout_seqs) * co.seq_len;
  const auto t0 = Clock::now();
  if (s.recorded("capture", settings) && fs::exists(co.out_dir + "/stats.h5") &&
      fs::exists(co.out_dir + "/manifest.json")) {
    s.add("capture", "complete, skipped", 0);
    return true;
  }
  const auto cap = run_capture(co, *s.comm);
  if (cap.interrupted) return false;
  if (cap.already_complete) {
    s.add("capture", "complete, skipped", 0);
  } else {
    ++s.ran;
    s.add("capture",
          std::to_string(s.tokens) + " tokens captured (" + std::to_string(cap.tokens_captured) +
              " by rank 0)",
          seconds_since(t0));
  }
  s.mark_done("capture", settings);
  return true;
}

// 2. train: skipped when recorded complete with these settings and its outputs exist.
bool train_stage(RunState& s, const model::ModelConfig& model, const std::string& fingerprint) {
  const TrainRunOptions& to = s.o.train;
  s.train_settings = json::parse(resolved_config_json(to, model, fingerprint));
  if (s.recorded("train", s.train_settings) &&
      fs::exists(to.ckpt_dir + "/compressor.safetensors") &&
      fs::exists(to.ckpt_dir + "/metrics.json")) {
    s.add("train", "complete, skipped", 0);
    return true;
  }
  const auto t0 = Clock::now();
  const auto tr = run_training(to, *s.comm);
  if (tr.interrupted) return false;
  ++s.ran;
  s.metrics = tr.metrics;
  s.have_metrics = true;
  int64_t steps = 0;
  for (const auto& st : tr.states) steps += st.step;
  s.add("train",
        std::to_string(tr.states.size()) + " jobs, " + std::to_string(steps) + " steps" +
            (tr.resumed_from >= 0 ? " (resumed from step " + std::to_string(tr.resumed_from) + ")"
                                  : ""),
        seconds_since(t0));
  s.mark_done("train", s.train_settings);
  return true;
}

// 3. merge (rank 0 works, every rank learns what it did): the newest complete step into
// <out>/compressor.safetensors, and the .ckpt export when asked.
void merge_stage(RunState& s, const model::ModelConfig& model) {
  s.merge_settings = {
      {"train", s.train_settings}, {"export_cskv", s.o.export_cskv}, {"name", s.o.name}};
  const std::string merged = s.o.eval.compressor_path;
  if (s.recorded("merge", s.merge_settings) && fs::exists(merged)) {
    s.add("merge", "complete, skipped", 0);
    return;
  }
  const auto t0 = Clock::now();
  const std::string what = comm::root_decides<std::string>(*s.comm, [&] {
    const auto m = checkpoint::merge_checkpoint(s.o.train.ckpt_dir, merged);
    std::string w =
        std::to_string(m.jobs) + " jobs of step " + std::to_string(m.step) + " -> " + merged;
    if (s.o.export_cskv) {
      const auto files =
          checkpoint::export_for_reference(m.factors, json::parse(m.config_json), model,
                                           s.o.out + "/export", s.o.name, s.o.train.overwrite);
      w += ", exported " + files.k_path + " and " + files.v_path;
    }
    return w;
  });
  ++s.ran;
  s.add("merge", what, seconds_since(t0));
  s.mark_done("merge", s.merge_settings);
}

// 4. eval (all ranks share the sequences and layers): <out>/eval/report.*.
void eval_stage(RunState& s) {
  const EvalOptions& eo = s.o.eval;
  const json settings = {{"merge", s.merge_settings},
                         {"context", eo.context},
                         {"decode", eo.decode},
                         {"sequences", eo.max_sequences},
                         {"memory_contexts", eo.memory_contexts},
                         {"sink_tokens", eo.sink_tokens},
                         {"pareto", eo.pareto},
                         {"plots", eo.plots}};
  if (!s.o.want_eval) {
    s.add("eval", "off (--eval=false)", 0);
  } else if (s.recorded("eval", settings) && fs::exists(eo.out_dir + "/report.json")) {
    s.add("eval", "complete, skipped", 0);
    if (s.root) {
      s.headline = json::parse(files::read_whole_file(eo.out_dir + "/report.json"))
                       .value("headline", std::string());
    }
  } else {
    const auto t0 = Clock::now();
    const eval::EvalReport report = run_eval(eo, *s.comm);
    ++s.ran;
    s.headline = report.headline();
    s.add("eval", eo.out_dir + "/report.md", seconds_since(t0));
    s.mark_done("eval", settings);
  }
}

// The training metrics of a train stage that was skipped: <ckpt>/metrics.json.
void read_metrics(RunState& s) {
  const json m = json::parse(files::read_whole_file(s.o.train.ckpt_dir + "/metrics.json"));
  s.metrics.context = m.at("context").get<int64_t>();
  s.metrics.compressed_bytes = m.at("compressed_cache_bytes").get<double>();
  s.metrics.fp16_bytes = m.at("fp16_cache_bytes").get<double>();
  for (const auto& j : m.at("jobs")) {
    trainer::JobMetrics jm;
    jm.job.kind = j.at("kind") == "K" ? trainer::KvKind::kKey : trainer::KvKind::kValue;
    jm.holdout_error_q = j.at("holdout_error_quantized").get<double>();
    s.metrics.jobs.push_back(jm);
  }
}

struct SummaryNumbers {
  double ratio = 0, mean_k = 0, mean_v = 0, total_s = 0;
};

SummaryNumbers summary_numbers(const trainer::RunMetrics& metrics, double total_s) {
  double ek = 0, ev = 0;
  int nk = 0, nv = 0;
  for (const auto& j : metrics.jobs) {
    (j.job.kind == trainer::KvKind::kKey ? ek : ev) += j.holdout_error_q;
    (j.job.kind == trainer::KvKind::kKey ? nk : nv) += 1;
  }
  SummaryNumbers n;
  n.ratio = metrics.compressed_bytes > 0 ? metrics.fp16_bytes / metrics.compressed_bytes : 0;
  n.mean_k = nk ? ek / nk : 0.0;
  n.mean_v = nv ? ev / nv : 0.0;
  n.total_s = total_s;
  return n;
}

// summary.json; a run that performed no stage leaves an existing one as it is (README: a rerun
// with the same settings changes no output).
void write_summary_json(const RunState& s, const SummaryNumbers& n) {
  const std::string path = s.o.out + "/summary.json";
  if (s.ran == 0 && fs::exists(path)) return;
  json js;
  js["out"] = s.o.out;
  js["stages_run"] = s.ran;
  for (const auto& l : s.summary) js["stages"][l.name] = {{"what", l.what}, {"seconds", l.seconds}};
  js["tokens_captured"] = s.tokens;
  js["context"] = s.metrics.context;
  js["compressed_cache_bytes"] = s.metrics.compressed_bytes;
  js["fp16_cache_bytes"] = s.metrics.fp16_bytes;
  js["compression_ratio"] = n.ratio;
  js["mean_holdout_error_k"] = n.mean_k;
  js["mean_holdout_error_v"] = n.mean_v;
  js["seconds"] = n.total_s;
  if (!s.headline.empty()) js["eval_headline"] = s.headline;
  files::write_file_atomic(path, js.dump(2) + "\n");
}

std::string summary_text(const RunState& s, const SummaryNumbers& n) {
  std::ostringstream o;
  if (s.ran == 0) o << "nothing to do: every stage of " << s.o.out << " is complete\n";
  o << "summary (" << s.o.out << "):\n";
  for (const auto& l : s.summary) {
    o << "  " << l.name << std::string(9 - l.name.size(), ' ')
      << (l.seconds > 0 ? fmt_seconds(l.seconds) : std::string("-")) << "  " << l.what << "\n";
  }
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "  tokens   %lld captured (calibration + held-out)\n"
                "  cache    %.0f bytes vs %.0f fp16 at context %lld: %.2fx smaller\n"
                "  error    held-out relative error (quantized) mean K %.4g, mean V %.4g\n"
                "  total    %.1f s\n",
                static_cast<long long>(s.tokens), s.metrics.compressed_bytes, s.metrics.fp16_bytes,
                static_cast<long long>(s.metrics.context), n.ratio, n.mean_k, n.mean_v, n.total_s);
  o << buf;
  if (!s.headline.empty()) o << "  eval     " << s.headline << "\n";
  return o.str();
}

// The final summary (rank 0): stage times, tokens, compression (from the metrics of the run).
std::string summarize(RunState& s, Clock::time_point t_all) {
  if (!s.have_metrics) read_metrics(s);
  const SummaryNumbers n = summary_numbers(s.metrics, seconds_since(t_all));
  write_summary_json(s, n);
  return summary_text(s, n);
}

}  // namespace

RunResult run_job(const RunOptions& options, comm::Communicator& comm) {
  RunState s;
  s.o = with_layout(options);
  s.comm = &comm;
  s.root = comm.rank() == 0;
  const auto t_all = Clock::now();
  const model::ModelConfig model = model::load_config(s.o.capture.model_dir);
  validate_stages(s.o, model, comm);
  const auto lock = lock_output_dir(comm, s.o.out, "--out");  // held until the run returns
  const std::string fingerprint = model_weights_fingerprint(model, s.o.capture.model_dir);
  s.stages = read_completed_stages(s.o, comm);
  auto log = log::get("run");
  auto report = [&] {
    if (s.root) log->info("{}: {}", s.summary.back().name, s.summary.back().what);
  };
  const auto stopped = [&] {
    write_run_json(s.o, comm);
    return RunResult{true, ""};
  };
  RunResult result;
  if (!capture_stage(s, model, fingerprint)) return stopped();
  report();
  if (!train_stage(s, model, fingerprint)) return stopped();
  report();
  merge_stage(s, model);
  report();
  eval_stage(s);
  report();
  comm.barrier();
  write_run_json(s.o, comm);
  if (s.root) result.summary = summarize(s, t_all);
  return result;
}

}  // namespace cskv::pipeline
