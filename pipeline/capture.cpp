// The capture stage in named phases: validate → plan (rank 0's verdict on --out) → resume →
// work (the forward; a hook writes this rank's shards) → share (statistics) → write (stats.h5).
#include "pipeline/capture.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "comm/collectives.h"
#include "common/config_diff.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/json_bounds.h"
#include "common/log.h"
#include "common/output_dir.h"
#include "common/progress.h"
#include "common/stop_signal.h"
#include "data/activation_reader.h"
#include "data/capture_identity.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "model/attention.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/weights.h"
#include "pipeline/sequence_plan.h"
#include "pipeline/settings.h"
#include "pipeline/stage_outputs.h"

namespace cskv::pipeline {

using namespace cskv::data;  // the stage is built from data/ throughout

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<int64_t> parse_layer_list(const std::string& spec, int64_t num_layers) {
  std::set<int64_t> out;
  CSKV_CHECK_USAGE(!spec.empty(),
                   "--layers: expected all, a range like '0-7' or a list like "
                   "'0,2,5', found ''");
  if (spec == "all") {
    for (int64_t l = 0; l < num_layers; ++l) out.insert(l);
    return {out.begin(), out.end()};
  }
  std::stringstream ss(spec);
  std::string part;
  auto parse_int = [&](const std::string& s) -> int64_t {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CSKV_CHECK_USAGE(used == s.size() && !s.empty() && v >= 0,
                     "--layers: expected a list like '0-7' or '0,2,5', found '" << spec << "'");
    return v;
  };
  while (std::getline(ss, part, ',')) {
    const auto dash = part.find('-');
    int64_t lo, hi;
    if (dash == std::string::npos) {
      lo = hi = parse_int(part);
    } else {
      lo = parse_int(part.substr(0, dash));
      hi = parse_int(part.substr(dash + 1));
    }
    CSKV_CHECK_USAGE(lo <= hi, "--layers: range '" << part << "' is empty");
    CSKV_CHECK_USAGE(hi < num_layers, "--layers: layer " << hi << " does not exist (the model has "
                                                         << num_layers << " layers)");
    for (int64_t l = lo; l <= hi; ++l) out.insert(l);
  }
  return {out.begin(), out.end()};
}

void check_tokenizer_use(const CaptureOptions& o) {
  CSKV_CHECK_USAGE(o.tokenizer_path.empty() || !o.text_path.empty() || !o.holdout_text_path.empty(),
                   "--tokenizer is only used with --text (the token ids of --tokens are already "
                   "tokenized)");
  if (!o.tokenizer_path.empty()) data::tokenizer_kind(o.tokenizer_path);
}

std::string capture_config_json(const CaptureOptions& o, const std::string& model_hash,
                                const std::string& weights_fingerprint, int64_t token_stream_size,
                                int64_t holdout_stream_size, int world_size) {
  nlohmann::json j = settings_identity(capture_bound_settings(), o);
  // What the command's own flags, the model, the format and the run decide besides the table.
  j["format_version"] = kShardFormatVersion;
  j["model_config_hash"] = model_hash;
  j["model_weights_fingerprint"] = weights_fingerprint;
  j["token_stream_size"] = token_stream_size;
  if (holdout_stream_size >= 0) j["holdout_stream_size"] = holdout_stream_size;
  j["seed"] = o.seed;
  j["layers"] = o.layers;
  j["world_size"] = world_size;
  return j.dump(2);
}

void check_capture_weights(const std::string& acts_dir, const std::string& config_hash,
                           const std::string& weights_fingerprint) {
  const std::string path = acts_dir + "/capture.json";
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "capture");
  CSKV_CHECK_INPUT(text, path << " is missing: cannot tell which model's weights the activations "
                                 "come from; capture again (cskv capture --out "
                              << acts_dir << " --overwrite)");
  check_json_bounds(*text, path);
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(j.is_object(), path << ": expected a JSON object written by `cskv capture`");
  // Another config: stats.h5 and every shard record the config hash and their readers refuse
  // it, naming the file; the weights are compared only between models of the same config.
  const auto hash = j.find("model_config_hash");
  if (hash != j.end() && hash->is_string() && hash->get<std::string>() != config_hash) return;
  const auto it = j.find("model_weights_fingerprint");
  CSKV_CHECK_INPUT(it != j.end() && it->is_string(),
                   path << " records no model_weights_fingerprint (a capture from before cskv "
                           "recorded the model's weights); capture again (cskv capture --out "
                        << acts_dir << " --overwrite)");
  CSKV_CHECK_INPUT(it->get<std::string>() == weights_fingerprint,
                   acts_dir << " holds activations of other weights (captured from weights "
                            << it->get<std::string>() << ", the model's are " << weights_fingerprint
                            << "); capture this model into another --out");
}

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string stats_path(const std::string& dir) { return dir + "/stats.h5"; }

