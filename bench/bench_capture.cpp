// Benchmark of the capture stage: tokens/s, forward FLOP rate vs torch::mm at the same shapes,
// HDF5 write share, ActivationReader vs plain sequential read, peak RSS at two --num-seqs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "comm/local_communicator.h"
#include "data/activation_reader.h"
#include "data/manifest.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/toy_model.h"
#include "model/weights.h"
#include "pipeline/capture.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Args {
  std::string dir = "bench-capture-data";
  int64_t num_seqs = 16;
  int64_t seq_len = 512;
  int64_t batch = 4;
  int threads = 1;
  std::vector<int64_t> rss_seqs = {8, 32};
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir") {
      a.dir = v;
    } else if (k == "--num-seqs") {
      a.num_seqs = std::stoll(v);
    } else if (k == "--seq-len") {
      a.seq_len = std::stoll(v);
    } else if (k == "--batch") {
      a.batch = std::stoll(v);
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else if (k == "--rss-seqs") {
      a.rss_seqs = {std::stoll(v.substr(0, v.find(','))), std::stoll(v.substr(v.find(',') + 1))};
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// The matmul FLOPs of one sequence through one decoder layer as model/llama.cpp computes it
// (q, k, v, o projections, full S x S scores and probs @ v, gate/up/down).
double layer_flops(const cskv::model::ModelConfig& c, int64_t s) {
  const double h = c.hidden_size, kvd = c.num_key_value_heads * c.head_dim;
  const double qd = c.num_attention_heads * c.head_dim, inter = c.intermediate_size;
  const double proj = 2.0 * s * h * (qd + 2 * kvd) + 2.0 * s * qd * h + 3 * 2.0 * s * h * inter;
  const double attn = 2 * 2.0 * c.num_attention_heads * double(s) * s * c.head_dim;
  return proj + attn;
}

// torch::mm / bmm alone at exactly the forward's shapes: FLOP/s of the same work.
double mm_flop_rate(const cskv::model::ModelConfig& c, int64_t s, int reps) {
  const int64_t h = c.hidden_size, kvd = c.num_key_value_heads * c.head_dim;
  const int64_t qd = c.num_attention_heads * c.head_dim, inter = c.intermediate_size;
  const int64_t nh = c.num_attention_heads, hd = c.head_dim;
  struct Mm {
    at::Tensor a, b;
  };
  std::vector<Mm> mms = {{at::randn({s, h}), at::randn({h, qd})},
                         {at::randn({s, h}), at::randn({h, kvd})},
                         {at::randn({s, h}), at::randn({h, kvd})},
                         {at::randn({s, qd}), at::randn({qd, h})},
                         {at::randn({s, h}), at::randn({h, inter})},
                         {at::randn({s, h}), at::randn({h, inter})},
                         {at::randn({s, inter}), at::randn({inter, h})},
                         {at::randn({nh, s, hd}), at::randn({nh, hd, s})},
                         {at::randn({nh, s, s}), at::randn({nh, s, hd})}};
  double flops = 0;
  for (const auto& m : mms) {
    flops += 2.0 * m.a.numel() * m.b.size(-1);
  }
  for (auto& m : mms) (void)(m.a.dim() == 3 ? at::bmm(m.a, m.b) : at::mm(m.a, m.b));  // warm up
  const auto t0 = Clock::now();
  for (int r = 0; r < reps; ++r) {
    for (auto& m : mms) (void)(m.a.dim() == 3 ? at::bmm(m.a, m.b) : at::mm(m.a, m.b));
  }
  return flops * reps / since(t0);
}

// Runs `argv` as a child and returns its peak RSS in MB (wait4's ru_maxrss), or -1.
double child_peak_rss_mb(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  const int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return ru.ru_maxrss / 1024.0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  at::set_num_threads(a.threads);
  fs::create_directories(a.dir);
  const std::string model_dir = a.dir + "/model", tokens = a.dir + "/tokens.bin";
  cskv::model::ToyModelSpec spec;
  spec.hidden = 1024;
  spec.layers = 4;
  spec.heads = 16;
  spec.kv_heads = 4;
  spec.intermediate = 2752;
  spec.vocab = 8192;
  if (!fs::exists(model_dir + "/config.json")) cskv::model::write_toy_model(spec, model_dir);
  if (!fs::exists(tokens)) {
    cskv::model::write_tokens(tokens, cskv::model::toy_tokens(spec.vocab, 1 << 20, 1), spec.vocab,
                              cskv::model::TokenDType::kU16);
  }
  const auto config = cskv::model::load_config(model_dir);
  std::printf(
      "model: hidden %lld, %lld layers, %lld/%lld heads, intermediate %lld, vocab %lld, "
      "f16 weights; seq_len %lld, batch %lld, threads %d\n",
      (long long)config.hidden_size, (long long)config.num_hidden_layers,
      (long long)config.num_attention_heads, (long long)config.num_key_value_heads,
      (long long)config.intermediate_size, (long long)config.vocab_size, (long long)a.seq_len,
      (long long)a.batch, a.threads);

  // (a) + (b): the capture stage end to end.
  cskv::pipeline::CaptureOptions o;
  o.model_dir = model_dir;
  o.tokens_path = tokens;
  o.token_dtype = cskv::data::TokenDtype::kU16;
  o.num_seqs = a.num_seqs;
  o.seq_len = a.seq_len;
  o.holdout_seqs = 0;
  o.batch = a.batch;
  o.out_dir = a.dir + "/acts";
  o.overwrite = true;
  cskv::comm::LocalCommunicator comm;
  const auto r = cskv::pipeline::run_capture(o, comm);
  const double tokens_total = double(r.tokens_captured);
  std::printf(
      "capture: %lld tokens in %.3f s = %.0f tokens/s (forward %.3f s, HDF5 write %.3f s, "
      "stats %.3f s, other %.3f s)\n",
      (long long)r.tokens_captured, r.seconds, tokens_total / r.seconds, r.seconds_forward,
      r.seconds_write, r.seconds_stats,
      r.seconds - r.seconds_forward - r.seconds_write - r.seconds_stats);
  std::printf("HDF5 write share of capture time: %.1f%% (stats share %.1f%%)\n",
              100.0 * r.seconds_write / r.seconds, 100.0 * r.seconds_stats / r.seconds);

  // Forward alone (one sequence per call, as capture runs it) vs torch::mm at the same shapes.
  {
    auto weights = std::make_shared<cskv::model::SafetensorsModel>(
        cskv::model::SafetensorsModel::open_dir(model_dir));
    const cskv::model::LlamaModel llama(config, weights);
    const at::Tensor tok = at::randint(0, config.vocab_size, {1, a.seq_len}, at::kLong);
    cskv::model::ForwardOptions fo;
    fo.last_layer = config.num_hidden_layers - 1;
    llama.forward(tok, {}, fo);  // warm up
    const int reps = 4;
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) llama.forward(tok, {}, fo);
    const double secs = since(t0) / reps;
    const double flops = layer_flops(config, a.seq_len) * config.num_hidden_layers;
    const double fwd_rate = flops / secs;
    const double mm_rate = mm_flop_rate(config, a.seq_len, reps);
    std::printf(
        "forward: %.2f GFLOP per sequence in %.4f s = %.1f GFLOP/s; torch::mm/bmm at the "
        "same shapes %.1f GFLOP/s; ratio %.1f%%\n",
        flops / 1e9, secs, fwd_rate / 1e9, mm_rate / 1e9, 100.0 * fwd_rate / mm_rate);
  }

  // (c) ActivationReader (all layers, prefetch 2) vs plain sequential read of the shard.
  {
    const std::string shard = o.out_dir + "/shard-00000-of-00001.h5";
    std::vector<char> buf(8 << 20);
    const auto t0 = Clock::now();
    const int fd = ::open(shard.c_str(), O_RDONLY);
    double got = 0;
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0) got += double(n);
    ::close(fd);
    const double plain = since(t0);
    double rows_bytes = 0;
    const auto t1 = Clock::now();
    for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
      cskv::data::ActivationReaderOptions ro;
      ro.acts_dir = o.out_dir;
      ro.layer = layer;
      ro.batch_tokens = 4 * a.seq_len;
      cskv::data::ActivationReader reader(ro);
      while (auto b = reader.next()) rows_bytes += double(b->x.numel()) * 2;  // fp16 on disk
    }
    const double rd = since(t1);
    std::printf(
        "read (page cache warm): plain read() %.0f MB in %.3f s = %.0f MB/s; "
        "ActivationReader %.0f MB of fp16 rows in %.3f s = %.0f MB/s (%.0f%% of plain)\n",
        got / 1e6, plain, got / 1e6 / plain, rows_bytes / 1e6, rd, rows_bytes / 1e6 / rd,
        100.0 * (rows_bytes / rd) / (got / plain));
  }

  // (d) Peak RSS of `cskv capture` child processes at two --num-seqs.
  for (const int64_t n : a.rss_seqs) {
    const std::string out = a.dir + "/rss-" + std::to_string(n);
    const double mb =
        child_peak_rss_mb({CSKV_BINARY, "capture", "--model", model_dir, "--tokens", tokens,
                           "--num-seqs", std::to_string(n), "--seq-len", std::to_string(a.seq_len),
                           "--holdout-seqs", "0", "--batch", std::to_string(a.batch), "--threads",
                           std::to_string(a.threads), "--out", out, "--overwrite"});
    std::printf("peak RSS of `cskv capture --num-seqs %lld`: %.1f MB\n", (long long)n, mb);
  }
  return 0;
}
