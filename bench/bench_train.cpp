// Benchmark of the trainer: training-step GFLOP/s vs torch::mm on the same shapes, init time per
// layer (pca / asvd / svd) at hidden 4096, optimizer steps from asvd to pca's step-0 error, and
// the cost of a checkpoint save against the step; (g) the step on --device (a GPU) at Llama-3-8B's
// K/V shapes in fp32 and bf16 against at::mm of the same shapes, streamed and resident.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/rank_checkpoint.h"
#include "checkpoint/step_manifest.h"
#include "common/device.h"
#include "common/threads.h"
#include "data/activation_reader.h"
#include "data/activation_shard.h"
#include "data/manifest.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "trainer/init.h"
#include "trainer/layer_trainer.h"
#include "trainer/quantizer.h"
#include "trainer/rank_allocation.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace tr = cskv::trainer;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Args {
  std::string dir = "bench-train-data";
  int threads = 1;
  int64_t batch_tokens = 4096;
  int64_t steps = 6;       // timed steps per configuration (after 2 warm-up steps)
  int64_t ttq_cap = 2000;  // time-to-quality: step cap
  int64_t ttq_every = 10;  // held-out evaluation interval
  std::string parts = "abc";
  std::string device = "cpu";  // part g
  int64_t rows = 65536;        // part g: calibration rows of the synthetic capture
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir") {
      a.dir = v;
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else if (k == "--batch-tokens") {
      a.batch_tokens = std::stoll(v);
    } else if (k == "--steps") {
      a.steps = std::stoll(v);
    } else if (k == "--ttq-cap") {
      a.ttq_cap = std::stoll(v);
    } else if (k == "--ttq-every") {
      a.ttq_every = std::stoll(v);
    } else if (k == "--parts") {
      a.parts = v;
    } else if (k == "--device") {
      a.device = v;
    } else if (k == "--rows") {
      a.rows = std::stoll(v);
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      std::exit(2);
    }
  }
  return a;
}

// A one-layer model directory with only k_proj/v_proj (what LayerTrainer reads) and a capture
// of `rows` synthetic rows (Gaussian, 1.5% outlier channels ×10) in the given dtype.
cskv::model::ModelConfig write_synthetic(const std::string& dir, int64_t hidden, int64_t n_kv,
                                         int64_t head_dim, int64_t rows,
                                         cskv::data::ActivationDtype dtype) {
  fs::remove_all(dir);
  fs::create_directories(dir + "/model");
  fs::create_directories(dir + "/acts");
  cskv::model::ModelConfig c;
  c.hidden_size = hidden;
  c.num_hidden_layers = 1;
  c.num_attention_heads = hidden / head_dim;
  c.num_key_value_heads = n_kv;
  c.head_dim = head_dim;
  c.intermediate_size = 256;
  c.vocab_size = 256;
  std::ofstream(dir + "/model/config.json") << c.to_json();
  at::manual_seed(1);
  const int64_t d = n_kv * head_dim;
  const double ws = 1.0 / std::sqrt(static_cast<double>(hidden));
  cskv::model::write_safetensors(
      dir + "/model/model.safetensors",
      {{tr::kv_weight_name(0, tr::KvKind::kKey), at::randn({d, hidden}) * ws},
       {tr::kv_weight_name(0, tr::KvKind::kValue), at::randn({d, hidden}) * ws}},
      {});
  const int64_t seq_len = 512;
  cskv::data::ShardHeader h;
  h.model_config_hash = c.hash();
  h.hidden_size = hidden;
  h.num_layers = 1;
  h.layers = {0};
  h.seq_len = seq_len;
  h.dtype = dtype;
  const std::string path = dir + "/acts/" + cskv::data::shard_file_name(0, 1, "train");
  cskv::data::ActivationShardWriter w(path, h);
  at::Tensor scale = at::ones({hidden});
  scale.narrow(0, 0, std::max<int64_t>(1, hidden * 15 / 1000)).fill_(10.0);
  for (int64_t s = 0; s < rows / seq_len; ++s) {
    w.append(0, at::randn({seq_len, hidden}) * scale);
    w.append_tokens({s}, at::zeros({1, seq_len}, at::kLong));
  }
  cskv::data::write_manifest(dir + "/acts", {cskv::data::manifest_entry(w.finish())});
  return c;
}

