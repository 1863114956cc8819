// `cskv train` leaves a complete checkpoint step; `cskv merge` turns it into the same factors as
// the run's own compressor.safetensors, with the resolved config in the metadata, and exports the
// reference implementation's .ckpt files.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using test::run_cskv;

TEST(MergeCli, MergesWhatTrainWroteBitwiseAndRecordsTheConfig) {
  test::TempDir dir;
  const model::ToyModelSpec spec = data::capture_testing::tiny_toy_spec();
  model::write_toy_model(spec, dir / "model");
  model::write_tokens(dir / "tokens.bin", model::toy_tokens(256, 5000, 3), 256,
                      model::TokenDType::kU16);
  auto r = run_cskv({"capture", "--model", dir / "model", "--tokens", dir / "tokens.bin",
                     "--num-seqs", "8", "--seq-len", "32", "--holdout-seqs", "2", "--out",
                     dir / "acts", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_cskv({"train", "--model", dir / "model", "--acts", dir / "acts", "--ckpt-dir",
                dir / "ckpt", "--k-bits", "4", "--v-bits", "8", "--batch-tokens", "64", "--steps",
                "3", "--lr", "1e-3", "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The final checkpoint step is the number of optimizer steps of all jobs: 2 layers × 2 × 3.
  ASSERT_TRUE(fs::exists(dir / "ckpt/step-00000012/manifest.json"));
  r = run_cskv({"merge", "--ckpt-dir", dir / "ckpt", "--out", dir / "merged.safetensors",
                "--export-cskv", dir / "export"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv merge: usage error: --export-cskv needs --model (the model the factors were "
            "trained for: the reference code's shapes and arguments come from its config.json)\n");
  r = run_cskv({"merge", "--ckpt-dir", dir / "ckpt", "--out", dir / "merged.safetensors",
                "--export-cskv", dir / "export", "--model", dir / "model"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The reference code's own file name and the arguments that load the files; it clamps the zero
  // point, this run did not (--quant-compat none): warned.
  const std::string ref_name = "density_k_0.5_v_0.5_quant_k_4_v_8_window_32_";
  EXPECT_EQ(r.out, "merged 4 job(s) of step 12 into " + dir / "merged.safetensors" + "\nexported " +
                       dir / "export/" + ref_name + "_k.ckpt and " + dir / "export/" + ref_name +
                       "_v.ckpt\nreference code: "
                       "--kv_ckpt_root_path " +
                       dir.path() +
                       " --model_id export --k_density 0.5 "
                       "--v_density 0.5 --k_bits 4 --v_bits 8 --use_window --q_window_size 32\n");
  EXPECT_NE(r.err.find("] [checkpoint] warning: --export-cskv: --quant-compat none: the reference "
                       "code clamps the zero point to [0, 2^bits-1], these factors were trained "
                       "without the clamp (train with --quant-compat cskv to match)\n"),
            std::string::npos)
      << r.err;

  const auto trained = model::SafetensorsFile::open(dir / "ckpt/compressor.safetensors");
  const auto merged = model::SafetensorsFile::open(dir / "merged.safetensors");
  ASSERT_EQ(trained->header().tensors.size(), 8u);  // 2 layers × {k, v} × {a, b}
  ASSERT_EQ(merged->header().tensors.size(), 8u);
  for (const auto& [name, entry] : trained->header().tensors) {
    ASSERT_TRUE(merged->contains(name)) << name;
    EXPECT_TRUE(at::equal(trained->get(name), merged->get(name))) << name;
  }
  EXPECT_EQ(trained->get("model.layers.1.self_attn.k_proj_a.weight").sizes(),
            (at::IntArrayRef{16, 64}));  // a = [r, H]: r = floor(0.5 * hd 16) * n_kv 2, H 64
  const auto& meta = merged->header().metadata;
  ASSERT_TRUE(meta.count("cskv_config"));
  const auto cfg = nlohmann::json::parse(meta.at("cskv_config"));
  EXPECT_EQ(cfg.at("k_bits"), 4);
  EXPECT_EQ(cfg.at("v_bits"), 8);
  EXPECT_EQ(cfg.at("init"), "pca");
  EXPECT_EQ(cfg.at("window"), 32);
  EXPECT_EQ(meta.at("ckpt_step"), "12");
  EXPECT_TRUE(fs::exists(dir / ("export/" + ref_name + "_k.ckpt")));
  EXPECT_TRUE(fs::exists(dir / ("export/" + ref_name + "_v.ckpt")));
}

}  // namespace
}  // namespace cskv