// Whether name is one a capture writes (shards, manifest, stats, capture.json, their temps).
bool is_capture_file_name(const std::string& name) {
  return name.rfind("shard-", 0) == 0 || name.rfind("holdout-", 0) == 0 ||
         name.rfind("manifest.json", 0) == 0 || name.rfind("stats.h5", 0) == 0 ||
         name.rfind("capture.json", 0) == 0 || name == ".manifest.lock";
}

// Removes everything a capture writes from dir.
void remove_capture_outputs(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    if (is_capture_file_name(e.path().filename().string())) fs::remove(e.path());
  }
}

// Capture files in dir without the capture.json that says which settings made them (a user's
// files, or a capture whose record was deleted): refused, since reusing them would relabel them
// with this run's settings and replacing them would destroy them.
void refuse_unrecorded_capture_files(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (is_capture_file_name(name) && name != ".manifest.lock") found.push_back(name);
  }
  if (found.empty()) return;
  std::sort(found.begin(), found.end());
  files::refuse_foreign_file(dir + "/" + found.front(),
                             dir + " has no capture.json recording which capture wrote it",
                             "--out");
}

// Adds or replaces one shard's entry under an exclusive lock, keeping entries sorted by file
// name, so ranks finishing at the same moment never lose each other's entries.
void add_to_manifest(const std::string& dir, const ManifestEntry& entry) {
  const std::string lock_path = dir + "/.manifest.lock";
  const int fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  CSKV_CHECK(fd >= 0, lock_path << ": cannot open: " << std::strerror(errno));
  struct Unlock {
    int fd;
    ~Unlock() {
      ::flock(fd, LOCK_UN);
      ::close(fd);
    }
  } unlock{fd};
  CSKV_CHECK(::flock(fd, LOCK_EX) == 0, lock_path << ": cannot lock: " << std::strerror(errno));
  std::vector<ManifestEntry> entries;
  if (fs::exists(manifest_path(dir))) entries = read_manifest(dir);
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [&](const ManifestEntry& e) { return e.file == entry.file; }),
                entries.end());
  entries.push_back(entry);
  std::sort(entries.begin(), entries.end(),
            [](const ManifestEntry& a, const ManifestEntry& b) { return a.file < b.file; });
  write_manifest(dir, entries);
}

// Global sequence ids of one rank: the contiguous range [count·r/W, count·(r+1)/W) after base.
// Shards sort by rank in the manifest, so the concatenated split is in sequence-id order for any
// number of ranks: training batches and statistics do not depend on W.
std::vector<int64_t> contiguous_ids(int64_t base, int64_t count, int rank, int world) {
  std::vector<int64_t> ids;
  for (int64_t i = count * rank / world; i < count * (rank + 1) / world; ++i) {
    ids.push_back(base + i);
  }
  return ids;
}

// The shard files a capture on `world` ranks writes, in manifest order per rank.
std::vector<std::string> expected_shard_files(int world, bool holdout) {
  std::vector<std::string> files;
  for (int r = 0; r < world; ++r) {
    files.push_back(shard_file_name(r, world, "train"));
    if (holdout) files.push_back(shard_file_name(r, world, "holdout"));
  }
  return files;
}

// The shards a manifest lists: a listed shard counts as complete when its file is there with
// the recorded size.
class ShardLedger {
 public:
  ShardLedger(const std::string& out_dir, bool read_listed) : out_dir_(out_dir) {
    if (!read_listed) return;
    for (auto& e : read_manifest(out_dir_)) listed_[e.file] = e;
  }
  bool is_complete(const std::string& file) const {
    const auto it = listed_.find(file);
    if (it == listed_.end()) return false;
    std::error_code ec;
    const auto size = fs::file_size(out_dir_ + "/" + file, ec);
    return !ec && size == it->second.bytes;
  }
  // stats.h5 is there and every one of files is complete.
  bool capture_complete(const std::vector<std::string>& files) const {
    if (!fs::exists(stats_path(out_dir_))) return false;
    return std::all_of(files.begin(), files.end(),
                       [&](const std::string& f) { return is_complete(f); });
  }

 private:
  std::string out_dir_;
  std::map<std::string, ManifestEntry> listed_;
};

