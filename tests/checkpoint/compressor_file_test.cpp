// compressor.safetensors through its one owner: write/read round trip, exact errors for a missing
// tensor or setting, training's bytes unchanged, and training and merge writing the same settings.
#include "checkpoint/compressor_file.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "checkpoint/merge.h"
#include "common/fs.h"
#include "tests/checkpoint/checkpoint_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::checkpoint {
namespace {

using test_util::make_state;
using test_util::same_bits;
using trainer::KvKind;

constexpr int64_t H = 8, D = 6;

// Finished jobs of layers 0 and 1, K then V (the order training holds them in).
std::vector<trainer::JobState> finished_states() {
  std::vector<trainer::JobState> out;
  for (int64_t l = 0; l < 2; ++l) {
    for (const KvKind k : {KvKind::kKey, KvKind::kValue}) {
      out.push_back(make_state(l, k, H, k == KvKind::kKey ? 3 : 2, D, 10, 10,
                               static_cast<uint64_t>(10 * l + static_cast<int>(k))));
    }
  }
  return out;
}

trainer::TrainConfig quant_config() {
  trainer::TrainConfig cfg;
  cfg.k_bits = 4;
  cfg.v_bits = 2;
  cfg.group_size = 0;
  cfg.window = 32;
  cfg.quant_compat_cskv = true;
  return cfg;
}

using test::input_error_of;

TEST(CompressorFile, RoundTripKeepsFactorsBitwiseAndSettings) {
  test::TempDir dir;
  const std::string path = dir / "sub/compressor.safetensors";  // parent created
  const auto states = finished_states();
  write_trained_compressor(path, states, "hash1", quant_config());
  const CompressorFile f = read_compressor_file(path);
  EXPECT_EQ(f.path, path);
  EXPECT_EQ(f.settings, compressor_settings("hash1", quant_config()));
  EXPECT_EQ(f.settings.k_bits, 4);
  EXPECT_EQ(f.settings.v_bits, 2);
  EXPECT_EQ(f.settings.window, 32);
  EXPECT_TRUE(f.settings.quant_compat_cskv);
  EXPECT_EQ(f.metadata, compressor_metadata(f.settings));
  ASSERT_EQ(f.factors.size(), states.size());
  for (const auto& s : states) {
    const LinearFactors& lf = f.factors.at({s.job.layer, s.job.kind});
    EXPECT_TRUE(same_bits(lf.a, s.A.t().contiguous())) << s.job.name();
    EXPECT_TRUE(same_bits(lf.b, s.B.t().contiguous())) << s.job.name();
  }
}

TEST(CompressorFile, MetadataSchemaKeys) {
  EXPECT_EQ(compressor_metadata(compressor_settings("h", quant_config())),
            (model::Metadata{{"format", "cskv-1"},
                             {"group_size", "0"},
                             {"k_bits", "4"},
                             {"model_config_hash", "h"},
                             {"quant_compat", "cskv"},
                             {"v_bits", "2"},
                             {"window", "32"}}));
}

// The bytes training wrote before the format had one owner: model::write_safetensors with these
// tensors and this literal metadata.
TEST(CompressorFile, TrainingFileIsByteIdenticalToThePreviousWriter) {
  test::TempDir dir;
  const auto states = finished_states();
  trainer::TrainConfig cfg = quant_config();
  cfg.quant_compat_cskv = false;
  model::NamedTensors tensors;
  for (const auto& s : states) {
    tensors.emplace_back(factor_name(s.job.layer, s.job.kind, 'a'), s.A.t().contiguous());
    tensors.emplace_back(factor_name(s.job.layer, s.job.kind, 'b'), s.B.t().contiguous());
  }
  model::write_safetensors(dir / "old.safetensors", tensors,
                           {{"model_config_hash", "hash1"},
                            {"format", "cskv-1"},
                            {"k_bits", std::to_string(cfg.k_bits)},
                            {"v_bits", std::to_string(cfg.v_bits)},
                            {"group_size", std::to_string(cfg.group_size)},
                            {"window", std::to_string(cfg.window)},
                            {"quant_compat", cfg.quant_compat_cskv ? "cskv" : "none"}});
  write_trained_compressor(dir / "new.safetensors", states, "hash1", cfg);
  EXPECT_EQ(files::read_whole_file(dir / "new.safetensors"),
            files::read_whole_file(dir / "old.safetensors"));
}

TEST(CompressorFile, MissingTensorIsNamed) {
  test::TempDir dir;
  const std::string path = dir / "c.safetensors";
  const auto s = finished_states().front();
  model::write_safetensors(path, {{factor_name(0, KvKind::kKey, 'a'), s.A.t().contiguous()}},
                           compressor_metadata(compressor_settings("h", quant_config())));
  EXPECT_EQ(input_error_of([&] { read_compressor_file(path); }),
            path +
                ": tensor 'model.layers.0.self_attn.k_proj_b.weight' is missing (its partner "
                "is present)");
}

TEST(CompressorFile, MissingOrBadSettingIsNamed) {
  test::TempDir dir;
  const std::string path = dir / "c.safetensors";
  const auto s = finished_states().front();
  const model::NamedTensors tensors = {{factor_name(0, KvKind::kKey, 'a'), s.A.t().contiguous()},
                                       {factor_name(0, KvKind::kKey, 'b'), s.B.t().contiguous()}};
  model::Metadata meta = compressor_metadata(compressor_settings("h", quant_config()));
  meta.erase("window");
  model::write_safetensors(path, tensors, meta);
  EXPECT_EQ(input_error_of([&] { read_compressor_file(path); }),
            path +
                ": __metadata__ has no 'window' (the quantization settings the factors were "
                "trained with); expected a file written by `cskv merge` or `cskv train`");
  meta["window"] = "3x";
  model::write_safetensors(path, tensors, meta);
  EXPECT_EQ(input_error_of([&] { read_compressor_file(path); }),
            path + ": __metadata__ 'window' is '3x', expected an integer");
  meta["window"] = "32";
  meta["quant_compat"] = "maybe";
  model::write_safetensors(path, tensors, meta);
  EXPECT_EQ(input_error_of([&] { read_compressor_file(path); }),
            path + ": __metadata__ 'quant_compat' is 'maybe', expected none or cskv");
}

// Training and `cskv merge` of the same run: the same factors and the same schema keys, written
// by the same compressor_metadata(); merge adds its provenance (config, step, ranks) on top.
TEST(CompressorFile, TrainingAndMergeWriteTheSameSettings) {
  test::TempDir dir;
  const auto states = finished_states();
  const trainer::TrainConfig cfg = quant_config();
  const std::string config_json =
      R"({"model_config_hash":"hash1","k_bits":4,"v_bits":2,"group_size":0,"window":32,)"
      R"("quant_compat":"cskv","init":"pca","layers":[0,1]})";
  const std::vector<trainer::JobState> rank0(states.begin(), states.end());
  write_step_manifest(dir / "ckpt", 10, 1,
                      {write_rank_checkpoint(dir / "ckpt", 10, 0, rank0, config_json)},
                      config_json);
  merge_checkpoint(dir / "ckpt", dir / "merged.safetensors");
  write_trained_compressor(dir / "trained.safetensors", states, "hash1", cfg);

  const CompressorFile trained = read_compressor_file(dir / "trained.safetensors");
  const CompressorFile merged = read_compressor_file(dir / "merged.safetensors");
  EXPECT_EQ(trained.settings, merged.settings);
  for (const auto& [key, value] : trained.metadata) {
    ASSERT_TRUE(merged.metadata.count(key)) << key;
    EXPECT_EQ(merged.metadata.at(key), value) << key;
  }
  EXPECT_EQ(merged.metadata.at("ckpt_step"), "10");
  EXPECT_EQ(merged.metadata.at("k_ranks"), "[3,3]");
  ASSERT_EQ(trained.factors.size(), merged.factors.size());
  for (const auto& [key, lf] : trained.factors) {
    EXPECT_TRUE(same_bits(lf.a, merged.factors.at(key).a));
    EXPECT_TRUE(same_bits(lf.b, merged.factors.at(key).b));
  }
}

}  // namespace
}  // namespace cskv::checkpoint
