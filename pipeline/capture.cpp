// The capture stage: sampling, the data-parallel forward with a hook that writes shards and
// accumulates statistics, crash-safe manifest updates, resume of complete shards, reduction.
#include "pipeline/capture.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/stop_signal.h"
#include "data/activation_reader.h"
#include "data/atomic_file.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/weights.h"

namespace cskv::pipeline {

using namespace cskv::data;  // the stage is built from data/ throughout

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::vector<int64_t> parse_layer_list(const std::string& spec, int64_t num_layers) {
  std::set<int64_t> out;
  if (spec.empty() || spec == "all") {
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

std::string capture_config_json(const CaptureOptions& o, const std::string& model_hash,
                                int64_t token_stream_size, int world_size) {
  nlohmann::json j;
  j["format_version"] = kShardFormatVersion;
  j["model_config_hash"] = model_hash;
  j["tokens"] = o.tokens_path.empty() ? "" : fs::absolute(o.tokens_path).string();
  j["text"] = o.text_path.empty() ? "" : fs::absolute(o.text_path).string();
  j["tokenizer"] = o.tokenizer_path.empty() ? "" : fs::absolute(o.tokenizer_path).string();
  j["token_dtype"] = token_dtype_name(o.token_dtype);
  j["token_stream_size"] = token_stream_size;
  j["num_seqs"] = o.num_seqs;
  j["seq_len"] = o.seq_len;
  j["holdout_seqs"] = o.holdout_seqs;
  j["batch"] = o.batch;
  j["seed"] = o.seed;
  j["sampling"] = o.sampling == Sampling::kRandom ? "random" : "contiguous";
  j["dtype"] = activation_dtype_name(o.dtype);
  j["layers"] = o.layers;
  j["world_size"] = world_size;
  j["device"] = o.device;
  return j.dump(2);
}

namespace {

std::string capture_json_path(const std::string& dir) { return dir + "/capture.json"; }
std::string stats_path(const std::string& dir) { return dir + "/stats.h5"; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "key: old → new" for every top-level key whose value differs.
std::string config_difference(const nlohmann::json& old_cfg, const nlohmann::json& new_cfg) {
  std::vector<std::string> diffs;
  std::set<std::string> keys;
  for (auto it = old_cfg.begin(); it != old_cfg.end(); ++it) keys.insert(it.key());
  for (auto it = new_cfg.begin(); it != new_cfg.end(); ++it) keys.insert(it.key());
  for (const auto& k : keys) {
    const auto a = old_cfg.contains(k) ? old_cfg.at(k).dump() : "(absent)";
    const auto b = new_cfg.contains(k) ? new_cfg.at(k).dump() : "(absent)";
    if (a != b) diffs.push_back(k + ": " + a + " -> " + b);
  }
  std::string out;
  for (size_t i = 0; i < diffs.size(); ++i) out += (i ? "; " : "") + diffs[i];
  return out;
}

// Removes everything a capture writes (shards, manifest, stats, capture.json) from dir.
void remove_capture_outputs(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    const bool ours = name.rfind("shard-", 0) == 0 || name.rfind("holdout-", 0) == 0 ||
                      name.rfind("manifest.json", 0) == 0 || name.rfind("stats.h5", 0) == 0 ||
                      name.rfind("capture.json", 0) == 0 || name == ".manifest.lock";
    if (ours) fs::remove(e.path());
  }
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

}  // namespace

namespace {
constexpr const char* kCompleteOnOtherWorld = "\x01complete-on-other-world";

// Whether out_dir holds stats.h5 and every shard a capture on `world` ranks writes, listed in
// the manifest with its recorded size.
bool complete_on(const std::string& out_dir, int world, bool holdout) {
  if (world < 1 || !fs::exists(stats_path(out_dir)) || !fs::exists(manifest_path(out_dir))) {
    return false;
  }
  std::map<std::string, uint64_t> listed;
  for (const auto& e : read_manifest(out_dir)) listed[e.file] = e.bytes;
  for (int r = 0; r < world; ++r) {
    for (const char* split : {"train", "holdout"}) {
      if (std::string(split) == "holdout" && !holdout) continue;
      const std::string file = shard_file_name(r, world, split);
      std::error_code ec;
      const auto it = listed.find(file);
      if (it == listed.end() || fs::file_size(out_dir + "/" + file, ec) != it->second || ec) {
        return false;
      }
    }
  }
  return true;
}
}  // namespace

CaptureResult run_capture(const CaptureOptions& opt_in, comm::Communicator& comm) {
  const auto t0 = Clock::now();
  CaptureOptions opt = opt_in;
  auto logger = log::get("data");
  CSKV_CHECK_USAGE(!opt.out_dir.empty(), "missing required option --out");
  CSKV_CHECK_USAGE(opt.tokens_path.empty() != opt.text_path.empty(),
                   "give exactly one of --tokens or --text");
  CSKV_CHECK_USAGE(opt.text_path.empty() || !opt.tokenizer_path.empty(),
                   "--text needs --tokenizer (a SentencePiece tokenizer.model)");
  CSKV_CHECK_USAGE(opt.num_seqs >= 1, "--num-seqs: expected >= 1, found " << opt.num_seqs);
  CSKV_CHECK_USAGE(opt.seq_len >= 2, "--seq-len: expected >= 2, found " << opt.seq_len);
  CSKV_CHECK_USAGE(opt.holdout_seqs >= 0,
                   "--holdout-seqs: expected >= 0, found " << opt.holdout_seqs);
  CSKV_CHECK_USAGE(opt.batch >= 1, "--batch: expected >= 1, found " << opt.batch);

  const int rank = comm.rank(), world = comm.size();
  CSKV_CHECK_USAGE(opt.num_seqs >= world, "--num-seqs " << opt.num_seqs
                                                        << " is smaller than the number of ranks "
                                                        << world << " (every rank writes a shard)");
  CSKV_CHECK_USAGE(opt.holdout_seqs == 0 || opt.holdout_seqs >= world,
                   "--holdout-seqs " << opt.holdout_seqs << " is smaller than the number of ranks "
                                     << world << " (use 0 or at least " << world << ")");
  const at::Device device = model::select_device(opt.device, comm.local_rank());
  const model::ModelConfig config = model::load_config(opt.model_dir);
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(opt.model_dir));
  model::validate_weights(config, *weights, opt.model_dir);
  opt.layers = opt.layers.empty() ? parse_layer_list("all", config.num_hidden_layers) : opt.layers;
  for (const int64_t l : opt.layers) {
    CSKV_CHECK_USAGE(l >= 0 && l < config.num_hidden_layers,
                     "--layers: layer " << l << " does not exist (the model has "
                                        << config.num_hidden_layers << " layers)");
  }
  const std::string hash = config.hash();

  const TokenFile tokens =
      opt.text_path.empty()
          ? TokenFile(opt.tokens_path, opt.token_dtype, config.vocab_size)
          : TokenFile::from_tokens(
                tokenize_text_file(opt.text_path, opt.tokenizer_path, config.bos_token_id >= 0),
                opt.text_path, config.vocab_size);

  // Rank 0 decides whether the output directory may be used; everyone learns the verdict.
  const std::string cfg_text = capture_config_json(opt, hash, tokens.size(), world);
  std::string verdict;
  if (rank == 0) {
    try {
      fs::create_directories(opt.out_dir);
      const std::string cpath = capture_json_path(opt.out_dir);
      if (opt.overwrite) {
        logger->warn("--overwrite: removing any earlier capture in {}", opt.out_dir);
        remove_capture_outputs(opt.out_dir);
      } else if (fs::exists(cpath)) {
        const nlohmann::json old_cfg = nlohmann::json::parse(read_text(cpath), nullptr, false);
        const auto diff = config_difference(old_cfg, nlohmann::json::parse(cfg_text));
        // A complete capture made on another number of ranks is as good as ours: nothing to do.
        const bool only_world = !diff.empty() && diff.rfind("world_size: ", 0) == 0 &&
                                diff.find("; ") == std::string::npos;
        if (only_world &&
            complete_on(opt.out_dir, old_cfg.value("world_size", 0), opt.holdout_seqs > 0)) {
          verdict = kCompleteOnOtherWorld;
        } else if (!diff.empty()) {
          verdict = opt.out_dir + " holds a capture with other settings (" + diff +
                    "); use another --out or --overwrite";
        }
      }
      // Shards the manifest lists must be intact: a listed shard that is missing, truncated or
      // from another model is an error (nothing is overwritten), not silently redone.
      if (verdict.empty() && fs::exists(manifest_path(opt.out_dir))) {
        ShardExpectation expect;
        expect.model_config_hash = hash;
        expect.hidden_size = config.hidden_size;
        expect.seq_len = opt.seq_len;
        expect.dtype = activation_dtype_name(opt.dtype);
        validate_manifest(opt.out_dir, read_manifest(opt.out_dir), expect,
                          /*verify_checksums=*/false);
      }
      // Written only when it changes, so a rerun that finds the capture complete touches nothing.
      if (verdict.empty() && (!fs::exists(cpath) || read_text(cpath) != cfg_text + "\n")) {
        write_file_atomic(cpath, cfg_text + "\n");
      }
    } catch (const Error& e) {
      verdict = e.message();
    } catch (const std::exception& e) {
      verdict = e.what();
    }
  }
  comm.broadcast_bytes(verdict, 0);
  CaptureResult result;
  if (verdict == kCompleteOnOtherWorld) {
    result.already_complete = true;
    result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (rank == 0) {
      logger->info(
          "capture: {} is complete already (captured on another number of ranks); "
          "nothing to do",
          opt.out_dir);
    }
    return result;
  }
  if (!verdict.empty()) throw Error(ErrorKind::kInput, verdict, {}, /*collective=*/true);

  const std::string train_file = shard_file_name(rank, world, "train");
  const std::string hold_file = shard_file_name(rank, world, "holdout");
  std::vector<std::string> expected_files;
  for (int r = 0; r < world; ++r) {
    expected_files.push_back(shard_file_name(r, world, "train"));
    if (opt.holdout_seqs > 0) expected_files.push_back(shard_file_name(r, world, "holdout"));
  }
  std::map<std::string, ManifestEntry> listed;
  if (fs::exists(manifest_path(opt.out_dir))) {
    for (auto& e : read_manifest(opt.out_dir)) listed[e.file] = e;
  }
  // A listed shard counts when its file is there with the recorded size.
  auto is_complete = [&](const std::string& file) {
    auto it = listed.find(file);
    if (it == listed.end()) return false;
    std::error_code ec;
    const auto size = fs::file_size(opt.out_dir + "/" + file, ec);
    return !ec && size == it->second.bytes;
  };
  {
    int all_done = fs::exists(stats_path(opt.out_dir)) ? 1 : 0;
    for (const auto& f : expected_files) all_done &= is_complete(f) ? 1 : 0;
    at::Tensor flag = at::full({1}, static_cast<double>(all_done), at::kDouble);
    comm.allreduce_sum(flag);
    if (flag.item<double>() == world) {
      result.already_complete = true;
      result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (rank == 0) logger->info("capture: {} is complete already; nothing to do", opt.out_dir);
      return result;
    }
  }

  const int64_t bos = -1;  // token files hold the model's own tokens; no BOS is inserted
  const auto starts =
      tokens.sample(opt.num_seqs + opt.holdout_seqs, opt.seq_len, opt.seed, opt.sampling, bos);
  const model::LlamaModel llama(config, weights, model::default_compute_dtype(device), device);
  const int64_t last_layer = opt.layers.back();
  LayerStats stats(opt.layers, config.hidden_size, opt.dtype);

  struct Split {
    std::string name, file;
    std::vector<int64_t> ids;
  };
  std::vector<Split> splits = {{"train", train_file, contiguous_ids(0, opt.num_seqs, rank, world)}};
  if (opt.holdout_seqs > 0) {
    splits.push_back(
        {"holdout", hold_file, contiguous_ids(opt.num_seqs, opt.holdout_seqs, rank, world)});
  }
  int64_t todo_tokens = 0;
  for (const auto& s : splits) {
    if (!is_complete(s.file)) todo_tokens += static_cast<int64_t>(s.ids.size()) * opt.seq_len;
  }
  ProgressMeter progress("capture (rank 0)", "tokens", todo_tokens, rank == 0 && todo_tokens > 0);
  int64_t tokens_done = 0;
  bool stopped = false;  // a stop signal: leave the unfinished shard for the rerun
  for (const auto& split : splits) {
    if (stopped) break;
    const std::string path = opt.out_dir + "/" + split.file;
    if (is_complete(split.file)) {
      result.shards_reused.push_back(split.file);
      continue;
    }
    ShardHeader header;
    header.model_config_hash = hash;
    header.hidden_size = config.hidden_size;
    header.num_layers = config.num_hidden_layers;
    header.layers = opt.layers;
    header.seq_len = opt.seq_len;
    header.dtype = opt.dtype;
    header.seed = opt.seed;
    header.split = split.name;
    ActivationShardWriter writer(path, header);
    const std::set<int64_t> wanted(opt.layers.begin(), opt.layers.end());
    for (size_t b = 0; b < split.ids.size(); b += static_cast<size_t>(opt.batch)) {
      if (stop_signal() != 0) {
        stopped = true;
        break;
      }
      const size_t n = std::min(split.ids.size() - b, static_cast<size_t>(opt.batch));
      std::vector<int64_t> ids(split.ids.begin() + b, split.ids.begin() + b + n);
      std::vector<int64_t> batch_starts;
      for (const int64_t id : ids) batch_starts.push_back(starts[id]);
      const auto flat = tokens.gather(batch_starts, opt.seq_len, bos);
      at::Tensor tok = at::empty({static_cast<int64_t>(n), opt.seq_len}, at::kLong);
      auto* p = tok.data_ptr<int64_t>();
      for (size_t i = 0; i < flat.size(); ++i) p[i] = flat[i];
      model::ForwardOptions fo;
      fo.last_layer = last_layer;
      double hook_seconds = 0;
      const auto f0 = Clock::now();
      llama.forward(
          tok,
          [&](int64_t layer, const at::Tensor& x) {
            if (!wanted.count(layer)) return;
            const auto h0 = Clock::now();
            // Rounded to the storage dtype once; the shard and the statistics share the copy.
            const at::Tensor stored = x.to(at::kCPU, to_scalar_type(opt.dtype));
            writer.append(layer, stored);
            const auto h1 = Clock::now();
            result.seconds_write += std::chrono::duration<double>(h1 - h0).count();
            hook_seconds += std::chrono::duration<double>(h1 - h0).count();
          },
          fo);
      result.seconds_forward +=
          std::chrono::duration<double>(Clock::now() - f0).count() - hook_seconds;
      const auto w0 = Clock::now();
      writer.append_tokens(ids, tok);
      result.seconds_write += std::chrono::duration<double>(Clock::now() - w0).count();
      result.tokens_captured += static_cast<int64_t>(n) * opt.seq_len;
      tokens_done += static_cast<int64_t>(n) * opt.seq_len;
      progress.update(tokens_done);
    }
    if (stopped) break;
    const auto w0 = Clock::now();
    const ShardSummary summary = writer.finish();
    add_to_manifest(opt.out_dir, manifest_entry(summary));
    result.seconds_write += std::chrono::duration<double>(Clock::now() - w0).count();
    result.shards_written.push_back(split.file);
  }
  // Every shard is complete and listed from here on, unless some rank was stopped by a signal:
  // then all return interrupted (the rerun redoes the unfinished shards).
  at::Tensor any_stopped =
      at::full({1}, stopped ? 1.0 : 0.0, at::TensorOptions().dtype(at::kDouble));
  comm.allreduce_sum(any_stopped);
  if (any_stopped.item<double>() > 0) {
    result.interrupted = true;
    result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    logger->warn("capture stopped by {}; finished shards are kept, rerun to continue",
                 stop_signal() ? stop_signal_name(stop_signal()) : "a peer's stop signal");
    return result;
  }

  progress.finish();
  // The statistics, from the stored rows in a fixed order: layer i is summed by rank i mod W,
  // sequence by sequence in id order (the concatenated training split; one XᵀX of shape
  // [seq_len, H] per sequence), and the other ranks contribute zeros to the allreduce. So
  // stats.h5 is bitwise the same for any number of capturing ranks, any --batch and any
  // interruption (the shards already are).
  const auto s0 = Clock::now();
  for (size_t li = 0; li < opt.layers.size(); ++li) {
    if (static_cast<int>(li % static_cast<size_t>(world)) != rank) continue;
    ActivationReaderOptions ro;
    ro.acts_dir = opt.out_dir;
    ro.layer = opt.layers[li];
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
  result.seconds_stats += std::chrono::duration<double>(Clock::now() - s0).count();
  for (auto& t : stats.reduction_tensors()) comm.allreduce_sum(t);
  if (rank == 0) {
    const auto entries = read_manifest(opt.out_dir);
    std::set<std::string> have;
    for (const auto& e : entries) have.insert(e.file);
    for (const auto& f : expected_files) {
      CSKV_CHECK(have.count(f), manifest_path(opt.out_dir)
                                    << " does not list " << f << " after every rank finished");
    }
    write_stats(stats_path(opt.out_dir), stats, hash);
  }
  comm.barrier();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace cskv::pipeline