// Whether out_dir holds stats.h5 and every shard a capture on `world` ranks writes, listed in
// the manifest with its recorded size.
bool complete_on(const std::string& out_dir, int world, bool holdout) {
  if (world < 1 || !fs::exists(stats_path(out_dir)) || !fs::exists(manifest_path(out_dir))) {
    return false;
  }
  return ShardLedger(out_dir, /*read_listed=*/true)
      .capture_complete(expected_shard_files(world, holdout));
}

// Refuses, before writing, a file that cannot fit: `bytes` (the data alone, a lower bound) more
// than the file system holding dir has free for us.
void check_free_space(const std::string& dir, const std::string& file, uint64_t bytes,
                      const std::string& what) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return;  // unknown: the write itself will tell
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  CSKV_CHECK(bytes <= free_bytes, file << ": needs at least " << bytes << " bytes (" << what
                                       << "), but the file system holding " << dir << " has "
                                       << free_bytes << " bytes free");
}

// ---- validate ------------------------------------------------------------------------------

// --holdout-tokens / --holdout-text: at most one, tokenized like --text, and only with held-out
// sequences to take from it.
void check_holdout_corpus(const CaptureOptions& opt) {
  const bool tokens = !opt.holdout_tokens_path.empty(), text = !opt.holdout_text_path.empty();
  CSKV_CHECK_USAGE(!(tokens && text), "give at most one of --holdout-tokens or --holdout-text");
  CSKV_CHECK_USAGE(
      !text || !opt.tokenizer_path.empty(),
      "--holdout-text needs --tokenizer (a SentencePiece tokenizer.model or a tokenizer.json)");
  CSKV_CHECK_USAGE(!(tokens || text) || opt.holdout_seqs > 0,
                   (tokens ? "--holdout-tokens" : "--holdout-text")
                       << " is only used with --holdout-seqs > 0 (found 0)");
}

void validate_options(const CaptureOptions& opt, int world) {
  CSKV_CHECK_USAGE(!opt.out_dir.empty(), "missing required option --out");
  CSKV_CHECK_USAGE(opt.tokens_path.empty() != opt.text_path.empty(),
                   "give exactly one of --tokens or --text");
  CSKV_CHECK_USAGE(
      opt.text_path.empty() || !opt.tokenizer_path.empty(),
      "--text needs --tokenizer (a SentencePiece tokenizer.model or a tokenizer.json)");
  check_tokenizer_use(opt);
  check_holdout_corpus(opt);
  CSKV_CHECK_USAGE(opt.num_seqs >= 1, "--num-seqs: expected >= 1, found " << opt.num_seqs);
  CSKV_CHECK_USAGE(opt.seq_len >= 2, "--seq-len: expected >= 2, found " << opt.seq_len);
  CSKV_CHECK_USAGE(opt.holdout_seqs >= 0,
                   "--holdout-seqs: expected >= 0, found " << opt.holdout_seqs);
  CSKV_CHECK_USAGE(opt.batch >= 1, "--batch: expected >= 1, found " << opt.batch);
  CSKV_CHECK_USAGE(opt.num_seqs >= world, "--num-seqs " << opt.num_seqs
                                                        << " is smaller than the number of ranks "
                                                        << world << " (every rank writes a shard)");
  CSKV_CHECK_USAGE(opt.holdout_seqs == 0 || opt.holdout_seqs >= world,
                   "--holdout-seqs " << opt.holdout_seqs << " is smaller than the number of ranks "
                                     << world << " (use 0 or at least " << world << ")");
}

// What the stage reads: the model (config, weights, compute device) and the token stream.
struct CaptureInputs {
  at::Device device;
  model::ModelConfig config;
  std::shared_ptr<model::SafetensorsModel> weights;
  std::string hash;         // config.hash()
  std::string fingerprint;  // model::weights_fingerprint()
  TokenFile tokens;
  std::optional<TokenFile> holdout_tokens;  // --holdout-tokens / --holdout-text
};

// Empty layers become all of the model's; each must exist.
std::vector<int64_t> resolve_layers(const std::vector<int64_t>& layers, int64_t num_layers) {
  const auto out = layers.empty() ? parse_layer_list("all", num_layers) : layers;
  for (const int64_t l : out) {
    CSKV_CHECK_USAGE(l >= 0 && l < num_layers, "--layers: layer "
                                                   << l << " does not exist (the model has "
                                                   << num_layers << " layers)");
  }
  return out;
}

