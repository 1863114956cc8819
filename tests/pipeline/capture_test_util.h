// Helpers for the capture tests: toy model, token and capture fixtures (library calls), reading
// shards back per sequence, Gram checks, whole-directory byte comparison and spawning/killing a
// capture (and its children).
#pragma once

#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "comm/local_communicator.h"
#include "data/activation_shard.h"
#include "data/hdf5_util.h"
#include "data/layer_stats.h"
#include "data/manifest.h"
#include "model/toy_model.h"
#include "pipeline/capture.h"
#include "tests/support/test_support.h"

extern char** environ;

namespace cskv::data::capture_testing {

namespace fs = std::filesystem;

// The cskv binary the tests spawn directly ($CSKV_BIN overrides, as for run_cskv).
inline std::string cskv_binary() {
  const char* env = std::getenv("CSKV_BIN");
  return env && *env ? env : CSKV_BINARY_FOR_TESTS;
}

// A toy model spec with these sizes (f16, seed 0: what `cskv toy-model` writes by default).
inline model::ToyModelSpec toy_spec(int64_t layers, int64_t hidden, int64_t heads, int64_t kv_heads,
                                    int64_t intermediate, int64_t vocab) {
  model::ToyModelSpec spec;
  spec.layers = layers;
  spec.hidden = hidden;
  spec.heads = heads;
  spec.kv_heads = kv_heads;
  spec.intermediate = intermediate;
  spec.vocab = vocab;
  return spec;
}

// Writes dir/model (the spec) and dir/tokens.bin (`count` u16 toy tokens, seed 0) through the
// library: the same bytes as `cskv toy-model` and `cskv toy-tokens` with those flags.
inline void make_model_and_tokens(const std::string& dir, const model::ToyModelSpec& spec,
                                  int64_t count) {
  model::write_toy_model(spec, dir + "/model");
  model::write_tokens(dir + "/tokens.bin", model::toy_tokens(spec.vocab, count, 0), spec.vocab,
                      model::TokenDType::kU16);
}

// Captures model_dir over a u16 token file into out_dir in this process (one rank), as
// `cskv capture --num-seqs N --seq-len L --holdout-seqs H --batch B [--layers ...]` would with
// its defaults (layers empty: all).
inline void capture_fixture(const std::string& model_dir, const std::string& tokens,
                            int64_t num_seqs, int64_t seq_len, int64_t holdout_seqs, int64_t batch,
                            const std::string& out_dir, const std::vector<int64_t>& layers = {}) {
  pipeline::CaptureOptions o;
  o.model_dir = model_dir;
  o.tokens_path = tokens;
  o.token_dtype = TokenDtype::kU16;
  o.num_seqs = num_seqs;
  o.seq_len = seq_len;
  o.holdout_seqs = holdout_seqs;
  o.batch = batch;
  o.out_dir = out_dir;
  o.layers = layers;
  comm::LocalCommunicator one;
  pipeline::run_capture(o, one);
}

// True when `text` holds `line` as one whole line.
inline bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) {
    if (l == line) return true;
  }
  return false;
}

// Every regular file of dir (name → bytes).
inline std::map<std::string, std::string> dir_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().filename().string()] = test::read_file(e.path());
  }
  return out;
}

// Expects two directories to hold the same file names with the same bytes.
inline void expect_same_bytes(const std::string& a, const std::string& b) {
  const auto fa = dir_bytes(a), fb = dir_bytes(b);
  std::vector<std::string> na, nb;
  for (const auto& [k, v] : fa) na.push_back(k);
  for (const auto& [k, v] : fb) nb.push_back(k);
  ASSERT_EQ(na, nb) << a << " vs " << b;
  for (const auto& [name, bytes] : fa) {
    EXPECT_TRUE(bytes == fb.at(name)) << name << " differs between " << a << " and " << b << " ("
                                      << bytes.size() << " vs " << fb.at(name).size() << " bytes)";
  }
}

