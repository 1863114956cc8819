// The `cskv eval` stage driver: validate the inputs on every rank, plan the report, run the three
// measurements of eval/evaluation.h (each shared among the ranks), write the report on rank 0.
#include "pipeline/eval.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <utility>

#include "comm/collectives.h"
#include "comm/local_communicator.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "eval/compressor.h"
#include "eval/evaluation.h"
#include "eval/pareto.h"
#include "eval/report.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "pipeline/capture.h"
#include "trainer/group_overhead.h"

namespace cskv::pipeline {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string layer_list(const std::vector<int64_t>& layers) {
  std::string s;
  for (const int64_t l : layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s.empty() ? "none" : s;
}

// Everything the work needs, read and checked before any of it starts.
struct EvalInputs {
  model::ModelConfig config;
  std::shared_ptr<model::SafetensorsModel> weights;
  std::string fingerprint;  // model::weights_fingerprint of weights
  eval::Compressor comp;
  std::string hash;
  at::Tensor sequences;  // every held-out sequence, int64 [N, seq_len]
  int64_t seq_len = 0;
  int64_t context = 0;                // resolved --context
  int64_t n_seq = 0;                  // sequences used end to end
  std::vector<int64_t> contexts;      // memory contexts, ascending, unique
  int64_t headline_context = 0;       // the largest --memory-contexts: the headline's ratio
  std::vector<int64_t> uncompressed;  // layers without factors (plain fp16 cache)
};

// The contexts where the full-precision window of `window` tokens (counted after the sinks) is
// half full and one token short of full, from the last window boundary at or below `smallest`:
// every default context is a multiple of the window, where the window is empty and the ratio at
// its best. None without a window of at least 2 tokens.
std::vector<int64_t> partly_full_contexts(int64_t smallest, int64_t window, int64_t sinks) {
  if (window < 2 || smallest < sinks) return {};
  const int64_t boundary = smallest - (smallest - sinks) % window;
  return {boundary + window / 2, boundary + window - 1};
}

// --decode, --context, --sequences and --memory-contexts against the held-out sequences (and,
// next to the smallest memory context, those where the window is partly full).
void check_lengths(const EvalOptions& o, EvalInputs& in) {
  CSKV_CHECK_USAGE(o.decode >= 1, "--decode: expected >= 1, found " << o.decode);
  CSKV_CHECK_USAGE(o.context >= 0, "--context: expected >= 1 (or 0 = auto), found " << o.context);
  // --context 0 (auto) takes what --decode leaves, at least one prompt token.
  CSKV_CHECK_INPUT(o.context > 0 || o.decode + 2 <= in.seq_len,
                   "--decode " << o.decode << " needs at least " << o.decode + 2
                               << " tokens per held-out sequence (1 prompt token + " << o.decode
                               << " decoded + 1), but the held-out sequences of " << o.acts_dir
                               << " have " << in.seq_len
                               << " tokens (capture with a larger --seq-len, or lower --decode)");
  in.context = o.context > 0 ? o.context : in.seq_len - o.decode - 1;
  CSKV_CHECK_INPUT(in.context + o.decode + 1 <= in.seq_len,
                   "--context " << in.context << " + --decode " << o.decode
                                << " + 1 = " << in.context + o.decode + 1
                                << " tokens per sequence needed, but the held-out sequences of "
                                << o.acts_dir << " have " << in.seq_len
                                << " tokens (capture with a larger --seq-len, or lower "
                                   "--context/--decode)");
  const int64_t max_positions = in.config.max_position_embeddings;
  CSKV_CHECK_USAGE(max_positions == 0 || in.context + o.decode + 1 <= max_positions,
                   "--context " << in.context << " + --decode " << o.decode
                                << " + 1 = " << in.context + o.decode + 1
                                << " positions exceed the model's max_position_embeddings "
                                << max_positions << " (" << o.model_dir << "/config.json)");
  const int64_t available = in.sequences.size(0);
  in.n_seq = o.max_sequences > 0 ? std::min(o.max_sequences, available) : available;
  CSKV_CHECK_USAGE(o.max_sequences >= 0,
                   "--sequences: expected >= 0 (0 = all), found " << o.max_sequences);
  CSKV_CHECK_USAGE(!o.pareto || in.seq_len % eval::kParetoKeyWindow == 0,
                   "--pareto: its uniform points group keys in "
                       << eval::kParetoKeyWindow
                       << "-token windows, so the captured sequences must be a multiple of "
                       << eval::kParetoKeyWindow << " tokens long; those of " << o.acts_dir
                       << " have " << in.seq_len << " (capture with such a --seq-len)");
  in.contexts = o.memory_contexts;
  std::sort(in.contexts.begin(), in.contexts.end());
  in.contexts.erase(std::unique(in.contexts.begin(), in.contexts.end()), in.contexts.end());
  CSKV_CHECK_USAGE(!in.contexts.empty() && in.contexts.front() >= 1,
                   "--memory-contexts: expected positive token counts");
  in.headline_context = in.contexts.back();
  for (const int64_t c :
       partly_full_contexts(in.contexts.front(), in.comp.quant.window, in.comp.sink_tokens)) {
    if (std::find(in.contexts.begin(), in.contexts.end(), c) == in.contexts.end()) {
      in.contexts.insert(std::upper_bound(in.contexts.begin(), in.contexts.end(), c), c);
    }
  }
}

// The compressed layers must be in the held-out activations and in stats.h5.
void check_captured_layers(const EvalOptions& o, EvalInputs& in) {
  const data::ShardHeader holdout_header = [&] {
    for (const auto& e : data::read_manifest(o.acts_dir)) {
      if (e.split == "holdout") return data::read_shard_header(o.acts_dir + "/" + e.file);
    }
    return data::ShardHeader{};
  }();
  const auto stats = data::read_capture_stats_header(o.acts_dir, in.hash);
  std::vector<int64_t> missing_holdout, missing_stats;
  for (const auto& [layer, f] : in.comp.layers) {
    const auto& hl = holdout_header.layers;
    if (std::find(hl.begin(), hl.end(), layer) == hl.end()) missing_holdout.push_back(layer);
    if (std::find(stats.layers.begin(), stats.layers.end(), layer) == stats.layers.end()) {
      missing_stats.push_back(layer);
    }
  }
  CSKV_CHECK_INPUT(missing_holdout.empty(),
                   o.acts_dir << ": the held-out activations lack compressed layer(s) "
                              << layer_list(missing_holdout)
                              << " (captured: " << layer_list(holdout_header.layers)
                              << "); capture the layers the compressor was trained on");
  CSKV_CHECK_INPUT(missing_stats.empty(), o.acts_dir << "/stats.h5 lacks compressed layer(s) "
                                                     << layer_list(missing_stats));
  for (int64_t l = 0; l < in.config.num_hidden_layers; ++l) {
    if (!in.comp.layers.count(l)) in.uncompressed.push_back(l);
  }
}

// The compressor must have been trained on these weights: its __metadata__
// "model_weights_fingerprint" (which files from before cskv recorded it lack: a warning).
void check_compressor_weights(const EvalOptions& o, const EvalInputs& in) {
  const std::string& trained = in.comp.model_weights_fingerprint;
  if (trained.empty()) {
    log::get("eval")->warn(
        "{}: records no model_weights_fingerprint (written before cskv recorded the model's "
        "weights): cannot check that it was trained on the weights of {}",
        o.compressor_path, o.model_dir);
    return;
  }
  CSKV_CHECK_INPUT(trained == in.fingerprint,
                   o.compressor_path << ": trained on weights " << trained
                                     << ", but the weights of " << o.model_dir << " are "
                                     << in.fingerprint
                                     << " (same config.json, other weights: another model)");
}

// A grouping whose fp16 scale/zero make the codes larger than 16-bit latents: one warning each.
void warn_costly_groupings(const EvalOptions& o, const EvalInputs& in) {
  std::vector<trainer::LayerJob> jobs;
  for (const auto& [layer, f] : in.comp.layers) {
    jobs.emplace_back(layer, trainer::KvKind::kKey, f.r_k());
    jobs.emplace_back(layer, trainer::KvKind::kValue, f.r_v());
  }
  for (const auto& g : trainer::costly_groupings(in.config, in.comp.quant, jobs)) {
    log::get("eval")->warn("{}: {}", o.compressor_path, trainer::costly_grouping_message(g));
  }
}

// validate: every rank checks the same inputs (and fails the same way); rank 0's gnuplot check
// holds for all.
EvalInputs validate(const EvalOptions& o, comm::Communicator& comm) {
  EvalInputs in;
  in.config = model::load_config(o.model_dir);
  in.weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(o.model_dir));
  model::validate_weights(in.config, *in.weights, o.model_dir);
  in.fingerprint = model::weights_fingerprint(in.config, *in.weights);
  in.comp = eval::load_compressor(o.compressor_path, in.config);
  in.comp.sink_tokens = o.sink_tokens;
  check_compressor_weights(o, in);
  check_capture_weights(o.acts_dir, in.config.hash(), in.fingerprint);
  in.hash = in.config.hash();
  verify_capture_checksums(o.acts_dir, comm, "holdout");  // the only shards eval reads
  in.sequences = eval::read_holdout_tokens(o.acts_dir, in.hash);
  in.seq_len = in.sequences.size(1);
  check_lengths(o, in);
  check_captured_layers(o, in);
  if (comm.rank() == 0) warn_costly_groupings(o, in);
  comm::root_decides(comm, std::function<void()>([&] {
                       if (o.write_files && o.plots) eval::check_plotting();
                     }));
  return in;
}

// plan: the report's configuration part.
eval::EvalReport plan(const EvalOptions& o, const EvalInputs& in) {
  const eval::Compressor& comp = in.comp;
  eval::EvalReport r;
  r.model_dir = o.model_dir;
  r.acts_dir = o.acts_dir;
  r.compressor_path = o.compressor_path;
  r.model_config_hash = in.hash;
  r.num_layers = in.config.num_hidden_layers;
  r.k_bits = comp.quant.k_bits;
  r.v_bits = comp.quant.v_bits;
  r.group_size = comp.quant.group_size;
  r.window = comp.quant.window;
  r.quant_compat = comp.quant.quant_compat_cskv ? "cskv" : "none";
  r.quant = trainer::quant_mode_name(comp.quant.quant);
  r.sink_tokens = comp.sink_tokens;
  r.cache_dtype = o.cache_storage == at::kHalf ? "float16" : "float32";
  r.uncompressed_layers = in.uncompressed;
  return r;
}

// work (a): per-layer errors (layer i of the compressed ones on rank i mod W) and their means.
void work_layer_errors(const EvalOptions& o, const EvalInputs& in,
                       const model::SafetensorsModel& weights, at::Device device,
                       eval::EvalReport& r, comm::Communicator& comm) {
  r.layers = eval::evaluate_layers(weights, in.config, in.comp, o.acts_dir, in.seq_len,
                                   o.cache_storage, device, comm);
  const double nl = static_cast<double>(r.layers.size());
  for (const eval::LayerEval& le : r.layers) {
    r.mean_k_error += le.k_error / nl;
    r.mean_v_error += le.v_error / nl;
    r.mean_k_floor += le.k_floor / nl;
    r.mean_v_floor += le.v_floor / nl;
  }
  log::get("eval")->info("layer errors: mean K {:.4g} (floor {:.4g}), mean V {:.4g} (floor {:.4g})",
                         r.mean_k_error, r.mean_k_floor, r.mean_v_error, r.mean_v_floor);
}

// work (b): end to end over the first n_seq held-out sequences (shared among the ranks).
void work_end_to_end(const EvalOptions& o, const EvalInputs& in, const model::LlamaModel& model,
                     eval::EvalReport& r, comm::Communicator& comm) {
  r.end_to_end = eval::evaluate_end_to_end(model, in.comp, in.sequences.narrow(0, 0, in.n_seq),
                                           in.context, o.decode, o.cache_storage, comm);
  log::get("eval")->info(
      "end-to-end: mean KL {:.4g} (fp16 cache {:.4g}), perplexity {:.4g} -> {:.4g}",
      r.end_to_end.kl_mean, r.end_to_end.kl_fp16_cache, r.end_to_end.ppl_original,
      r.end_to_end.ppl_compressed);
}

// work (c): memory at each context (layers shared among the ranks); the ratio at the largest.
void work_memory(const EvalOptions& o, const EvalInputs& in, const model::LlamaModel& model,
                 eval::EvalReport& r, comm::Communicator& comm) {
  r.memory = eval::measure_memory(model, in.comp, o.acts_dir, in.contexts, o.cache_storage, comm);
  const auto headline = std::find_if(r.memory.begin(), r.memory.end(), [&](const auto& m) {
    return m.context == in.headline_context;
  });
  CSKV_CHECK(headline != r.memory.end(), "no memory row at " << in.headline_context << " tokens");
  r.compression_ratio = headline->ratio;
  r.compression_ratio_context = headline->context;
  for (const auto& m : r.memory) {
    if (o.cache_storage == at::kHalf &&
        (static_cast<double>(m.compressed_measured) != m.compressed_formula ||
         static_cast<double>(m.fp16_measured) != m.fp16_formula)) {
      log::get("eval")->warn("memory at {} tokens: measured {} / {} bytes, formula {} / {}",
                             m.context, m.compressed_measured, m.fp16_measured,
                             m.compressed_formula, m.fp16_formula);
    }
  }
}

// work (d), --pareto: the budget sweep of every compressed layer's K and V (jobs shared among
// the ranks).
void work_pareto(const EvalOptions& o, const EvalInputs& in, eval::EvalReport& r,
                 comm::Communicator& comm) {
  if (!o.pareto) return;
  std::vector<int64_t> layers;
  for (const auto& [l, f] : in.comp.layers) layers.push_back(l);
  r.pareto =
      eval::pareto_sweep(in.weights, in.config, o.acts_dir, layers, eval::ParetoGrid{}, comm);
}

// write: rank 0 writes the report; every rank waits for it.
void write(const EvalOptions& o, const eval::EvalReport& r, comm::Communicator& comm) {
  if (comm.rank() == 0 && o.write_files) eval::write_report(r, o.out_dir, o.plots);
  comm.barrier();
  log::get("eval")->info("eval done in {:.1f} s: {}", r.seconds, r.headline());
}

// The report files in out_dir must be cskv's (or --overwrite), checked by rank 0 for every rank.
void check_eval_outputs(const EvalOptions& o, comm::Communicator& comm) {
  refuse_foreign_outputs(
      comm, o.out_dir, [&] { return eval_outputs(o.out_dir); }, o.overwrite, "--out");
}

// The phases in order; inputs_ok is set once validate has passed (errors after it are not
// input errors).
eval::EvalReport run_eval_checked(const EvalOptions& o, comm::Communicator& comm, bool& inputs_ok) {
  const at::NoGradGuard no_grad;
  const auto t0 = Clock::now();
  const EvalInputs in = validate(o, comm);
  std::optional<files::DirectoryLock> lock;  // held until the report is written
  if (o.write_files) {
    lock = lock_output_dir(comm, o.out_dir, "--out");
    check_eval_outputs(o, comm);
  }
  inputs_ok = true;
  if (!in.uncompressed.empty()) {
    log::get("eval")->warn("{}: no factors for layer(s) {}; they keep a plain fp16 cache",
                           o.compressor_path, layer_list(in.uncompressed));
  }
  const auto& weights = in.weights;
  const at::Device device = device::select(o.device, comm.local_rank());
  model::LlamaModel model(in.config, weights, at::kFloat, device);
  model.keep_converted_layers(true);  // decoding runs every layer once per token
  eval::EvalReport r = plan(o, in);
  work_layer_errors(o, in, *weights, device, r, comm);
  work_end_to_end(o, in, model, r, comm);
  work_memory(o, in, model, r, comm);
  work_pareto(o, in, r, comm);
  r.seconds = since(t0);
  write(o, r, comm);
  return r;
}

}  // namespace