// The matmuls of one training step (trainer/layer_trainer.cpp), in the same layouts.
struct StepShapes {
  int64_t n, h, d, r;
  double flops() const {
    // K = XWᵀ, c = XA, Q(c)B, dB = Q(c)ᵀG, dc = GBᵀ, dA = Xᵀdc.
    return 2.0 * n * (static_cast<double>(h) * d + 2.0 * h * r + 3.0 * r * d);
  }
};

double mm_gflops(const StepShapes& s, int reps) {
  const at::Tensor X = at::randn({s.n, s.h}), Wt = at::randn({s.d, s.h}).t().contiguous();
  const at::Tensor A = at::randn({s.h, s.r}), B = at::randn({s.r, s.d});
  const at::Tensor c = at::randn({s.n, s.r}), G = at::randn({s.n, s.d});
  auto once = [&] {
    (void)at::mm(X, Wt);
    (void)at::mm(X, A);
    (void)at::mm(c, B);
    (void)at::mm(c.t(), G);
    (void)at::mm(G, B.t());
    (void)at::mm(X.t(), c);
  };
  once();
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) once();
  return s.flops() * reps / since(t0) / 1e9;
}

// A layer-0 K job at `rank` with small random factors and zero moments (seeded: the same each
// time), to be trained for total_steps.
tr::JobState random_state(const cskv::model::ModelConfig& c, int64_t rank, int64_t total_steps) {
  tr::JobState s;
  s.job = {0, tr::KvKind::kKey, rank};
  at::manual_seed(2);
  s.A = at::randn({c.hidden_size, rank}) * 0.02;
  s.B = at::randn({rank, c.kv_dim()}) * 0.02;
  s.m_A = at::zeros_like(s.A);
  s.v_A = at::zeros_like(s.A);
  s.m_B = at::zeros_like(s.B);
  s.v_B = at::zeros_like(s.B);
  s.total_steps = total_steps;
  return s;
}

// Steady-state seconds per optimizer step of LayerTrainer::train (real reader, prefetch on).
double step_seconds(const std::string& dir, const cskv::model::ModelConfig& c, int64_t rank,
                    int bits, int64_t batch_tokens, int64_t steps) {
  tr::TrainConfig cfg;
  cfg.k_bits = bits;
  cfg.batch_tokens = batch_tokens;
  cfg.steps = steps + 2;
  cfg.lr = 1e-4;
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(dir + "/model"));
  tr::LayerTrainer trainer(cfg, c, weights, dir + "/acts");
  tr::JobState s = random_state(c, rank, cfg.steps);
  Clock::time_point t_first;
  trainer.train(s, s.total_steps, [&](const tr::JobState& st) {
    if (st.step == 2) t_first = Clock::now();  // steps 1-2: reader start-up, first touches
    return true;
  });
  return since(t_first) / static_cast<double>(steps);
}