// A token file, or a text file tokenized with --tokenizer.
TokenFile open_tokens(const std::string& tokens_path, const std::string& text_path,
                      const CaptureOptions& opt, const model::ModelConfig& config) {
  if (text_path.empty()) return TokenFile(tokens_path, opt.token_dtype, config.vocab_size);
  return TokenFile::from_tokens(
      tokenize_text_file(text_path, opt.tokenizer_path, config.bos_token_id >= 0, opt.text_docs),
      text_path, config.vocab_size);
}

// Peak bytes of one layer of the capture forward (compute dtype: float32 on the CPU, bfloat16 on
// CUDA): every sequence's hidden state in and out, the hook's inputs and their concatenation,
// one sequence's norm/q/k/v/RoPE/residual tensors and MLP, and its attention
// (model::attention_peak_bytes: dense up to model::kDenseAttentionMaxTokens tokens, blocked by
// query rows beyond). More than the device has free is refused by name here, not as an allocator
// failure mid-capture.
void check_forward_memory(const CaptureOptions& opt, const model::ModelConfig& config,
                          at::Device device) {
  const double t = static_cast<double>(opt.seq_len);
  const double elem = device.is_cuda() ? 2.0 : 4.0;
  const double h = static_cast<double>(config.hidden_size);
  const double inter = static_cast<double>(config.intermediate_size);
  const double attention = model::attention_peak_bytes(config.num_attention_heads, config.head_dim,
                                                       opt.seq_len, config.sliding_window, elem);
  const double need =
      elem * (4.0 * static_cast<double>(opt.batch) * t * h + t * (8.0 * h + 3.0 * inter)) +
      attention;
  const double free_bytes = static_cast<double>(device::memory(device).free_bytes);
  const double gib = 1024.0 * 1024.0 * 1024.0;
  auto round1 = [gib](double bytes) { return std::round(bytes / gib * 10) / 10; };
  CSKV_CHECK_USAGE(
      need <= free_bytes,
      "--seq-len " << opt.seq_len << " with --batch " << opt.batch
                   << ": one layer of the forward needs " << round1(need)
                   << " GiB (hidden states of " << opt.batch << " sequences of " << opt.seq_len
                   << " tokens, one sequence's MLP, and its attention: " << round1(attention)
                   << " GiB) and " << device.str() << " has " << round1(free_bytes)
                   << " GiB free; use a shorter --seq-len or a smaller --batch");
}

// Loads and checks the inputs; resolves opt.layers against the model.
CaptureInputs load_inputs(CaptureOptions& opt, const comm::Communicator& comm) {
  CSKV_CHECK_USAGE(opt.text_docs == data::TextDocs::kBlankLines || !opt.text_path.empty() ||
                       !opt.holdout_text_path.empty(),
                   "--text-docs " << data::text_docs_name(opt.text_docs)
                                  << " lays out --text or --holdout-text, and neither is given");
  const at::Device device = device::select(opt.device, comm.local_rank());
  model::ModelConfig config = model::load_config(opt.model_dir);
  CSKV_CHECK_USAGE(
      config.max_position_embeddings == 0 || opt.seq_len <= config.max_position_embeddings,
      "--seq-len " << opt.seq_len << " exceeds the model's max_position_embeddings "
                   << config.max_position_embeddings << " (" << opt.model_dir << "/config.json)");
  check_forward_memory(opt, config, device);
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(opt.model_dir));
  model::validate_weights(config, *weights, opt.model_dir);
  opt.layers = resolve_layers(opt.layers, config.num_hidden_layers);
  std::string hash = config.hash();
  std::string fingerprint = model::weights_fingerprint(config, *weights);
  TokenFile tokens = open_tokens(opt.tokens_path, opt.text_path, opt, config);
  std::optional<TokenFile> holdout;
  if (!opt.holdout_tokens_path.empty() || !opt.holdout_text_path.empty()) {
    holdout.emplace(open_tokens(opt.holdout_tokens_path, opt.holdout_text_path, opt, config));
  }
  return CaptureInputs{device,
                       std::move(config),
                       std::move(weights),
                       std::move(hash),
                       std::move(fingerprint),
                       std::move(tokens),
                       std::move(holdout)};
}

// ---- plan: rank 0's verdict on --out -------------------------------------------------------

// What every rank does with the output directory, as rank 0 found it.
struct OutDirVerdict {
  enum class Kind {
    kFresh,                 // no manifest: every shard is written
    kResume,                // the manifest lists intact shards of these settings: they are kept
    kCompleteOnOtherWorld,  // a complete capture on another number of ranks: nothing to do
    kRefused,               // error: the message every rank raises
  };
  Kind kind = Kind::kFresh;
  std::string error;
};