// One split of a capture, read back per global sequence id.
struct SplitContents {
  std::map<int64_t, std::map<int64_t, at::Tensor>> x;  // sequence id → layer → [S, H] float32
  std::map<int64_t, at::Tensor> tokens;                // sequence id → [S] int64
  std::vector<std::string> files;                      // in manifest order
};

inline SplitContents read_split(const std::string& dir, const std::string& split) {
  SplitContents out;
  for (const auto& e : read_manifest(dir)) {
    if (e.split != split) continue;
    const std::string path = dir + "/" + e.file;
    out.files.push_back(e.file);
    const ShardHeader h = read_shard_header(path);
    h5::Guard g;
    h5::Handle file = h5::open_file_readonly(path);
    const auto n = static_cast<int64_t>(h.sequence_ids.size());
    at::Tensor tok = at::empty({n, h.seq_len}, at::kLong);
    h5::Handle tds(H5_CHECK(H5Dopen2(file.get(), "/tokens", H5P_DEFAULT), path, "/tokens"),
                   h5::Handle::Kind::kDataset);
    H5_CHECK(H5Dread(tds.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok.data_ptr()),
             path, "/tokens");
    for (int64_t i = 0; i < n; ++i) out.tokens[h.sequence_ids[i]] = tok[i].clone();
    for (const int64_t layer : h.layers) {
      const std::string name = "/layers/" + std::to_string(layer) + "/x";
      const bool half = h.dtype == ActivationDtype::kFloat16;
      at::Tensor raw = at::empty({h.token_count, h.hidden_size}, half ? at::kHalf : at::kFloat);
      h5::Handle ds(H5_CHECK(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), path, name),
                    h5::Handle::Kind::kDataset);
      H5_CHECK(H5Dread(ds.get(), half ? h5::float16_type() : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL,
                       H5P_DEFAULT, raw.data_ptr()),
               path, name);
      const at::Tensor x = raw.to(at::kFloat);
      for (int64_t i = 0; i < n; ++i) {
        out.x[h.sequence_ids[i]][layer] = x.narrow(0, i * h.seq_len, h.seq_len).clone();
      }
    }
  }
  return out;
}

// Expects every sequence of a and b to hold bitwise the same tokens and activations.
inline void expect_same_sequences(const SplitContents& a, const SplitContents& b,
                                  const std::string& what) {
  ASSERT_EQ(a.x.size(), b.x.size()) << what;
  for (const auto& [id, layers] : a.x) {
    ASSERT_TRUE(b.x.count(id)) << what << ": sequence " << id << " missing";
    EXPECT_TRUE(at::equal(a.tokens.at(id), b.tokens.at(id))) << what << ": tokens of " << id;
    for (const auto& [layer, x] : layers) {
      const at::Tensor& y = b.x.at(id).at(layer);
      EXPECT_TRUE(at::equal(x, y)) << what << ": sequence " << id << " layer " << layer
                                   << " max |diff| " << (x - y).abs().max().item<float>();
    }
  }
}

// stats.h5 against XᵀX and mean |x| recomputed in float64 from the stored training rows.
inline void expect_stats_match_shards(const std::string& dir, int64_t expected_tokens) {
  const SplitContents train = read_split(dir, "train");
  const StatsFile stats = read_stats(dir + "/stats.h5");
  EXPECT_EQ(stats.token_count, expected_tokens);
  ASSERT_FALSE(stats.layers.empty());
  for (const int64_t layer : stats.layers) {
    std::vector<at::Tensor> rows;
    for (const auto& [id, layers] : train.x) rows.push_back(layers.at(layer));
    const at::Tensor x = at::cat(rows, 0).to(at::kDouble);
    ASSERT_EQ(x.size(0), expected_tokens);
    const at::Tensor gram = at::mm(x.t(), x);
    const auto& got = stats.per_layer.at(layer);
    const double rel =
        (got.gram - gram).abs().max().item<double>() / gram.abs().max().item<double>();
    EXPECT_LE(rel, 1e-12) << "layer " << layer;
    // Sums of float16 values are exact in float64 at these sizes, so the mean is too.
    const at::Tensor abs_mean = x.abs().sum(0) / static_cast<double>(expected_tokens);
    EXPECT_TRUE(at::equal(got.abs_mean, abs_mean))
        << "layer " << layer << " max |diff| "
        << (got.abs_mean - abs_mean).abs().max().item<double>();
  }
}