void part_a(const Args& a) {
  std::printf("\n## (a) training step vs torch::mm (threads %d, batch %lld tokens)\n", a.threads,
              static_cast<long long>(a.batch_tokens));
  std::printf(
      "| hidden | D | r | shard dtype | bits | step ms | step GFLOP/s | mm GFLOP/s | share "
      "| quantizer ms | reader ms/batch |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
  struct Case {
    int64_t hidden, n_kv, hd;
  };
  for (const Case cs : {Case{1024, 4, 64}, Case{4096, 8, 128}}) {
    for (const auto dtype :
         {cskv::data::ActivationDtype::kFloat16, cskv::data::ActivationDtype::kFloat32}) {
      const std::string dir = a.dir + "/step-" + std::to_string(cs.hidden);
      const auto c = write_synthetic(dir, cs.hidden, cs.n_kv, cs.hd, 2 * a.batch_tokens, dtype);
      const int64_t d = c.kv_dim(), r = d / 2;
      const StepShapes shapes{a.batch_tokens, cs.hidden, d, r};
      const double mm = mm_gflops(shapes, 3);
      // Reader alone: seconds per batch (converted, finiteness-checked float32 rows).
      cskv::data::ActivationReaderOptions ro;
      ro.acts_dir = dir + "/acts";
      ro.batch_tokens = a.batch_tokens;
      ro.num_epochs = -1;
      ro.prefetch_batches = 0;
      cskv::data::ActivationReader reader(ro);
      (void)reader.next();
      auto t0 = Clock::now();
      for (int i = 0; i < 4; ++i) (void)reader.next();
      const double read_ms = since(t0) / 4 * 1e3;
      for (const int bits : {16, 4}) {
        tr::QuantConfig q;
        q.bits = bits;
        q.window = 32;
        q.per_channel = true;
        const at::Tensor lat = at::randn({a.batch_tokens, r});
        (void)tr::fake_quantize_with_mask(lat, q);
        t0 = Clock::now();
        for (int i = 0; i < 5; ++i) (void)tr::fake_quantize_with_mask(lat, q);
        const double q_ms = since(t0) / 5 * 1e3;
        const double sec = step_seconds(dir, c, r, bits, a.batch_tokens, a.steps);
        const double gf = shapes.flops() / sec / 1e9;
        std::printf(
            "| %lld | %lld | %lld | %s | %d | %.1f | %.1f | %.1f | %.0f%% | %.2f | %.1f |\n",
            static_cast<long long>(cs.hidden), static_cast<long long>(d), static_cast<long long>(r),
            cskv::data::activation_dtype_name(dtype), bits, sec * 1e3, gf, mm, 100 * gf / mm, q_ms,
            read_ms);
        std::fflush(stdout);
      }
      fs::remove_all(dir);
    }
  }
}

// Part g: the six step matmuls timed on `device` in `precision` (TFLOP/s).
double mm_tflops_on(const StepShapes& s, at::Device device, cskv::device::Precision p, int reps) {
  const auto o = at::TensorOptions().device(device);
  const at::Tensor X = at::randn({s.n, s.h}, o), Wt = at::randn({s.d, s.h}, o).t().contiguous();
  const at::Tensor A = at::randn({s.h, s.r}, o), B = at::randn({s.r, s.d}, o);
  const at::Tensor c = at::randn({s.n, s.r}, o), G = at::randn({s.n, s.d}, o);
  const bool bf = p == cskv::device::Precision::kBf16;
  const auto cast = [&](const at::Tensor& t) { return bf ? t.to(at::kBFloat16) : t; };
  const at::Tensor Xc = cast(X), Wc = cast(Wt), Ac = cast(A), Bc = cast(B), cc = cast(c),
                   Gc = cast(G);
  auto once = [&] {
    (void)at::mm(Xc, Wc);
    (void)at::mm(Xc, Ac);
    (void)at::mm(cc, Bc);
    (void)at::mm(cc.t(), Gc);
    (void)at::mm(Gc, Bc.t());
    (void)at::mm(Xc.t(), cc);
  };
  once();
  cskv::device::synchronize(device);
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) once();
  cskv::device::synchronize(device);
  return s.flops() * reps / since(t0) / 1e12;
}