NLOHMANN_JSON_SERIALIZE_ENUM(OutDirVerdict::Kind, {{OutDirVerdict::Kind::kFresh, "fresh"},
                                                   {OutDirVerdict::Kind::kResume, "resume"},
                                                   {OutDirVerdict::Kind::kCompleteOnOtherWorld,
                                                    "complete_on_other_world"},
                                                   {OutDirVerdict::Kind::kRefused, "refused"}})
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(OutDirVerdict, kind, error)

OutDirVerdict refused(std::string message) {
  return {OutDirVerdict::Kind::kRefused, std::move(message)};
}

// The verdict on an earlier capture.json in out_dir, or nullopt when it has these settings.
std::optional<OutDirVerdict> verdict_on_earlier_settings(const CaptureOptions& opt,
                                                         const std::string& cfg_text) {
  const std::string path = capture_json_path(opt.out_dir);
  // Top-level keys, compared and shown as compact JSON text: "seed: 0 -> 1".
  const EarlierCapture earlier = compare_capture_settings(
      files::read_whole_file(path, files::kDefaultMaxReadBytes, "capture"), cfg_text, path);
  const auto& diffs = earlier.differences;
  if (diffs.empty()) return std::nullopt;
  // A complete capture made on another number of ranks is as good as ours: nothing to do.
  const bool only_world = diffs.size() == 1 && diffs.front().key == "world_size";
  if (only_world && complete_on(opt.out_dir, earlier.world_size, opt.holdout_seqs > 0)) {
    return OutDirVerdict{OutDirVerdict::Kind::kCompleteOnOtherWorld, ""};
  }
  const std::string diff = format_config_differences(diffs, ConfigValueText::kJson);
  return refused(opt.out_dir + " holds a capture with other settings (" + diff +
                 "); use another --out or --overwrite");
}

// Rank 0's look at out_dir (it creates it; --overwrite clears it). Throws on a listed shard that
// is missing, truncated or from another model: nothing is overwritten, not silently redone.
OutDirVerdict judge_out_dir(const CaptureOptions& opt, const CaptureInputs& in,
                            const std::string& cfg_text) {
  fs::create_directories(opt.out_dir);
  const std::string cpath = capture_json_path(opt.out_dir);
  if (opt.overwrite) {
    log::get("data")->warn("--overwrite: removing any earlier capture in {}", opt.out_dir);
    remove_capture_outputs(opt.out_dir);
  } else if (fs::exists(cpath)) {
    if (auto verdict = verdict_on_earlier_settings(opt, cfg_text)) return *verdict;
  } else {
    refuse_unrecorded_capture_files(opt.out_dir);
  }
  const bool listed = fs::exists(manifest_path(opt.out_dir));
  if (listed) {
    ShardExpectation expect;
    expect.model_config_hash = in.hash;
    expect.hidden_size = in.config.hidden_size;
    expect.seq_len = opt.seq_len;
    expect.dtype = activation_dtype_name(opt.dtype);
    // Kept shards are re-hashed: the statistics and every later stage build on them.
    validate_manifest(opt.out_dir, read_manifest(opt.out_dir), expect,
                      /*verify_checksums=*/true);
  }
  // Written only when it changes, so a rerun that finds the capture complete touches nothing.
  if (files::read_whole_file_if_exists(cpath) != cfg_text + "\n") {
    files::write_file_atomic(cpath, cfg_text + "\n");
  }
  return {listed ? OutDirVerdict::Kind::kResume : OutDirVerdict::Kind::kFresh, ""};
}

// Every rank gets rank 0's verdict. Rank 0's errors become a refusal (an input error, raised on
// every rank with the message alone), as the stage has always reported them.
OutDirVerdict decide_out_dir(comm::Communicator& comm, const CaptureOptions& opt,
                             const CaptureInputs& in) {
  const std::string cfg_text =
      capture_config_json(opt, in.hash, in.fingerprint, in.tokens.size(),
                          in.holdout_tokens ? in.holdout_tokens->size() : -1, comm.size());
  return comm::root_decides<OutDirVerdict>(comm, [&] {
    try {
      return judge_out_dir(opt, in, cfg_text);
    } catch (const Error& e) {
      return refused(e.message());
    } catch (const std::exception& e) {
      return refused(e.what());
    }
  });
}

// ---- work: this rank's shards --------------------------------------------------------------

