// The setting tables of capture, train, eval, the runtime and `cskv run`, their checks, their
// declaration as cxxopts flags, their JSON form, and the dtype vocabulary shared by every command.
#include "launch/settings.h"

#include <sstream>

#include "comm/factory.h"
#include "common/error.h"
#include "data/token_source.h"
#include "trainer/init.h"

namespace cskv::cli {

namespace {

using json = nlohmann::json;
using T = SettingType;
using Check = std::function<void(const cxxopts::ParseResult&, const std::string&)>;

Check one_of(std::vector<std::string> choices) {
  return [choices](const cxxopts::ParseResult& r, const std::string& flag) {
    const auto v = r[flag].as<std::string>();
    std::string list;
    for (const auto& c : choices) {
      if (v == c) return;
      list += (list.empty() ? "" : "|") + c;
    }
    CSKV_FAIL_USAGE("--" << flag << ": expected " << list << ", found '" << v << "'");
  };
}

// Integers in [lo, hi]: "--epochs: expected an integer in [1, 100000], found -1".
template <typename V>
Check in_range(V lo, V hi) {
  return [lo, hi](const cxxopts::ParseResult& r, const std::string& flag) {
    const V v = r[flag].as<V>();
    CSKV_CHECK_USAGE(v >= lo && v <= hi, "--" << flag << ": expected an integer in [" << lo << ", "
                                              << hi << "], found " << v);
  };
}

// Numbers in (lo, hi] (lo_open) or [lo, hi]: "--lr: expected a value in (0, 1], found -1".
Check number_in(double lo, double hi, bool lo_open) {
  return [lo, hi, lo_open](const cxxopts::ParseResult& r, const std::string& flag) {
    const double v = r[flag].as<double>();
    CSKV_CHECK_USAGE((lo_open ? v > lo : v >= lo) && v <= hi,
                     "--" << flag << ": expected a value in " << (lo_open ? "(" : "[") << lo
                          << ", " << hi << "], found " << v);
  };
}

// --tokenizer only means something with --text (with --tokens it would be silently ignored).
void check_tokenizer(const cxxopts::ParseResult& r, const std::string& flag) {
  CSKV_CHECK_USAGE(r[flag].as<std::string>().empty() || !r["text"].as<std::string>().empty(),
                   "--" << flag
                        << " is only used with --text (the token ids of --tokens are "
                           "already tokenized)");
}

// --backend: one of the communicators; mpi only under a launcher (alone it would be one rank of
// a world nobody else joins, which is --backend local).
void check_backend(const cxxopts::ParseResult& r, const std::string& flag) {
  one_of({"auto", "local", "mpi", "nccl"})(r, flag);
  CSKV_CHECK_USAGE(r[flag].as<std::string>() != "mpi" || comm::detect_launcher().under_launcher,
                   "--" << flag
                        << " mpi: no MPI launcher started this process (mpirun, srun or "
                           "another PMI/PMIx launcher); start cskv under one, or use "
                           "--backend auto or local");
}

void check_bits(const cxxopts::ParseResult& r, const std::string& flag) {
  const int b = r[flag].as<int>();
  CSKV_CHECK_USAGE(b == 2 || b == 3 || b == 4 || b == 8 || b == 16,
                   "--" << flag << ": expected one of 2, 3, 4, 8, 16, found " << b);
}

void check_budget(const cxxopts::ParseResult& r, const std::string& flag) {
  const double b = r[flag].as<double>();
  CSKV_CHECK_USAGE(b >= 0 && b <= 1,
                   "--" << flag << ": expected a value in (0, 1] (or 0 = off), found " << b);
}

void check_capture_dtype(const cxxopts::ParseResult& r, const std::string& flag) {
  float_dtype_setting(flag, r[flag].as<std::string>(), {FloatDtype::kF32, FloatDtype::kF16});
}

}  // namespace

const SettingTable& capture_settings() {
  static const SettingTable table = {
      {"input", "tokens", T::kString, "", "Flat little-endian token file", {}, true},
      {"input", "token-dtype", T::kString, "u16", "Width of --tokens ids: u16|u32",
       [](const cxxopts::ParseResult& r, const std::string& f) {
         data::parse_token_dtype(r[f].as<std::string>());
       },
       true},
      {"input",
       "text",
       T::kString,
       "",
       "UTF-8 text file to tokenize instead of --tokens",
       {},
       true},
      {"input", "tokenizer", T::kString, "", "SentencePiece tokenizer.model for --text",
       check_tokenizer, true},
      {"sampling", "num-seqs", T::kInt64, "256", "Training sequences",
       in_range<int64_t>(1, kMaxSequences), true},
      {"sampling", "seq-len", T::kInt64, "2048", "Tokens per sequence",
       in_range<int64_t>(2, kMaxTokensPerSequence), true},
      {"sampling", "holdout-seqs", T::kInt64, "16",
       "Held-out sequences for evaluation (stored apart, not in the statistics)",
       in_range<int64_t>(0, kMaxSequences), true},
      {"sampling", "sampling", T::kString, "random",
       "random (uniform offsets, the paper's way) | contiguous (chunks 0, L, 2L, ...)",
       [](const cxxopts::ParseResult& r, const std::string& f) {
         data::parse_sampling(r[f].as<std::string>());
       },
       true},
      {"capture", "dtype", T::kString, "fp16",
       "Stored activation dtype: f32|f16 (also fp32, float32, float, fp16, float16, half)",
       check_capture_dtype, true},
      {"capture", "batch", T::kInt64, "1", "Sequences per forward pass",
       in_range<int64_t>(1, 4096)},
      {"capture",
       "device",
       T::kString,
       "cpu",
       "cpu (float32 compute) | cuda (bfloat16 compute on GPU <local rank mod GPUs>; needs a "
       "LibTorch with CUDA)",
       {}},
  };
  return table;
}

// The factors: ranks, initialisation, quantization.
static SettingTable train_factor_settings() {
  return {
      {"ranks", "k-density", T::kDouble, "0.5",
       "Key latent width as a share of D: r = floor(density*hd)*n_kv", number_in(0, 1, true)},
      {"ranks", "v-density", T::kDouble, "0.5", "Value latent width (same rule)",
       number_in(0, 1, true)},
      {"ranks", "budget", T::kDouble, "0",
       "Instead of densities: keep this share of the total K+V width, allocated per layer by "
       "greedy marginal eigenvalue gain (0 = off)",
       check_budget},
      {"ranks", "rank-multiple", T::kInt64, "0", "Budget granularity in channels (0 = n_kv*8)",
       in_range<int64_t>(0, kMaxChannels)},
      {"init", "init", T::kString, "pca", "Initialisation: pca (exact 16-bit optimum) | asvd | svd",
       [](const cxxopts::ParseResult& r, const std::string& f) {
         trainer::parse_init_method(r[f].as<std::string>());
       }},
      {"init", "asvd-alpha", T::kDouble, "0.5", "ASVD exponent alpha of S = diag(mean|x|^alpha)",
       number_in(0, 4, false)},
      {"init", "rotate", T::kString, "none",
       "Latent rotation: none | hadamard (seeded randomized Hadamard)",
       one_of({"none", "hadamard"})},
      {"quantization", "k-bits", T::kInt, "16", "Key latent bits: 2|3|4|8|16 (16 = off)",
       check_bits},
      {"quantization", "v-bits", T::kInt, "16", "Value latent bits: 2|3|4|8|16", check_bits},
      {"quantization", "group-size", T::kInt64, "0",
       "Latent channels per quantization group (0 = r/n_kv)", in_range<int64_t>(0, kMaxChannels)},
      {"quantization", "window", T::kInt64, "32",
       "Full-precision recent window; keys are quantized per channel over groups of this many "
       "tokens (0 = per-token key groups, no window)",
       in_range<int64_t>(0, kMaxTokensPerSequence)},
      {"quantization", "quant-compat", T::kString, "none",
       "none | cskv (reference code: zero point clamped to [0, 2^b-1])", one_of({"none", "cskv"})},
  };
}

// The optimizer, the checkpoints and the accounting context.
static SettingTable train_loop_settings() {
  return {
      {"optimizer", "lr", T::kDouble, "5e-05", "AdamW learning rate (linear decay)",
       number_in(0, 1, true)},
      {"optimizer", "warmup", T::kInt64, "0", "Linear warmup steps",
       in_range<int64_t>(0, kMaxSteps)},
      {"optimizer", "steps", T::kInt64, "0",
       "Optimizer steps per job (0 = --epochs passes over the training split)",
       in_range<int64_t>(0, kMaxSteps)},
      {"optimizer", "epochs", T::kInt64, "1", "Passes over the training split when --steps is 0",
       in_range<int64_t>(1, kMaxEpochs)},
      {"optimizer", "batch-tokens", T::kInt64, "4096", "Tokens per optimizer step",
       in_range<int64_t>(1, int64_t{1} << 30)},
      {"checkpoints", "save-every", T::kInt64, "500",
       "Checkpoint every this many optimizer steps (of any rank; also when a job finishes and "
       "on SIGTERM/SIGUSR1/SIGINT); 0 = only then",
       in_range<int64_t>(0, kMaxSteps)},
      {"checkpoints", "keep", T::kInt64, "2", "Complete checkpoint steps to keep",
       in_range<int64_t>(1, 1000)},
      {"checkpoints", "dp", T::kInt, "0",
       "Ranks per job (data parallelism inside a job: batch slices, gradient allreduce); 0 = "
       "auto: 1, or ranks/jobs when there are more ranks than jobs",
       in_range<int>(0, kMaxRanks)},
      {"output", "context", T::kInt64, "4096", "Context length the memory accounting is stated at",
       in_range<int64_t>(1, kMaxMemoryContext)},
  };
}

const SettingTable& train_settings() {
  static const SettingTable table = [] {
    SettingTable t = train_factor_settings();
    for (auto& row : train_loop_settings()) t.push_back(std::move(row));
    return t;
  }();
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
       in_range<int64_t>(0, kMaxTokensPerSequence)},
      {"end to end", prefix + "decode", T::kInt64, "64", "Teacher-forced decode steps per sequence",
       in_range<int64_t>(1, kMaxTokensPerSequence)},
      {"end to end", prefix + "sequences", T::kInt64, "0", "Held-out sequences decoded (0 = all)",
       in_range<int64_t>(0, kMaxSequences)},
      {"memory", "memory-contexts", T::kString, "1024,2048,4096,8192,16384,32768",
       "Contexts (tokens) the caches are filled to and measured at",
       [](const cxxopts::ParseResult& r, const std::string& f) {
         parse_memory_contexts(r[f].as<std::string>());
       }},
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
       in_range<int>(1, kMaxThreads)},
      {"runtime",
       "log-dir",
       T::kString,
       "",
       "Also write every rank's log to <dir>/rank-<R>.log",
       {}},
  };
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
        {"merge", "name", T::kString, "cskv", "File-name prefix of the exported .ckpt files", {}},
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
    for (const auto* part : {&job, &capture_settings(), &train_settings(), &merge_and_eval}) {
      t.insert(t.end(), part->begin(), part->end());
    }
    const SettingTable eval = eval_settings("eval-");
    t.insert(t.end(), eval.begin(), eval.end());
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
    if (s.check && (r.count(s.flag) || s.default_value)) s.check(r, s.flag);
  }
}