// Wall seconds of LayerTrainer::train for `steps` steps after 2 warm-up steps, the device's
// queue drained at both ends.
double job_step_seconds(const std::string& dir, const cskv::model::ModelConfig& c, int64_t rank,
                        const tr::TrainConfig& base, const tr::TrainDevice& dev, int64_t steps) {
  tr::TrainConfig cfg = base;
  cfg.steps = steps + 2;
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(dir + "/model"));
  tr::LayerTrainer trainer(cfg, c, weights, dir + "/acts", dev);
  tr::JobState s = random_state(c, rank, cfg.steps);
  Clock::time_point t_first;
  trainer.train(s, s.total_steps, [&](const tr::JobState& st) {
    if (st.step == 2) {
      cskv::device::synchronize(dev.device);
      t_first = Clock::now();
    }
    return true;
  });
  cskv::device::synchronize(dev.device);
  return since(t_first) / static_cast<double>(steps);
}

// Llama-3-8B's K job shapes (hidden 4096, 8 KV heads x 128, r = D/2) on --device: the step in
// fp32 and bf16 next to at::mm in the same precision, streamed from the shards and resident.
// busy = resident step time / streamed step time: the share of a streamed job the device works
// (1.0: the reader and the transfers never hold it up).
void part_g(const Args& a) {
  const at::Device device = cskv::device::select(a.device, 0);
  std::printf("\n## (g) training step on %s: hidden 4096, D 1024, r 512, batch %lld, %lld rows\n",
              device.str().c_str(), static_cast<long long>(a.batch_tokens),
              static_cast<long long>(a.rows));
  std::printf(
      "| precision | residency | step ms | step TFLOP/s | at::mm TFLOP/s | share | busy |\n"
      "|---|---|---|---|---|---|---|\n");
  const std::string dir = a.dir + "/gpu";
  const auto c = write_synthetic(dir, 4096, 8, 128, a.rows, cskv::data::ActivationDtype::kFloat16);
  const int64_t d = c.kv_dim(), r = d / 2;
  const StepShapes shapes{a.batch_tokens, 4096, d, r};
  for (const auto p : {cskv::device::Precision::kFp32, cskv::device::Precision::kBf16}) {
    tr::TrainConfig cfg;
    cfg.k_bits = 4;
    cfg.batch_tokens = a.batch_tokens;
    cfg.lr = 1e-4;
    cfg.precision = p;
    cskv::device::configure(device, p);
    const double mm = mm_tflops_on(shapes, device, p, 5);
    double resident_s = 0;
    for (const auto res : {tr::Residency::kOn, tr::Residency::kOff}) {
      const tr::TrainDevice dev{device, res, 0.5, std::nullopt};
      const double sec = job_step_seconds(dir, c, r, cfg, dev, a.steps);
      if (res == tr::Residency::kOn) resident_s = sec;
      const double tf = shapes.flops() / sec / 1e12;
      std::printf("| %s | %s | %.2f | %.1f | %.1f | %.0f%% | %.0f%% |\n",
                  cskv::device::precision_name(p), tr::residency_name(res), sec * 1e3, tf, mm,
                  100 * tf / mm, 100 * resident_s / sec);
      std::fflush(stdout);
    }
  }
  fs::remove_all(dir);
}

void part_b(const Args& a) {
  std::printf("\n## (b) init time per layer at hidden 4096, D 1024 (8 x 128), r 512 (threads %d)\n",
              a.threads);
  std::printf(
      "| init | seconds (best of 2) | 16-bit relative error from the Gram |\n|---|---|---|\n");
  const int64_t h = 4096, d = 1024, r = 512;
  at::manual_seed(3);
  at::Tensor scale = at::ones({h});
  scale.narrow(0, 0, h * 15 / 1000).fill_(10.0);
  const at::Tensor x = (at::randn({8192, h}) * scale).to(at::kDouble);
  const at::Tensor gram = at::mm(x.t(), x);
  const at::Tensor abs_mean = x.abs().mean(0);
  const at::Tensor w = (at::randn({d, h}) / std::sqrt(static_cast<double>(h))).to(at::kHalf);
  for (const auto m : {tr::InitMethod::kPca, tr::InitMethod::kAsvd, tr::InitMethod::kSvd}) {
    double best = 1e30;
    tr::InitResult res;
    for (int rep = 0; rep < 2; ++rep) {
      const auto t0 = Clock::now();
      res = tr::init_factors(m, w, r, gram, abs_mean, "bench", 0.5);
      best = std::min(best, since(t0));
    }
    std::printf("| %s | %.2f | %.5f |\n", tr::init_method_name(m), best,
                tr::relative_error_from_gram(gram, w, res.A, res.B));
    std::fflush(stdout);
  }
}

