// The setting tables of eval, the runtime and `cskv run` (capture's and train's come from
// pipeline/settings), their declaration as cxxopts flags and their JSON form.
#include "launch/settings.h"

#include <algorithm>

#include <sstream>

#include "comm/factory.h"
#include "common/error.h"

namespace cskv::cli {

namespace {
using json = nlohmann::json;
using T = SettingType;
using pipeline::in_range;
using pipeline::one_of;

// --backend: one of the communicators; mpi only under a launcher (alone it would be one rank of
// a world nobody else joins, which is --backend local).
void check_backend(const json& value, const std::string& flag) {
  one_of({"auto", "local", "mpi", "nccl"})(value, flag);
  CSKV_CHECK_USAGE(value.get<std::string>() != "mpi" || comm::detect_launcher().under_launcher,
                   "--" << flag
                        << " mpi: no MPI launcher started this process (mpirun, srun or "
                           "another PMI/PMIx launcher); start cskv under one, or use "
                           "--backend auto or local");
}
}  // namespace

const SettingTable& capture_settings() {
  static const SettingTable table = pipeline::settings_of(pipeline::capture_bound_settings());
  return table;
}

const SettingTable& train_settings() {
  static const SettingTable table = pipeline::settings_of(pipeline::train_bound_settings());
  return table;
}

std::vector<int64_t> parse_memory_contexts(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CSKV_CHECK_USAGE(used == item.size() && !item.empty() && v >= 1,
                     "--memory-contexts: expected comma-separated token counts >= 1, found '"
                         << item << "' in '" << text << "'");
    CSKV_CHECK_USAGE(v <= kMaxTokensPerSequence,
                     "--memory-contexts: " << v << " tokens asked; at most "
                                           << kMaxTokensPerSequence << " per context");
    out.push_back(v);
  }
  CSKV_CHECK_USAGE(!out.empty(), "--memory-contexts: expected at least one token count");
  return out;
}

SettingTable eval_settings(const std::string& prefix) {
  return {
      {"end to end", prefix + "context", T::kInt64, "0",
       "Prompt tokens before decoding (0 = held-out seq_len - decode - 1)",
       in_range(0, kMaxTokensPerSequence)},
      {"end to end", prefix + "decode", T::kInt64, "64", "Teacher-forced decode steps per sequence",
       in_range(1, kMaxTokensPerSequence)},
      {"end to end", prefix + "sequences", T::kInt64, "0", "Held-out sequences decoded (0 = all)",
       in_range(0, kMaxSequences)},
      {"cache", prefix + "sink-tokens", T::kInt64, "0",
       "The first tokens of a sequence every compressed layer keeps at full precision (attention "
       "sinks), ahead of the compressed tokens",
       in_range(0, kMaxTokensPerSequence)},
      {"report",
       prefix + "pareto",
       T::kBool,
       "false",
       "Also sweep budgets per job: held-out error vs bits per token of the closed-form uniform "
       "code (densities 1/8..1 x 2/4/8 bits) and of per-channel widths at the same bits, with the "
       "Gaussian bound (report.json 'pareto', pareto.png)",
       {}},
      {"memory", "memory-contexts", T::kString, "1024,2048,4096,8192,16384,32768",
       "Contexts (tokens) the caches are filled to and measured at; next to the smallest, also "
       "where the full-precision window is half full and one token short of full (the largest "
       "gives the headline ratio)",
       [](const json& v, const std::string&) { parse_memory_contexts(v.get<std::string>()); }},
  };
}

const SettingTable& runtime_settings() {
  static const SettingTable table = {
      {"runtime", "backend", T::kString, "auto",
       "Communicator: auto (MPI under mpirun/srun, else single process)|local|mpi|nccl",
       check_backend},
      {"runtime", "threads", T::kInt, "1",
       "Intra-op CPU threads per rank; part of the results' identity (fixed, not derived from the "
       "number of ranks)",
       in_range(1, kMaxThreads)},
      {"runtime",
       "log-dir",
       T::kString,
       "",
       "Also write every rank's log to <dir>/rank-<R>.log",
       {}},
  };
  return table;
}

const SettingTable& device_settings() {
  static const SettingTable table = {pipeline::device_setting("device")};
  return table;
}

const SettingTable& general_settings() {
  static const SettingTable table = {
      {"general",
       "log-level",
       T::kString,
       "info",
       "Log verbosity: trace|debug|info|warn|error|off",
       {}},
  };
  return table;
}