constexpr int64_t kNoBos = -1;  // token files hold the model's own tokens; no BOS is inserted

struct Split {
  std::string name, file;
  std::vector<int64_t> ids;
};

std::vector<Split> plan_splits(const CaptureOptions& opt, int rank, int world) {
  std::vector<Split> splits = {{"train", shard_file_name(rank, world, "train"),
                                contiguous_ids(0, opt.num_seqs, rank, world)}};
  if (opt.holdout_seqs > 0) {
    splits.push_back({"holdout", shard_file_name(rank, world, "holdout"),
                      contiguous_ids(opt.num_seqs, opt.holdout_seqs, rank, world)});
  }
  return splits;
}

int64_t tokens_to_capture(const std::vector<Split>& splits, const ShardLedger& ledger,
                          int64_t seq_len) {
  int64_t todo = 0;
  for (const auto& s : splits) {
    if (!ledger.is_complete(s.file)) todo += static_cast<int64_t>(s.ids.size()) * seq_len;
  }
  return todo;
}

// Runs the model over this rank's sequences and writes the shards: the hook stores the rows of
// the wanted layers, rounded once to the storage dtype; each finished shard is listed at once.
class ShardCapturer {
 public:
  ShardCapturer(const CaptureOptions& opt, const CaptureInputs& in, const SequencePlan& plan,
                CaptureResult& result)
      : opt_(opt),
        in_(in),
        plan_(plan),
        llama_(in.config, in.weights, model::default_compute_dtype(in.device), in.device),
        wanted_(opt.layers.begin(), opt.layers.end()),
        result_(result) {}

  // Reuses the complete splits and captures the others; false when a stop signal came first
  // (the unfinished shard is left unlisted for the rerun).
  bool capture_all(const std::vector<Split>& splits, const ShardLedger& ledger,
                   ProgressMeter& progress) {
    for (const auto& split : splits) {
      if (ledger.is_complete(split.file)) {
        result_.shards_reused.push_back(split.file);
        continue;
      }
      if (!capture(split, progress)) return false;
      result_.shards_written.push_back(split.file);
    }
    return true;
  }

 private:
  bool capture(const Split& split, ProgressMeter& progress) {
    const std::string path = opt_.out_dir + "/" + split.file;
    const auto tokens = static_cast<uint64_t>(split.ids.size() * opt_.seq_len);
    const uint64_t elem = opt_.dtype == ActivationDtype::kFloat16 ? 2 : 4;
    const uint64_t row = static_cast<uint64_t>(in_.config.hidden_size) * elem * opt_.layers.size();
    check_free_space(opt_.out_dir, path, tokens * (row + 4),
                     std::to_string(tokens) + " tokens x " + std::to_string(opt_.layers.size()) +
                         " layers x " + std::to_string(in_.config.hidden_size) + " x " +
                         std::to_string(elem) + " bytes, plus the token ids");
    ActivationShardWriter writer(path, header_for(split));
    const auto batch = static_cast<size_t>(opt_.batch);
    for (size_t b = 0; b < split.ids.size(); b += batch) {
      if (stop_signal() != 0) return false;
      const size_t n = std::min(split.ids.size() - b, batch);
      capture_batch(writer, {split.ids.begin() + b, split.ids.begin() + b + n});
      progress.update(tokens_done_);
    }
    const auto w0 = Clock::now();
    const ShardSummary summary = writer.finish();
    add_to_manifest(opt_.out_dir, manifest_entry(summary));
    result_.seconds_write += seconds_since(w0);
    return true;
  }

  ShardHeader header_for(const Split& split) const {
    ShardHeader header;
    header.model_config_hash = in_.hash;
    header.hidden_size = in_.config.hidden_size;
    header.num_layers = in_.config.num_hidden_layers;
    header.layers = opt_.layers;
    header.seq_len = opt_.seq_len;
    header.dtype = opt_.dtype;
    header.seed = opt_.seed;
    header.split = split.name;
    return header;
  }

  // The token ids of these sequences (all training or all held-out ids), [ids.size(), seq_len].
  at::Tensor batch_tokens(const std::vector<int64_t>& ids) const {
    const bool held_out = ids.front() >= opt_.num_seqs;
    std::vector<int64_t> batch_starts;
    for (const int64_t id : ids) {
      batch_starts.push_back(held_out ? plan_.holdout_starts[id - opt_.num_seqs]
                                      : plan_.train_starts[id]);
    }
    const TokenFile& stream = held_out && in_.holdout_tokens ? *in_.holdout_tokens : in_.tokens;
    const auto flat = stream.gather(batch_starts, opt_.seq_len, kNoBos);
    at::Tensor tok = at::empty({static_cast<int64_t>(ids.size()), opt_.seq_len}, at::kLong);
    auto* p = tok.data_ptr<int64_t>();
    for (size_t i = 0; i < flat.size(); ++i) p[i] = flat[i];
    return tok;
  }