std::vector<OwnedOutput> eval_outputs(const std::string& out_dir) {
  const auto report_ours = [](const std::string& p) {
    return is_json_object_with(p, {"model", "compressor", "model_config_hash", "headline"});
  };
  const bool have_report = report_ours(out_dir + "/report.json");
  const auto beside_report = [have_report](const std::string&) { return have_report; };
  std::vector<OwnedOutput> out = {
      {"report.json", report_ours, "a cskv eval report"},
      {"report.md",
       [](const std::string& p) { return starts_with_text(p, "# KV-cache compression report\n"); },
       "a cskv eval report"},
      {"plots.gp", beside_report, "a plot script beside a cskv report.json"},
      {"plots.log", beside_report, "a gnuplot log beside a cskv report.json"}};
  for (const char* png : eval::kReportPlots) {
    out.push_back({png, beside_report, "a plot beside a cskv report.json"});
  }
  out.push_back({eval::kParetoPlot, beside_report, "a plot beside a cskv report.json"});
  return out;
}

void validate_eval_settings(const EvalOptions& o, int64_t holdout_seq_len, int64_t holdout_seqs) {
  CSKV_CHECK_USAGE(holdout_seqs >= 1,
                   "--holdout-seqs 0 leaves no held-out split to evaluate on "
                   "(capture at least 1, or turn the eval stage off)");
  EvalInputs in;
  in.seq_len = holdout_seq_len;
  in.sequences = at::empty({holdout_seqs, 0}, at::kLong);  // only its count is read
  check_lengths(o, in);
  if (o.write_files && o.plots) eval::check_plotting();
}

eval::EvalReport run_eval(const EvalOptions& o) {
  comm::LocalCommunicator local;
  return run_eval(o, local);
}

eval::EvalReport run_eval(const EvalOptions& o, comm::Communicator& comm) {
  // Every rank checks the same inputs and fails the same way, so an input error is collective:
  // printed once, by rank 0 (launch/cli.cpp), instead of by every rank.
  bool inputs_ok = false;
  try {
    return run_eval_checked(o, comm, inputs_ok);
  } catch (const Error& e) {
    if (inputs_ok || e.collective()) throw;
    throw Error(e.kind(), e.message(), e.where(), /*collective=*/true);
  }
}

}  // namespace cskv::pipeline