int spawn_quiet(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& s : argv) args.push_back(const_cast<char*>(s.c_str()));
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
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void part_c(const Args& a) {
  const std::string dir = a.dir + "/ttq";
  fs::remove_all(dir);
  cskv::model::ToyModelSpec spec;  // default hidden 256, 8 heads, 2 KV heads (D 64); 2 layers
  spec.layers = 2;
  cskv::model::write_toy_model(spec, dir + "/model");
  cskv::model::write_tokens(dir + "/tokens.bin", cskv::model::toy_tokens(1024, 200000, 1), 1024,
                            cskv::model::TokenDType::kU16);
  if (spawn_quiet({CSKV_BINARY, "capture", "--model", dir + "/model", "--tokens",
                   dir + "/tokens.bin", "--num-seqs", "128", "--seq-len", "128", "--holdout-seqs",
                   "16", "--batch", "8", "--out", dir + "/acts"}) != 0) {
    std::fprintf(stderr, "capture failed\n");
    std::exit(1);
  }
  const auto config = cskv::model::load_config(dir + "/model");
  auto weights = std::make_shared<cskv::model::SafetensorsModel>(
      cskv::model::SafetensorsModel::open_dir(dir + "/model"));
  const int64_t rank = tr::rank_from_density(0.5, config.head_dim, config.num_key_value_heads, "");
  std::printf(
      "\n## (c) time-to-quality: toy model (hidden 256, D 64, r %lld), 16384 training "
      "tokens, batch 1024, held-out error every %lld steps, cap %lld steps\n",
      static_cast<long long>(rank), static_cast<long long>(a.ttq_every),
      static_cast<long long>(a.ttq_cap));
  std::printf(
      "| bits | lr | job | pca step 0 (target) | asvd step 0 | steps to target | asvd at cap "
      "| seconds |\n|---|---|---|---|---|---|---|---|\n");
  for (const int bits : {16, 4}) {
    for (const double lr : {5e-5, 1e-3}) {
      tr::TrainConfig cfg;
      cfg.k_bits = cfg.v_bits = bits;
      cfg.batch_tokens = 1024;
      cfg.steps = a.ttq_cap;
      cfg.lr = lr;
      tr::TrainConfig pca_cfg = cfg;
      cfg.init = tr::InitMethod::kAsvd;
      const tr::LayerTrainer pca(pca_cfg, config, weights, dir + "/acts");
      const tr::LayerTrainer asvd(cfg, config, weights, dir + "/acts");
      for (int64_t layer = 0; layer < 2; ++layer) {
        for (const auto kind : {tr::KvKind::kKey, tr::KvKind::kValue}) {
          const tr::LayerJob job{layer, kind, rank};
          const double target = pca.relative_error(pca.init(job), "holdout", bits < 16);
          tr::JobState s = asvd.init(job);
          const double start = asvd.relative_error(s, "holdout", bits < 16);
          double err = start;
          int64_t reached = -1;
          const auto t0 = Clock::now();
          while (s.step < s.total_steps && reached < 0) {
            asvd.train(s, s.step + a.ttq_every);
            err = asvd.relative_error(s, "holdout", bits < 16);
            if (err <= target) reached = s.step;
          }
          char steps[64];
          if (reached >= 0) {
            std::snprintf(steps, sizeof steps, "%lld", static_cast<long long>(reached));
          } else {
            std::snprintf(steps, sizeof steps, "not reached within %lld",
                          static_cast<long long>(a.ttq_cap));
          }
          std::printf("| %d | %g | %s | %.5f | %.5f | %s | %.5f | %.1f |\n", bits, lr,
                      job.name().c_str(), target, start, steps, err, since(t0));
          std::fflush(stdout);
        }
      }
    }
  }
  fs::remove_all(dir);
}