  void capture_batch(ActivationShardWriter& writer, const std::vector<int64_t>& ids) {
    const at::Tensor tok = batch_tokens(ids);
    model::ForwardOptions fo;
    fo.last_layer = opt_.layers.back();
    double hook_seconds = 0;
    const auto f0 = Clock::now();
    llama_.forward(
        tok,
        [&](int64_t layer, const at::Tensor& x) {
          if (!wanted_.count(layer)) return;
          const auto h0 = Clock::now();
          // Rounded to the storage dtype once; the shard and the statistics share the copy.
          writer.append(layer, x.to(at::kCPU, to_scalar_type(opt_.dtype)));
          const double s = seconds_since(h0);
          result_.seconds_write += s;
          hook_seconds += s;
        },
        fo);
    result_.seconds_forward += seconds_since(f0) - hook_seconds;
    const auto w0 = Clock::now();
    writer.append_tokens(ids, tok);
    result_.seconds_write += seconds_since(w0);
    const int64_t tokens = static_cast<int64_t>(ids.size()) * opt_.seq_len;
    result_.tokens_captured += tokens;
    tokens_done_ += tokens;
  }

  const CaptureOptions& opt_;
  const CaptureInputs& in_;
  const SequencePlan& plan_;
  const model::LlamaModel llama_;
  const std::set<int64_t> wanted_;
  CaptureResult& result_;
  int64_t tokens_done_ = 0;
};

// ---- share: the statistics -----------------------------------------------------------------

// Adds one layer's statistics from the stored training rows, sequence by sequence in id order.
void add_layer_stats(const CaptureOptions& opt, const std::string& hash, int64_t layer,
                     LayerStats& stats) {
  ActivationReaderOptions ro;
  ro.acts_dir = opt.out_dir;
  ro.layer = layer;
  ro.split = "train";
  ro.batch_tokens = opt.seq_len;
  ro.expect.model_config_hash = hash;
  ActivationReader reader(ro);
  int64_t sequences = 0;
  while (auto batch = reader.next()) {
    CSKV_CHECK(batch->x.size(0) == opt.seq_len,
               opt.out_dir << ": layer " << ro.layer << ": a batch of " << batch->x.size(0)
                           << " rows, expected one sequence of " << opt.seq_len);
    stats.add(ro.layer, batch->x);
    ++sequences;
  }
  CSKV_CHECK(sequences == opt.num_seqs, opt.out_dir << ": layer " << ro.layer << ": " << sequences
                                                    << " training sequences, expected "
                                                    << opt.num_seqs);
}

// The statistics, from the stored rows in a fixed order: layer i is summed by rank i mod W,
// sequence by sequence in id order (the concatenated training split; one XᵀX of shape
// [seq_len, H] per sequence), and the other ranks contribute zeros to the allreduce. So
// stats.h5 is bitwise the same for any number of capturing ranks, any --batch and any
// interruption (the shards already are).
void share_stats(const CaptureOptions& opt, const std::string& hash, comm::Communicator& comm,
                 LayerStats& stats, CaptureResult& result) {
  const auto s0 = Clock::now();
  for (size_t li = 0; li < opt.layers.size(); ++li) {
    if (static_cast<int>(li % static_cast<size_t>(comm.size())) != comm.rank()) continue;
    add_layer_stats(opt, hash, opt.layers[li], stats);
  }
  result.seconds_stats += seconds_since(s0);
  for (auto& t : stats.reduction_tensors()) comm.allreduce_sum(t);
}

// ---- write: stats.h5 (rank 0) --------------------------------------------------------------

void write_stats_file(const CaptureOptions& opt, const std::vector<std::string>& expected_files,
                      const LayerStats& stats, const std::string& hash) {
  std::set<std::string> have;
  for (const auto& e : read_manifest(opt.out_dir)) have.insert(e.file);
  for (const auto& f : expected_files) {
    CSKV_CHECK(have.count(f), manifest_path(opt.out_dir)
                                  << " does not list " << f << " after every rank finished");
  }
  const auto h = static_cast<uint64_t>(stats.hidden_size());
  const uint64_t layers = stats.layers().size();
  check_free_space(opt.out_dir, stats_path(opt.out_dir), layers * (h * h + h) * 8,
                   std::to_string(layers) + " layers x (" + std::to_string(h) + " x " +
                       std::to_string(h) + " + " + std::to_string(h) + ") float64");
  // Ties the statistics to this capture's settings (checked by every stage reading them).
  const std::optional<std::string> identity = read_capture_identity(opt.out_dir);
  CSKV_CHECK(identity, capture_json_path(opt.out_dir) << " is missing while writing stats.h5");
  write_stats(stats_path(opt.out_dir), stats, hash, *identity);
}

