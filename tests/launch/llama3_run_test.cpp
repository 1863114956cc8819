// Issue 14's acceptance line: a Llama-3-style model directory — config.json as Llama-3.1 ships it
// (rope_scaling llama3 under the rope_type key, rope_theta 500000, bfloat16, a list of eos ids),
// generation_config.json, tokenizer_config.json and a tokenizer.json in Llama-3's configuration
// (Split regex + ByteLevel, ignore_merges, <|begin_of_text|> template) built with the tokenizers
// package — runs capture → train → merge → eval as one `cskv run` from real TinyStories text.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/activation_reader.h"
#include "data/activation_shard.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kText =
    std::string(CSKV_SOURCE_DIR) + "/../shared/data/tinystories/tinystories-original.txt";
constexpr int64_t kSeqLen = 64, kHoldout = 3, kLayers = 2, kHidden = 64;
// Bound on eval's mean KL (nats/token) of this job (K4/V4 at density 0.5, 3 held-out sequences ×
// 16 decode steps): measured 0.00646 on 2026-12-07 (fp16 cache 4.1e-8), README's Llama-3 row.
constexpr double kKlBound = 0.015;

// Why the Python references cannot run here ("" when they can).
std::string python_missing() {
  if (!fs::exists(test::python3())) {
    return "the project venv's Python " + test::python3() + " is absent (launch/install-deps.sh)";
  }
  // find_spec: whether they are installed, without the seconds an import takes.
  const auto r = test::run_command({test::python3(), "-c",
                                    "import importlib.util, sys; "
                                    "sys.exit(any(importlib.util.find_spec(m) is None for m in "
                                    "('tokenizers', 'transformers')))"});
  if (r.exit_code == 0) return "";
  return "the Python packages tokenizers and transformers are not both installed in " +
         test::python3() + " (launch/install-deps.sh)";
}

// config.json with Llama-3.1-8B's keys and rope parameters, at toy sizes.
json llama31_config(int64_t vocab, int64_t bos, int64_t eos) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"bos_token_id", bos},
          {"eos_token_id", {eos, eos + 1, eos + 2}},
          {"head_dim", kHidden / 4},
          {"hidden_act", "silu"},
          {"hidden_size", kHidden},
          {"initializer_range", 0.02},
          {"intermediate_size", 128},
          {"max_position_embeddings", 131072},
          {"mlp_bias", false},
          {"model_type", "llama"},
          {"num_attention_heads", 4},
          {"num_hidden_layers", kLayers},
          {"num_key_value_heads", 2},
          {"pretraining_tp", 1},
          {"rms_norm_eps", 1e-05},
          {"rope_scaling",
           {{"factor", 8.0},
            {"high_freq_factor", 4.0},
            {"low_freq_factor", 1.0},
            {"original_max_position_embeddings", 8192},
            {"rope_type", "llama3"}}},
          {"rope_theta", 500000.0},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.43.0.dev0"},
          {"use_cache", true},
          {"vocab_size", vocab}};
}

