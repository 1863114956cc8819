// Single-process training run: job planning (density or budget), the job loop with progress,
// evaluation on the held-out split, and the written factors + metrics.
#include "trainer/train_run.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "comm/local_communicator.h"
#include "common/error.h"
#include "common/log.h"
#include "data/atomic_file.h"
#include "data/layer_stats.h"
#include "model/safetensors.h"
#include "trainer/rank_allocation.h"
#include "trainer/schedule.h"

namespace cskv::trainer {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string factor_name(int64_t layer, KvKind kind, char which) {
  return "model.layers." + std::to_string(layer) + ".self_attn." +
         (kind == KvKind::kKey ? "k" : "v") + "_proj_" + std::string(1, which) + ".weight";
}

std::vector<LayerJob> plan_jobs(const TrainRunOptions& o, const model::ModelConfig& model,
                                const model::SafetensorsModel& weights) {
  const auto header = data::read_stats_header(o.acts_dir + "/stats.h5", model.hash());
  std::vector<int64_t> layers = o.layers.empty() ? header.layers : o.layers;
  for (const int64_t l : layers) {
    CSKV_CHECK_USAGE(
        std::find(header.layers.begin(), header.layers.end(), l) != header.layers.end(),
        "--layers: layer " << l << " was not captured in " << o.acts_dir);
  }
  std::vector<LayerJob> jobs;
  const int64_t D = model.kv_dim();
  auto log = log::get("trainer");
  if (o.budget > 0) {
    std::vector<at::Tensor> k_eigs, v_eigs;
    for (const int64_t l : layers) {
      const auto st = data::read_layer_stats(o.acts_dir + "/stats.h5", l);
      k_eigs.push_back(layer_spectrum(weights, l, KvKind::kKey, st.gram));
      v_eigs.push_back(layer_spectrum(weights, l, KvKind::kValue, st.gram));
    }
    const int64_t multiple =
        o.rank_multiple > 0 ? o.rank_multiple : default_rank_multiple(model.num_key_value_heads);
    const auto alloc = allocate_budget(k_eigs, v_eigs, o.budget, D, multiple);
    for (size_t i = 0; i < layers.size(); ++i) {
      jobs.push_back({layers[i], KvKind::kKey, alloc[i].k});
      jobs.push_back({layers[i], KvKind::kValue, alloc[i].v});
      log->info("layer {}: r_k {} (floor {:.4g}), r_v {} (floor {:.4g})", layers[i], alloc[i].k,
                floor_for_rank(k_eigs[i], alloc[i].k), alloc[i].v,
                floor_for_rank(v_eigs[i], alloc[i].v));
    }
    const FloorSummary f = expected_floor(k_eigs, v_eigs, alloc);
    log->info("budget {}: expected 16-bit floor mean K {:.4g}, mean V {:.4g} (sum {:.4g})",
              o.budget, f.mean_k, f.mean_v, f.sum);
  } else {
    const int64_t rk =
        rank_from_density(o.k_density, model.head_dim, model.num_key_value_heads, "--k-density");
    const int64_t rv =
        rank_from_density(o.v_density, model.head_dim, model.num_key_value_heads, "--v-density");
    for (const int64_t l : layers) {
      jobs.push_back({l, KvKind::kKey, rk});
      jobs.push_back({l, KvKind::kValue, rv});
    }
    log->info("ranks: r_k {} r_v {} of D {} for {} layer(s)", rk, rv, D, layers.size());
  }
  return jobs;
}

std::string resolved_config_json(const TrainRunOptions& o, const model::ModelConfig& model,
                                 int threads) {
  const auto& c = o.cfg;
  nlohmann::json j;
  j["model_config_hash"] = model.hash();
  j["acts"] = fs::absolute(o.acts_dir).string();
  j["layers"] = o.layers;
  j["k_density"] = o.k_density;
  j["v_density"] = o.v_density;
  j["budget"] = o.budget;
  j["rank_multiple"] = o.rank_multiple;
  j["init"] = init_method_name(c.init);
  j["asvd_alpha"] = c.asvd_alpha;
  j["rotation"] = c.rotate_hadamard ? "hadamard" : "none";
  j["k_bits"] = c.k_bits;
  j["v_bits"] = c.v_bits;
  j["group_size"] = c.group_size;
  j["window"] = c.window;
  j["quant_compat"] = c.quant_compat_cskv ? "cskv" : "none";
  j["lr"] = c.lr;
  j["warmup"] = c.warmup;
  j["steps"] = c.steps;
  j["epochs"] = c.epochs;
  j["batch_tokens"] = c.batch_tokens;
  j["clip"] = c.clip;
  j["seed"] = c.seed;
  j["threads"] = threads;
  return j.dump();
}

namespace {

// The scalars of a finished job and its metrics, as exact text (hex floats) for broadcasting.
std::string encode_job(const JobState& s, const JobMetrics& m) {
  char buf[1024];
  std::snprintf(buf, sizeof buf, "%lld %lld %lld %a %a %a %a %a %a %a %a %lld",
                static_cast<long long>(s.step), static_cast<long long>(s.total_steps),
                static_cast<long long>(s.data_position), s.floor, s.last_loss, m.train_error_init,
                m.train_error, m.holdout_error_init_q, m.holdout_error_q, m.holdout_error,
                m.seconds, static_cast<long long>(m.steps));
  return buf;
}

void decode_job(const std::string& text, JobState& s, JobMetrics& m) {
  long long step = 0, total = 0, pos = 0, steps = 0;
  const int n = std::sscanf(text.c_str(), "%lld %lld %lld %la %la %la %la %la %la %la %la %lld",
                            &step, &total, &pos, &s.floor, &s.last_loss, &m.train_error_init,
                            &m.train_error, &m.holdout_error_init_q, &m.holdout_error_q,
                            &m.holdout_error, &m.seconds, &steps);
  CSKV_CHECK(n == 12, "train: malformed job summary from its owner rank: '" << text << "'");
  s.step = step;
  s.total_steps = total;
  s.data_position = pos;
  m.steps = steps;
  m.floor = s.floor;
}

}  // namespace

TrainRunResult run_training(const TrainRunOptions& o) {
  comm::LocalCommunicator local;
  return run_training(o, local);
}

TrainRunResult run_training(const TrainRunOptions& o, comm::Communicator& comm) {
  const model::ModelConfig model = model::load_config(o.model_dir);
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(o.model_dir));
  const auto jobs = plan_jobs(o, model, *weights);
  LayerTrainer trainer(o.cfg, model, weights, o.acts_dir);
  auto log = log::get("trainer");
  // Layer-parallel: every rank computes the same assignment; a job's numbers depend only on the
  // job (its data, seed and the fixed thread count), never on which rank or how many ranks.
  std::vector<double> costs;
  for (const auto& j : jobs) {
    costs.push_back(
        job_cost(j, model.hidden_size, model.kv_dim(), trainer.total_steps(j), o.cfg.batch_tokens));
  }
  const std::vector<int> owner = assign_jobs_lpt(costs, comm.size());
  const int me = comm.rank();
  TrainRunResult result;
  std::vector<JobMetrics> metrics(jobs.size());
  std::vector<JobState> states(jobs.size());
  const auto t_run = Clock::now();
  size_t mine = 0, done = 0;
  for (size_t i = 0; i < jobs.size(); ++i) mine += owner[i] == me;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (owner[i] != me) continue;
    ++done;
    const auto t0 = Clock::now();
    JobState s = trainer.init(jobs[i]);
    JobMetrics m;
    m.job = jobs[i];
    m.bits = jobs[i].kind == KvKind::kKey ? o.cfg.k_bits : o.cfg.v_bits;
    m.floor = s.floor;
    m.train_error_init = trainer.relative_error(s, "train", false);
    m.holdout_error_init_q = trainer.relative_error(s, "holdout", true);
    log->info("{} (rank {}): 16-bit floor {:.6g}, init train error {:.6g}", jobs[i].name(),
              jobs[i].rank, s.floor, m.train_error_init);
    auto last = Clock::now();
    trainer.train(s, s.total_steps, [&](const JobState& st) {
      const auto now = Clock::now();
      if (std::chrono::duration<double>(now - last).count() >= 2.0 || st.step == st.total_steps) {
        last = now;
        const double el = std::chrono::duration<double>(now - t0).count();
        const double rate = st.step / std::max(el, 1e-9);
        log->info("{}: step {}/{} loss {:.6g} ({:.1f} steps/s, ETA {:.0f} s; job {}/{} here)",
                  jobs[i].name(), st.step, st.total_steps, st.last_loss, rate,
                  (st.total_steps - st.step) / std::max(rate, 1e-9), done, mine);
      }
      return true;
    });
    m.steps = s.step;
    m.train_error = trainer.relative_error(s, "train", false);
    m.holdout_error_q = trainer.relative_error(s, "holdout", true);
    m.holdout_error = trainer.relative_error(s, "holdout", false);
    m.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    metrics[i] = m;
    states[i] = std::move(s);
  }
  // Every finished job travels from its owner to all ranks, bit for bit, in job order.
  if (comm.size() > 1) {
    const int64_t H = model.hidden_size, D = model.kv_dim();
    for (size_t i = 0; i < jobs.size(); ++i) {
      JobState& s = states[i];
      JobMetrics& m = metrics[i];
      std::string summary = owner[i] == me ? encode_job(s, m) : std::string();
      comm.broadcast_bytes(summary, owner[i]);
      if (owner[i] != me) {
        const int64_t r = jobs[i].rank;
        s.job = jobs[i];
        m.job = jobs[i];
        m.bits = jobs[i].kind == KvKind::kKey ? o.cfg.k_bits : o.cfg.v_bits;
        decode_job(summary, s, m);
        s.A = at::zeros({H, r}, at::kFloat);
        s.B = at::zeros({r, D}, at::kFloat);
        s.m_A = at::zeros({H, r}, at::kFloat);
        s.v_A = at::zeros({H, r}, at::kFloat);
        s.m_B = at::zeros({r, D}, at::kFloat);
        s.v_B = at::zeros({r, D}, at::kFloat);
        s.eigenvalues = at::zeros({D}, at::kDouble);
      }
      for (at::Tensor* t : {&s.A, &s.B, &s.m_A, &s.v_A, &s.m_B, &s.v_B, &s.eigenvalues}) {
        if (owner[i] == me) *t = t->contiguous();
        comm.broadcast(*t, owner[i]);
      }
    }
  }
  result.states = std::move(states);
  result.metrics = summarize(model, o.cfg, metrics, o.context);
  result.factors_path = o.ckpt_dir + "/compressor.safetensors";
  if (me == 0) {
    fs::create_directories(o.ckpt_dir);
    model::NamedTensors tensors;
    for (const auto& s : result.states) {
      tensors.emplace_back(factor_name(s.job.layer, s.job.kind, 'a'), s.A.t().contiguous());
      tensors.emplace_back(factor_name(s.job.layer, s.job.kind, 'b'), s.B.t().contiguous());
    }
    // The quantization settings travel with the factors (as in a merged file), so `cskv eval`
    // can build the cache they were trained for.
    model::write_safetensors(result.factors_path, tensors,
                             {{"model_config_hash", model.hash()},
                              {"format", "cskv-1"},
                              {"k_bits", std::to_string(o.cfg.k_bits)},
                              {"v_bits", std::to_string(o.cfg.v_bits)},
                              {"group_size", std::to_string(o.cfg.group_size)},
                              {"window", std::to_string(o.cfg.window)},
                              {"quant_compat", o.cfg.quant_compat_cskv ? "cskv" : "none"}});
    data::write_file_atomic(o.ckpt_dir + "/metrics.json", metrics_json(result.metrics) + "\n");
    data::write_file_atomic(o.ckpt_dir + "/metrics.md", metrics_markdown(result.metrics));
  }
  comm.barrier();
  log->info("trained {} job(s) ({} on this rank of {}) in {:.1f} s; factors in {}", jobs.size(),
            mine, comm.size(), std::chrono::duration<double>(Clock::now() - t_run).count(),
            result.factors_path);
  return result;
}

}  // namespace cskv::trainer