CaptureResult finished(CaptureResult result, Clock::time_point t0) {
  result.seconds = seconds_since(t0);
  return result;
}

}  // namespace

void validate_capture_options(const CaptureOptions& options, int world_size) {
  validate_options(options, world_size);
}

void verify_capture_checksums(const std::string& acts_dir, comm::Communicator& comm,
                              const std::string& split) {
  std::vector<ManifestEntry> entries;
  for (auto& e : read_manifest(acts_dir)) {
    if (split.empty() || e.split == split) entries.push_back(std::move(e));
  }
  // Sizes, headers and distinct sequences first (cheap, every rank), then the full re-hash.
  validate_manifest(acts_dir, entries, ShardExpectation{}, /*verify_checksums=*/false);
  std::optional<Error> mine;
  try {
    verify_shard_checksums(acts_dir, entries, comm.rank(), comm.size());
  } catch (const Error& e) {
    mine = e;
  }
  comm::throw_if_any_failed(comm, mine);
}

CaptureResult run_capture(const CaptureOptions& opt_in, comm::Communicator& comm) {
  const auto t0 = Clock::now();
  auto logger = log::get("data");
  const int rank = comm.rank(), world = comm.size();
  // validate
  CaptureOptions opt = opt_in;
  validate_options(opt, world);
  const CaptureInputs in = load_inputs(opt, comm);
  const SequencePlan sequences =
      plan_sequences(in.tokens, in.holdout_tokens ? &*in.holdout_tokens : nullptr, opt.num_seqs,
                     opt.holdout_seqs, opt.seq_len, opt.seed, opt.sampling);
  // plan: this run owns --out until it returns
  const auto lock = lock_output_dir(comm, opt.out_dir, "--out");
  const OutDirVerdict verdict = decide_out_dir(comm, opt, in);
  CaptureResult result;
  if (verdict.kind == OutDirVerdict::Kind::kRefused) {
    throw Error(ErrorKind::kInput, verdict.error, {}, /*collective=*/true);
  }
  if (verdict.kind == OutDirVerdict::Kind::kCompleteOnOtherWorld) {
    result.already_complete = true;
    if (rank == 0) {
      logger->info(
          "capture: {} is complete already (captured on another number of ranks); "
          "nothing to do",
          opt.out_dir);
    }
    return finished(result, t0);
  }
  // resume
  const ShardLedger ledger(opt.out_dir, verdict.kind == OutDirVerdict::Kind::kResume);
  const auto expected_files = expected_shard_files(world, opt.holdout_seqs > 0);
  if (comm::all_agree(comm, ledger.capture_complete(expected_files))) {
    result.already_complete = true;
    if (rank == 0) logger->info("capture: {} is complete already; nothing to do", opt.out_dir);
    return finished(result, t0);
  }
  // work
  ShardCapturer capturer(opt, in, sequences, result);
  LayerStats stats(opt.layers, in.config.hidden_size, opt.dtype);
  const auto splits = plan_splits(opt, rank, world);
  const int64_t todo = tokens_to_capture(splits, ledger, opt.seq_len);
  ProgressMeter progress("capture (rank 0)", "tokens", todo, rank == 0 && todo > 0);
  const bool done = capturer.capture_all(splits, ledger, progress);
  // Every shard is complete and listed from here on, unless some rank was stopped by a signal:
  // then all return interrupted (the rerun redoes the unfinished shards).
  if (comm::any_rank(comm, !done)) {
    result.interrupted = true;
    logger->warn("capture stopped by {}; finished shards are kept, rerun to continue",
                 stop_signal() ? stop_signal_name(stop_signal()) : "a peer's stop signal");
    return finished(result, t0);
  }
  progress.finish();
  // share, write
  share_stats(opt, in.hash, comm, stats, result);
  if (rank == 0) write_stats_file(opt, expected_files, stats, in.hash);
  comm.barrier();
  return finished(result, t0);
}

}  // namespace cskv::pipeline