std::string key_of(const std::string& flag) {
  std::string k = flag;
  for (auto& c : k) c = c == '-' ? '_' : c;
  return k;
}

std::string flag_of(const std::string& key) {
  std::string f = key;
  for (auto& c : f) c = c == '_' ? '-' : c;
  return f;
}

const char* json_type_name(SettingType type) {
  switch (type) {
    case T::kBool:
      return "true or false";
    case T::kString:
      return "a string";
    case T::kDouble:
      return "a number";
    case T::kInt:
    case T::kInt64:
      return "an integer";
    case T::kUint64:
      return "a non-negative integer";
  }
  return "?";
}

bool json_value_fits(SettingType type, const json& value) {
  switch (type) {
    case T::kBool:
      return value.is_boolean();
    case T::kString:
      return value.is_string();
    case T::kDouble:
      return value.is_number();
    case T::kInt:
    case T::kInt64:
      return value.is_number_integer();
    case T::kUint64:
      return value.is_number_unsigned();
  }
  return false;
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

std::optional<FloatDtype> parse_float_dtype(const std::string& text) {
  if (text == "f32" || text == "fp32" || text == "float32" || text == "float") {
    return FloatDtype::kF32;
  }
  if (text == "f16" || text == "fp16" || text == "float16" || text == "half") {
    return FloatDtype::kF16;
  }
  if (text == "bf16" || text == "bfloat16") return FloatDtype::kBF16;
  return std::nullopt;
}

const char* float_dtype_name(FloatDtype dtype) {
  switch (dtype) {
    case FloatDtype::kF32:
      return "f32";
    case FloatDtype::kF16:
      return "f16";
    case FloatDtype::kBF16:
      return "bf16";
  }
  return "?";
}

FloatDtype float_dtype_setting(const std::string& flag, const std::string& text,
                               const std::vector<FloatDtype>& allowed) {
  const auto dtype = parse_float_dtype(text);
  std::string list;
  for (const FloatDtype d : allowed) {
    if (dtype == d) return d;
    list += (list.empty() ? "" : "|") + std::string(float_dtype_name(d));
  }
  CSKV_FAIL_USAGE("--" << flag << ": expected " << list << ", found '" << text << "'");
}

}  // namespace cskv::cli
