// LlamaModel::forward_cached with plain KV caches: a prefill gives forward()'s logits bitwise,
// token-by-token decoding with a float32 cache matches forward() to float32 rounding on Llama,
// Mistral with a sliding window and Qwen2 (biases), and a fp16 cache holds 2·D·2 bytes a token.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "model/kv_cache.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model/toy_model.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

struct Caches {
  std::vector<std::unique_ptr<FullKvCache>> owned;
  std::vector<KvCache*> raw;
  Caches(const ModelConfig& c, at::ScalarType storage) {
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      owned.push_back(std::make_unique<FullKvCache>(c, storage));
      raw.push_back(owned.back().get());
    }
  }
};

void check_model(Arch arch, int64_t sliding_window) {
  test::TempDir dir;
  ToyModelSpec spec;
  spec.arch = arch;
  spec.hidden = 64;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 128;
  spec.vocab = 128;
  spec.dtype = StDType::kF32;
  write_toy_model(spec, dir.path());
  ModelConfig config = load_config(dir.path());
  config.sliding_window = sliding_window;
  const LlamaModel model(
      config, std::make_shared<SafetensorsModel>(SafetensorsModel::open_dir(dir.path())));
  at::manual_seed(1);
  const at::Tensor tokens = at::randint(0, 128, {1, 30}, at::kLong);
  const at::Tensor ref = model.forward(tokens);

  Caches prefill(config, at::kFloat);
  EXPECT_TRUE(at::equal(model.forward_cached(tokens.narrow(1, 0, 30), prefill.raw), ref))
      << arch_name(arch) << ": a prefill is forward() bitwise";
  EXPECT_EQ(prefill.raw[1]->size(), 30);
  // Logits from position 24 on only: forward() and a prefill agree bitwise, and equal the rows of
  // the full logits to rounding (the head's sgemm runs on 6 rows instead of 30).
  ForwardOptions tail;
  tail.logits_from = 24;
  const at::Tensor ref_tail = model.forward(tokens, {}, tail);
  ASSERT_EQ(ref_tail.sizes(), (at::IntArrayRef{1, 6, 128}));
  EXPECT_LE((ref_tail - ref.narrow(1, 24, 6)).abs().max().item<double>(),
            1e-6 * ref.abs().max().item<double>());
  Caches prefill_tail(config, at::kFloat);
  EXPECT_TRUE(at::equal(model.forward_cached(tokens, prefill_tail.raw, 24), ref_tail));
  EXPECT_EQ(model.forward_cached(tokens.narrow(1, 0, 1), Caches(config, at::kFloat).raw, 1).size(1),
            0);

  Caches step(config, at::kFloat);
  std::vector<at::Tensor> logits = {model.forward_cached(tokens.narrow(1, 0, 10), step.raw)};
  for (int64_t t = 10; t < 30; t += (t < 20 ? 1 : 5)) {  // single tokens, then blocks of 5
    logits.push_back(model.forward_cached(tokens.narrow(1, t, t < 20 ? 1 : 5), step.raw));
  }
  const at::Tensor got = at::cat(logits, 1);
  const double diff = (got - ref).abs().max().item<double>();
  EXPECT_LE(diff, 1e-5 * ref.abs().max().item<double>())
      << arch_name(arch) << " window " << sliding_window << ": max |diff| " << diff;
}

TEST(ForwardCached, MatchesForwardOnLlamaMistralWindowAndQwen2) {
  check_model(Arch::kLlama, 0);
  check_model(Arch::kMistral, 6);
  check_model(Arch::kQwen2, 0);
}

// A prefill past model::kDenseAttentionMaxTokens (blocked attention, sliding window) is still
// forward() bitwise; decoding on after it (dense over the cache) matches forward() to rounding.
TEST(ForwardCached, BlockedPrefillIsForwardBitwise) {
  test::TempDir dir;
  ToyModelSpec spec;
  spec.arch = Arch::kMistral;
  spec.hidden = 32;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 64;
  spec.vocab = 128;
  spec.dtype = StDType::kF32;
  write_toy_model(spec, dir.path());
  ModelConfig config = load_config(dir.path());
  config.sliding_window = 700;
  const LlamaModel model(
      config, std::make_shared<SafetensorsModel>(SafetensorsModel::open_dir(dir.path())));
  at::manual_seed(2);
  const int64_t seq = 1300;
  const at::Tensor tokens = at::randint(0, 128, {1, seq + 3}, at::kLong);
  Caches caches(config, at::kFloat);
  // forward() on the same tokens (another length may block its queries otherwise)
  EXPECT_TRUE(at::equal(model.forward_cached(tokens.narrow(1, 0, seq), caches.raw),
                        model.forward(tokens.narrow(1, 0, seq))));
  for (int64_t t = seq; t < seq + 3; ++t) {
    const at::Tensor got = model.forward_cached(tokens.narrow(1, t, 1), caches.raw);
    const at::Tensor want = model.forward(tokens.narrow(1, 0, t + 1)).narrow(1, t, 1);
    const double diff = (got - want).abs().max().item<double>();
    EXPECT_LE(diff, 1e-5 * want.abs().max().item<double>()) << "step " << t << ": " << diff;
  }
}

TEST(ForwardCached, Fp16CacheBytesAndErrors) {
  test::TempDir dir;
  ToyModelSpec spec;
  spec.hidden = 64;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 128;
  spec.vocab = 128;
  write_toy_model(spec, dir.path());
  const ModelConfig config = load_config(dir.path());
  const LlamaModel model(
      config, std::make_shared<SafetensorsModel>(SafetensorsModel::open_dir(dir.path())));
  Caches c(config, at::kHalf);
  model.forward_cached(at::zeros({1, 7}, at::kLong), c.raw);
  EXPECT_EQ(c.raw[0]->bytes(), 7 * 2 * config.kv_dim() * 2);
  EXPECT_CSKV_ERROR(model.forward_cached(at::full({1, 2}, 128, at::kLong), c.raw),
                    "forward_cached: token id 128 outside the vocabulary [0, 128)");
  EXPECT_CSKV_ERROR(model.forward_cached(at::zeros({2, 2}, at::kLong), c.raw),
                    "forward_cached: expected int64 tokens [1, n] with n >= 1, found Long [2, 2]");
  EXPECT_CSKV_ERROR(model.forward_cached(at::zeros({1, 2}, at::kLong), c.raw, 3),
                    "forward_cached: logits_from 3 outside [0, 2]");
}

}  // namespace
}  // namespace cskv::model