// (d) Checkpoint cost: one save of a job's whole state (A, B, AdamW moments, eigenvalues: the
// rank file, fsync, rename, manifest, prune) against the training step at the same shapes, and
// the resulting share of wall time at the default --save-every (500) and at 100.
void part_d(const Args& a) {
  std::printf(
      "\n## (d) checkpoint save vs training step (one job per rank file, batch %lld, 4 bits)\n",
      static_cast<long long>(a.batch_tokens));
  std::printf(
      "| hidden | D | r | rank file MB | save ms (best of 5) | step ms | share at --save-every "
      "500 | at 100 |\n|---|---|---|---|---|---|---|---|\n");
  struct Case {
    int64_t hidden, n_kv, hd;
  };
  for (const Case cs : {Case{1024, 4, 64}, Case{4096, 8, 128}}) {
    const std::string dir = a.dir + "/ckpt-" + std::to_string(cs.hidden);
    const auto c = write_synthetic(dir, cs.hidden, cs.n_kv, cs.hd, 2 * a.batch_tokens,
                                   cskv::data::ActivationDtype::kFloat16);
    const int64_t d = c.kv_dim(), r = d / 2;
    const double step = step_seconds(dir, c, r, 4, a.batch_tokens, 4);
    tr::JobState s;
    s.job = {0, tr::KvKind::kKey, r};
    s.A = at::randn({c.hidden_size, r});
    s.B = at::randn({r, d});
    s.m_A = at::randn({c.hidden_size, r});
    s.v_A = at::rand({c.hidden_size, r});
    s.m_B = at::randn({r, d});
    s.v_B = at::rand({r, d});
    s.eigenvalues = at::rand({d}, at::TensorOptions().dtype(at::kDouble));
    s.total_steps = 1000;
    const std::string config = "{\"bench\": true}";
    double best = 1e30;
    uint64_t bytes = 0;
    for (int i = 1; i <= 5; ++i) {
      s.step = i;
      const auto t0 = Clock::now();
      const auto entry = cskv::checkpoint::write_rank_checkpoint(dir + "/ck", i, 0, {s}, config);
      cskv::checkpoint::write_step_manifest(dir + "/ck", i, 1, {entry}, config);
      cskv::checkpoint::prune_steps(dir + "/ck", 2, /*verify_checksums=*/false);
      best = std::min(best, since(t0));
      bytes = entry.bytes;
    }
    std::printf("| %lld | %lld | %lld | %.1f | %.1f | %.1f | **%.2f%%** | %.2f%% |\n",
                static_cast<long long>(cs.hidden), static_cast<long long>(d),
                static_cast<long long>(r), static_cast<double>(bytes) / 1e6, best * 1e3, step * 1e3,
                100.0 * best / (500 * step + best), 100.0 * best / (100 * step + best));
    std::fflush(stdout);
    fs::remove_all(dir);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  cskv::set_compute_threads(a.threads);
  fs::create_directories(a.dir);
  if (a.parts.find('a') != std::string::npos) part_a(a);
  if (a.parts.find('b') != std::string::npos) part_b(a);
  if (a.parts.find('c') != std::string::npos) part_c(a);
  if (a.parts.find('d') != std::string::npos) part_d(a);
  if (a.parts.find('g') != std::string::npos) part_g(a);
  fs::remove_all(a.dir);
  return 0;
}