const SettingTable& overwrite_settings() {
  static const SettingTable table = {
      {"output",
       "overwrite",
       T::kBool,
       "false",
       "Replace what the output holds that this command otherwise refuses to touch: files cskv "
       "did not write, a capture or checkpoints made with other settings, checkpoint steps that "
       "cannot be read (train then starts from step 0)",
       {}},
  };
  return table;
}

const SettingTable& run_settings() {
  static const SettingTable table = [] {
    SettingTable t = general_settings();
    const SettingTable job = {
        {"job",
         "out",
         T::kString,
         std::nullopt,
         "Output directory of the whole run (required)",
         {}},
        {"job", "model", T::kString, std::nullopt, "HF model directory (required)", {}},
        {"job",
         "layers",
         T::kString,
         "all",
         "Layers to capture and train: all | 0-7 | 0,2,5",
         {},
         true},
        {"job", "seed", T::kUint64, "0", "Seed of the sampling and of the training", {}, true},
    };
    const SettingTable merge_and_eval = {
        {"merge",
         "export-cskv",
         T::kBool,
         "false",
         "Also write the reference .ckpt pair into <out>/export",
         {}},
        {"merge",
         "name",
         T::kString,
         "",
         "File-name prefix of the exported .ckpt files (empty: the reference code's own, "
         "density_k_<kd>_v_<vd>_quant_k_<kb>_v_<vb>_[asvd_][window_<w>_])",
         {}},
        {"eval",
         "eval",
         T::kBool,
         "true",
         "Run the evaluation stage (cskv eval) last; --eval=false skips it",
         {}},
        {"eval",
         "plots",
         T::kBool,
         "true",
         "Write the evaluation's PNG plots (needs gnuplot); --plots=false: tables only",
         {}},
    };
    // A setting two stages share (--device) is one flag of the run, for every stage.
    for (const auto* part : {&job, &capture_settings(), &train_settings(), &merge_and_eval}) {
      for (const Setting& row : *part) {
        const auto same =
            std::find_if(t.begin(), t.end(), [&](const Setting& s) { return s.flag == row.flag; });
        if (same == t.end()) {
          t.push_back(row);
          continue;
        }
        CSKV_CHECK(same->type == row.type && same->default_value == row.default_value &&
                       same->help == row.help,
                   "run settings: --" << row.flag << " is declared twice, differently");
      }
    }
    const SettingTable eval = eval_settings("eval-");
    t.insert(t.end(), eval.begin(), eval.end());
    t.insert(t.end(), overwrite_settings().begin(), overwrite_settings().end());
    t.insert(t.end(), runtime_settings().begin(), runtime_settings().end());
    return t;
  }();
  return table;
}

void add_settings(cxxopts::Options& options, const SettingTable& table) {
  for (const Setting& s : table) {
    std::shared_ptr<cxxopts::Value> value;
    switch (s.type) {
      case T::kBool:
        value = cxxopts::value<bool>();
        break;
      case T::kString:
        value = cxxopts::value<std::string>();
        break;
      case T::kDouble:
        value = cxxopts::value<double>();
        break;
      case T::kInt:
        value = cxxopts::value<int>();
        break;
      case T::kInt64:
        value = cxxopts::value<int64_t>();
        break;
      case T::kUint64:
        value = cxxopts::value<uint64_t>();
        break;
    }
    if (s.default_value) value->default_value(*s.default_value);
    options.add_options(s.group)(s.flag, s.help, value);
  }
}

void check_settings(const cxxopts::ParseResult& r, const SettingTable& table) {
  for (const Setting& s : table) {
    if (s.check && (r.count(s.flag) || s.default_value)) s.check(resolved_value(r, s), s.flag);
  }
}

json resolved_value(const cxxopts::ParseResult& r, const Setting& s) {
  if (!r.count(s.flag) && !r[s.flag].has_default()) return json();
  switch (s.type) {
    case T::kBool:
      return r[s.flag].as<bool>();
    case T::kString:
      return r[s.flag].as<std::string>();
    case T::kDouble:
      return r[s.flag].as<double>();
    case T::kInt:
      return r[s.flag].as<int>();
    case T::kInt64:
      return r[s.flag].as<int64_t>();
    case T::kUint64:
      return r[s.flag].as<uint64_t>();
  }
  return json();
}

}  // namespace cskv::cli