// The toy model's weights (bfloat16, random), the Llama-3.1 files beside them, and the tokenizer;
// returns what the tokenizers package says of the text (data_hf_tokenizers.py --train-llama3).
json write_llama3_directory(const std::string& dir) {
  fs::create_directories(dir);
  const auto r = test::run_command(
      {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/data_hf_tokenizers.py",
       "--train-llama3", kText, dir + "/tokenizer.json", "2000",
       std::to_string(kHoldout * kSeqLen)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const json tok = json::parse(r.out);
  const int64_t vocab = (tok.at("vocab").get<int64_t>() + 127) / 128 * 128;
  model::ToyModelSpec spec;
  spec.arch = model::Arch::kLlama;
  spec.hidden = kHidden;
  spec.layers = kLayers;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 128;
  spec.vocab = vocab;
  spec.dtype = model::StDType::kBF16;
  spec.seed = 3;
  model::write_toy_model(spec, dir);
  const int64_t bos = tok.at("bos"), eos = tok.at("eos");
  test::write_file(dir + "/config.json", llama31_config(vocab, bos, eos).dump(2));
  test::write_file(dir + "/generation_config.json", json{{"bos_token_id", bos},
                                                         {"do_sample", true},
                                                         {"eos_token_id", {eos, eos + 1, eos + 2}},
                                                         {"temperature", 0.6},
                                                         {"top_p", 0.9},
                                                         {"transformers_version", "4.43.0.dev0"}}
                                                        .dump(2));
  test::write_file(dir + "/tokenizer_config.json",
                   json{{"bos_token", "<|begin_of_text|>"},
                        {"clean_up_tokenization_spaces", true},
                        {"eos_token", "<|eot_id|>"},
                        {"model_input_names", {"input_ids", "attention_mask"}},
                        {"model_max_length", 131072},
                        {"tokenizer_class", "PreTrainedTokenizerFast"}}
                       .dump(2));
  return tok;
}

double rel_error(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want).norm().item<double>() / want.norm().item<double>();
}

// The job file of the run: text through tokenizer.json, K4/V4 at density 0.5.
json llama31_job(const std::string& model_dir) {
  return {{"model", model_dir},
          {"text", kText},
          {"tokenizer", model_dir + "/tokenizer.json"},
          {"num_seqs", 16},
          {"seq_len", kSeqLen},
          {"holdout_seqs", kHoldout},
          {"dtype", "f32"},
          {"k_density", 0.5},
          {"v_density", 0.5},
          {"k_bits", 4},
          {"v_bits", 4},
          {"batch_tokens", 128},
          {"steps", 300},
          {"lr", 1e-3},
          {"save_every", 100},
          {"eval_decode", 16},
          {"memory_contexts", "256,1024"},
          {"plots", false}};
}

void expect_holdout_ids(const std::string& out, const json& tok) {
  // Capture tokenized the text's blank-line documents as HF's tokenizer(document) does, BOS first
  // in each: the held-out sequences are the stream's last ids, identical to the tokenizers
  // package's.
  const at::Tensor holdout =
      data::read_shard_tokens(out + "/acts/" + data::shard_file_name(0, 1, "holdout"));
  ASSERT_EQ(holdout.sizes(), (at::IntArrayRef{kHoldout, kSeqLen}));
  const auto tail = tok.at("tail").get<std::vector<int64_t>>();
  const at::Tensor flat = holdout.reshape({-1}).to(at::kLong).contiguous();
  EXPECT_EQ(std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel()),
            tail);
}

void expect_factors(const std::string& out) {
  // Every layer's K and V factors are in the merged compressor (rank 16 of D = 32 each).
  const auto comp = model::SafetensorsFile::open(out + "/compressor.safetensors");
  for (int64_t l = 0; l < kLayers; ++l) {
    for (const char* kv : {"k", "v"}) {
      for (const char* ab : {"a", "b"}) {
        const std::string name =
            "model.layers." + std::to_string(l) + ".self_attn." + kv + "_proj_" + ab + ".weight";
        ASSERT_TRUE(comp->contains(name)) << name;
        const at::Tensor t = comp->get(name);
        EXPECT_TRUE(at::isfinite(t.to(at::kFloat)).all().item<bool>()) << name;
        EXPECT_EQ(std::min(t.size(0), t.size(1)), 16) << name << " " << t.sizes();
      }
    }
  }
}