// A child process with stdout+stderr in a file, killable with all of its descendants.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log_path) : log_(log_path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot spawn " + argv[0]);
  }
  ~Child() {
    if (pid_ > 0) kill_all();
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Exit status (or 128+signal) once it has ended, -1 while it runs.
  int poll() {
    if (pid_ <= 0) return status_;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pid_ = -1;
    }
    return pid_ > 0 ? -1 : status_;
  }
  // SIGKILL to every descendant (deepest first: mpirun's ranks), then to the child; reaps it.
  void kill_all() {
    if (pid_ <= 0) return;
    std::vector<pid_t> order;
    collect(pid_, order);
    for (auto it = order.rbegin(); it != order.rend(); ++it) ::kill(*it, SIGKILL);
    int st = 0;
    waitpid(pid_, &st, 0);
    status_ = 128 + SIGKILL;
    pid_ = -1;
    // Orphaned descendants are reaped by init; wait until they are gone.
    for (int i = 0; i < 500; ++i) {
      bool alive = false;
      for (size_t k = 1; k < order.size(); ++k) alive |= ::kill(order[k], 0) == 0;
      if (!alive) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::string log() const { return test::read_file(log_); }

 private:
  static pid_t parent_of(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto close = s.rfind(')');
    if (close == std::string::npos) return -1;
    std::istringstream in(s.substr(close + 2));
    char state;
    pid_t ppid = -1;
    in >> state >> ppid;
    return ppid;
  }
  // pid first, then its descendants (breadth first).
  static void collect(pid_t root, std::vector<pid_t>& out) {
    out.push_back(root);
    for (size_t i = out.size() - 1; i < out.size(); ++i) {
      for (const auto& e : fs::directory_iterator("/proc")) {
        const std::string name = e.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const pid_t p = std::stoi(name);
        if (parent_of(p) == out[i]) out.push_back(p);
      }
    }
  }

  pid_t pid_ = -1;
  int status_ = -1;
  std::string log_;
};

// The manifest's file names, or empty while there is none (or it is being replaced).
inline std::vector<std::string> listed_files(const std::string& dir) {
  std::vector<std::string> out;
  try {
    if (!fs::exists(manifest_path(dir))) return out;
    for (const auto& e : read_manifest(dir)) out.push_back(e.file);
  } catch (const std::exception&) {
    out.clear();
  }
  return out;
}

// Polls every 10 ms until pred() holds (true) or the child ends / timeout_s passes (false).
inline bool wait_for(Child& child, const std::function<bool()>& pred, double timeout_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    if (child.poll() >= 0) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// The toy model the trainer tests share: hidden 128, 2 layers, 4 heads / 2 KV heads of 32
// (D = 64), intermediate 256, vocab 512; only the seed differs between suites.
inline model::ToyModelSpec trainer_toy_spec(uint64_t seed) {
  model::ToyModelSpec spec;
  spec.hidden = 128;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 256;
  spec.vocab = 512;
  spec.seed = seed;
  return spec;
}

// The smallest toy model the training tests use: hidden 64, 2 layers, 4 heads / 2 KV heads
// (D 32), intermediate 128, vocabulary 256.
inline model::ToyModelSpec tiny_toy_spec() {
  model::ToyModelSpec spec;
  spec.hidden = 64;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 128;
  spec.vocab = 256;
  return spec;
}

// tiny_toy_spec()'s model in <dir>/model and 20000 toy tokens (vocabulary 256) in
// <dir>/tokens.bin.
inline void write_tiny_model_and_tokens(const std::string& dir) {
  model::write_toy_model(tiny_toy_spec(), dir + "/model");
  model::write_tokens(dir + "/tokens.bin", model::toy_tokens(256, 20000, 7), 256,
                      model::TokenDType::kU16);
}

}  // namespace cskv::data::capture_testing
