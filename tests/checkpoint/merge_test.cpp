// Merge and export: factors equal Aᵀ/Bᵀ bitwise with the config and ranks in __metadata__,
// unfinished jobs refused by name, and the `cskv merge` CLI whose outputs Python reads
// (torch.load of the .ckpt files, json+struct+numpy of compressor.safetensors).
#include "checkpoint/merge.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint/compressor_file.h"
#include "checkpoint/export_cskv.h"
#include "pipeline/train.h"
#include "tests/checkpoint/checkpoint_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::checkpoint {
namespace {

using checkpoint::factor_name;
using test_util::make_state;
using test_util::same_bits;
using trainer::KvKind;
namespace fs = std::filesystem;

const std::string kConfig =
    R"({"init":"pca","k_bits":4,"k_density":0.5,"model_config_hash":"abc123","rotate":"none",)"
    R"("v_bits":2,"window":32,"group_size":0,"layers":"all"})";

constexpr int64_t H = 8, D = 4;
int64_t rank_of(int64_t layer, KvKind k) { return k == KvKind::kKey ? 3 + layer % 2 : 2; }

// Layers 0..2 K and V over two ranks (K ranks 3, 4, 3 and V 2, or with `uniform_ranks` 2 each);
// `unfinished` jobs stop early.
std::vector<trainer::JobState> save_run(const std::string& dir, int64_t step,
                                        const std::set<std::pair<int64_t, KvKind>>& unfinished = {},
                                        const std::string& config = kConfig,
                                        bool uniform_ranks = false) {
  std::vector<trainer::JobState> all;
  std::vector<RankFileEntry> entries;
  for (int r = 0; r < 2; ++r) {
    std::vector<trainer::JobState> jobs;
    for (int64_t l = r; l < 3; l += 2) {
      for (const KvKind k : {KvKind::kKey, KvKind::kValue}) {
        const int64_t done = unfinished.count({l, k}) ? (k == KvKind::kKey ? 0 : 3) : 10;
        jobs.push_back(
            make_state(l, k, H, uniform_ranks ? 2 : rank_of(l, k), D, done, 10,
                       static_cast<uint64_t>(1000 * step + 10 * l + static_cast<int>(k))));
      }
    }
    entries.push_back(write_rank_checkpoint(dir, step, r, jobs, config));
    all.insert(all.end(), jobs.begin(), jobs.end());
  }
  write_step_manifest(dir, step, 2, entries, config);
  return all;
}

TEST(Merge, FactorsAreTransposedBitwiseWithMetadata) {
  test::TempDir dir;
  const auto states = save_run(dir / "ckpt", 30);
  const std::string out = dir / "out/compressor.safetensors";
  const MergeResult m = merge_checkpoint(dir / "ckpt", out, {{"note", "test"}});
  EXPECT_EQ(m.step, 30);
  EXPECT_EQ(m.jobs, 6u);
  const auto f = model::SafetensorsFile::open(out);
  EXPECT_EQ(f->header().tensors.size(), 12u);
  for (const auto& s : states) {
    const at::Tensor a = f->get(factor_name(s.job.layer, s.job.kind, 'a'));
    const at::Tensor b = f->get(factor_name(s.job.layer, s.job.kind, 'b'));
    EXPECT_EQ(a.sizes(), (at::IntArrayRef{s.job.rank, H})) << s.job.name();
    EXPECT_EQ(b.sizes(), (at::IntArrayRef{D, s.job.rank})) << s.job.name();
    EXPECT_TRUE(same_bits(a, s.A.t().contiguous())) << s.job.name();
    EXPECT_TRUE(same_bits(b, s.B.t().contiguous())) << s.job.name();
  }
  const auto& meta = f->header().metadata;
  EXPECT_EQ(nlohmann::json::parse(meta.at("cskv_config")), nlohmann::json::parse(kConfig));
  EXPECT_EQ(meta.at("format"), "cskv-1");
  EXPECT_EQ(meta.at("ckpt_step"), "30");
  EXPECT_EQ(meta.at("layers"), "[0,1,2]");  // the config's "layers" does not override it
  EXPECT_EQ(meta.at("k_ranks"), "[3,4,3]");
  EXPECT_EQ(meta.at("v_ranks"), "[2,2,2]");
  EXPECT_EQ(meta.at("k_bits"), "4");
  EXPECT_EQ(meta.at("v_bits"), "2");
  EXPECT_EQ(meta.at("window"), "32");
  EXPECT_EQ(meta.at("group_size"), "0");
  EXPECT_EQ(meta.at("init"), "pca");
  EXPECT_EQ(meta.at("rotate"), "none");
  EXPECT_EQ(meta.at("model_config_hash"), "abc123");
  EXPECT_EQ(meta.at("note"), "test");

  const FactorMap back = read_merged_factors(out);
  ASSERT_EQ(back.size(), 6u);
  EXPECT_TRUE(same_bits(back.at({1, KvKind::kKey}).a, m.factors.at({1, KvKind::kKey}).a));
}

TEST(Merge, UsesTheNewestCompleteStep) {
  test::TempDir dir;
  const auto step10 = save_run(dir.path(), 10);
  save_run(dir.path(), 20);
  fs::remove(dir / "step-00000020/rank-1.safetensors");
  const MergeResult m = merge_checkpoint(dir.path(), dir / "c.safetensors");
  EXPECT_EQ(m.step, 10);
  for (const auto& s : step10) {
    EXPECT_TRUE(same_bits(m.factors.at({s.job.layer, s.job.kind}).a, s.A.t().contiguous()));
  }
}

TEST(Merge, UnfinishedJobsAreNamed) {
  test::TempDir dir;
  save_run(dir.path(), 5, {{0, KvKind::kValue}, {1, KvKind::kKey}});
  EXPECT_CSKV_ERROR(merge_checkpoint(dir.path(), dir / "c.safetensors"),
                    dir / "step-00000005" +
                        ": 2 job(s) not finished: layer 0 V (step 3 of 10), layer 1 K (step 0 of "
                        "10); resume training before merging");
  EXPECT_FALSE(fs::exists(dir / "c.safetensors"));
  EXPECT_CSKV_ERROR(merge_checkpoint(dir / "none", dir / "c.safetensors"),
                    "no complete checkpoint in " + dir / "none");
}

TEST(Export, NeedsEveryLayerFromZero) {
  test::TempDir dir;
  FactorMap factors;
  factors[{1, KvKind::kKey}] = {at::zeros({2, 4}), at::zeros({4, 2}), {}};
  factors[{1, KvKind::kValue}] = {at::zeros({2, 4}), at::zeros({4, 2}), {}};
  EXPECT_CSKV_ERROR(export_cskv(factors, dir.path(), "x"),
                    "--export-cskv: the reference format is a list indexed by layer, so it needs K "
                    "and V factors of every layer 0..n-1; found K layers 1 and V layers 1");
  EXPECT_CSKV_ERROR(export_cskv(factors, dir.path(), "a/b"),
                    "--name: expected a plain file-name prefix, found 'a/b'");
}

// Raw float32 bits of a tensor, for an exact comparison in Python.
nlohmann::json bits(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const uint32_t*>(c.data_ptr());
  return {{"shape", c.sizes().vec()}, {"bits", std::vector<uint32_t>(p, p + c.numel())}};
}

// The model of the exported run: hidden 8, 4 heads of 2 channels, 2 KV heads (D = 4), 3 layers.
model::ModelConfig export_model() {
  model::ModelConfig m;
  m.hidden_size = H;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.head_dim = 2;
  m.intermediate_size = 16;
  m.vocab_size = 32;
  return m;
}

TEST(MergeCli, PythonReadsCompressorAndExport) {
  test::TempDir dir;
  const model::ModelConfig model = export_model();
  fs::create_directories(dir / "model");
  test::write_file(dir / "model/config.json", model.to_json());
  nlohmann::json config = nlohmann::json::parse(kConfig);
  config.update({{"model_config_hash", model.hash()},
                 {"v_density", 0.5},
                 {"budget", 0},
                 {"quant_compat", "cskv"}});
  const auto states = save_run(dir / "ckpt", 40, {}, config.dump(), /*uniform_ranks=*/true);
  const std::string out = dir / "compressor.safetensors";
  const auto r = test::run_cskv({"merge", "--ckpt-dir", dir / "ckpt", "--out", out, "--export-cskv",
                                 dir / "export", "--name", "tiny", "--model", dir / "model"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "merged 6 job(s) of step 40 into " + out + "\nexported " +
                       dir / "export/tiny_k.ckpt" + " and " + dir / "export/tiny_v.ckpt" +
                       "\nreference code: --kv_ckpt_root_path " + dir.path() +
                       " --model_id export --k_density 0.5 --v_density 0.5 --k_bits 4 --v_bits 2 "
                       "--use_window --q_window_size 32\n");

  nlohmann::json expected;
  expected["compressor"] = out;
  expected["k_ckpt"] = dir / "export/tiny_k.ckpt";
  expected["v_ckpt"] = dir / "export/tiny_v.ckpt";
  expected["metadata"] = {{"cskv_config", config.dump()},
                          {"k_ranks", "[2,2,2]"},
                          {"k_bits", "4"},
                          {"model_config_hash", model.hash()}};
  for (const auto& s : states) {
    const std::string kind = s.job.kind == KvKind::kKey ? "k" : "v";
    nlohmann::json layer = {{"a", bits(s.A.t())}, {"b", bits(s.B.t())}};
    expected["layers"][kind][std::to_string(s.job.layer)] = layer;
    expected["tensors"][factor_name(s.job.layer, s.job.kind, 'a')] = layer["a"];
    expected["tensors"][factor_name(s.job.layer, s.job.kind, 'b')] = layer["b"];
  }
  test::write_file(dir / "expected.json", expected.dump());
  const auto py = test::run_command(
      {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/checkpoint_check_export.py",
       dir / "expected.json"});
  EXPECT_EQ(py.exit_code, 0) << py.out << py.err;
  EXPECT_EQ(py.out, "ok: 3 layers, 12 tensors\n") << py.err;
}

TEST(MergeCli, NoCheckpointIsAOneLineError) {
  test::TempDir dir;
  const auto r = test::run_cskv({"merge", "--ckpt-dir", dir / "ckpt", "--out", dir / "c.st"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv merge: error: no complete checkpoint in " + dir / "ckpt" + "\n");
  const auto u = test::run_cskv({"merge", "--out", dir / "c.st"});
  EXPECT_EQ(u.exit_code, 2);
}

}  // namespace
}  // namespace cskv::checkpoint