void expect_kl(const std::string& out) {
  // Eval decoded with the compressed cache: a finite KL below the bound, far above the fp16
  // cache's (the compression is visible), on 3 sequences × 16 steps.
  const json report = json::parse(test::read_file(out + "/eval/report.json"));
  const json& e2e = report.at("end_to_end");
  const double kl = e2e.at("kl_mean");
  ::testing::Test::RecordProperty("kl_mean", std::to_string(kl));
  ::testing::Test::RecordProperty("kl_fp16_cache", e2e.at("kl_fp16_cache").dump());
  ::testing::Test::RecordProperty("compression_ratio", report.at("compression_ratio").dump());
  EXPECT_TRUE(std::isfinite(kl)) << kl;
  EXPECT_GT(kl, 0.0);
  EXPECT_LT(kl, kKlBound);
  EXPECT_LT(e2e.at("kl_fp16_cache").get<double>(), kl);
  EXPECT_EQ(e2e.at("positions"), kHoldout * 16);
}

void expect_x_matches_hf(const std::string& out, const std::string& model_dir,
                         const model::ModelConfig& config, const std::string& hf_bin) {
  // The captured X of every layer on the first training sequence equals HF transformers' float64
  // forward of this directory (llama3 RoPE, bfloat16 weights) within 1e-5 relative.
  const std::string shard = out + "/acts/" + data::shard_file_name(0, 1, "train");
  const at::Tensor first = data::read_shard_tokens(shard)[0].to(at::kLong).contiguous();
  std::string ids;
  for (int64_t i = 0; i < kSeqLen; ++i) {
    ids += (i ? "," : "") + std::to_string(first[i].item<int64_t>());
  }
  const auto hf = test::run_command(
      {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/model_hf_forward.py",
       model_dir, ids, hf_bin});
  ASSERT_EQ(hf.exit_code, 0) << hf.err;
  const std::string bytes = test::read_file(hf_bin);
  const size_t per_layer = static_cast<size_t>(kSeqLen * kHidden);
  ASSERT_EQ(bytes.size(), (kLayers * per_layer + static_cast<size_t>(kSeqLen * config.vocab_size)) *
                              sizeof(double));
  for (int64_t l = 0; l < kLayers; ++l) {
    data::ActivationReaderOptions ro;
    ro.acts_dir = out + "/acts";
    ro.layer = l;
    ro.batch_tokens = kSeqLen;
    ro.prefetch_batches = 0;
    ro.expect.model_config_hash = config.hash();
    data::ActivationReader reader(ro);
    const auto batch = reader.next();
    ASSERT_TRUE(batch.has_value());
    at::Tensor want = at::empty({kSeqLen, kHidden}, at::kDouble);
    std::memcpy(want.data_ptr<double>(), bytes.data() + l * per_layer * sizeof(double),
                per_layer * sizeof(double));
    const double err = rel_error(batch->x, want);
    EXPECT_LE(err, 1e-5) << "layer " << l;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", err);
    ::testing::Test::RecordProperty("layer_" + std::to_string(l) + "_x_rel_error", buf);
  }
}

TEST(Llama3Run, Llama31StyleDirectoryFromTextRunsEndToEnd) {
  if (!fs::exists(kText))
    GTEST_SKIP() << kText << " is not here (../shared holds TinyStories text)";
  if (const std::string why = python_missing(); !why.empty()) GTEST_SKIP() << why;
  test::TempDir w;
  const std::string model_dir = w / "Llama-3.1-toy";
  const json tok = write_llama3_directory(model_dir);
  ASSERT_FALSE(HasFailure());
  const model::ModelConfig config = model::load_config(model_dir);
  ASSERT_EQ(config.rope_scaling.type, "llama3");
  ASSERT_EQ(config.rope_scaling.original_max_position_embeddings, 8192);

  test::write_file(w / "job.json", llama31_job(model_dir).dump(2));
  const std::string out = w / "run";
  const auto start = std::chrono::steady_clock::now();
  const auto run = test::run_cskv({"run", "--config", w / "job.json", "--out", out});
  ::testing::Test::RecordProperty(
      "run_seconds",
      std::to_string(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("summary (" + out + "):"), std::string::npos) << run.out;
  expect_holdout_ids(out, tok);
  expect_factors(out);
  expect_kl(out);
  expect_x_matches_hf(out, model_dir, config, w / "hf.bin");
}

}  // namespace
}  // namespace cskv
