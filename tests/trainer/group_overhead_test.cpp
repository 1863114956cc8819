// Tests of trainer/group_overhead: which groupings store more per token than 16-bit latents, their
// bytes, and the exact warning with what to change.
#include "trainer/group_overhead.h"

#include <gtest/gtest.h>

#include <vector>

namespace cskv::trainer {
namespace {

// stories260K's attention: 4 KV heads of head_dim 8 (D 32).
model::ModelConfig stories_like() {
  model::ModelConfig m;
  m.num_attention_heads = 8;
  m.num_key_value_heads = 4;
  m.head_dim = 8;
  m.hidden_size = 64;
  return m;
}

std::vector<LayerJob> jobs(const std::vector<int64_t>& layers, int64_t r_k, int64_t r_v) {
  std::vector<LayerJob> out;
  for (const int64_t l : layers) {
    out.emplace_back(l, KvKind::kKey, r_k);
    out.emplace_back(l, KvKind::kValue, r_v);
  }
  return out;
}

TEST(GroupOverhead, VGroupsOfTwoChannelsAtHeadDim8AreLargerThan16BitLatents) {
  TrainConfig cfg;
  cfg.k_bits = 4;
  cfg.v_bits = 4;  // group_size 0: r / n_kv = 2 channels at density 0.25
  const auto costly = costly_groupings(stories_like(), cfg, jobs({0, 1, 2, 3, 4}, 8, 8));
  ASSERT_EQ(costly.size(), 1u);  // K: per channel over 32 tokens, far below 16 bits
  const CostlyGrouping& g = costly[0];
  EXPECT_EQ(g.kind, KvKind::kValue);
  EXPECT_EQ(g.group, 2);
  EXPECT_EQ(g.code_bytes, 4.0);       // 8 channels · 4 bits
  EXPECT_EQ(g.overhead_bytes, 16.0);  // 4 groups · (fp16 scale + zero)
  EXPECT_EQ(g.fp16_bytes, 16.0);      // 8 channels · 2 bytes
  EXPECT_EQ(g.layers, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(costly_grouping_message(g),
            "V of layers 0-4: groups of 2 latent channels at 4 bits store 20 bytes per token (4 of "
            "codes, 16 of fp16 scale/zero), more than the 16 bytes of 16-bit latents (8 "
            "channels); a --group-size of 4 (dividing 8) or --v-bits 16 stores less");

  // Density 0.5 (groups of 4 channels: 48 bits against 64) and --group-size 4 are smaller.
  EXPECT_TRUE(costly_groupings(stories_like(), cfg, jobs({0, 1}, 16, 16)).empty());
  cfg.group_size = 4;
  EXPECT_TRUE(costly_groupings(stories_like(), cfg, jobs({0, 1}, 8, 8)).empty());
  // 8 bits: groups of 4 store exactly what 16 bits do (not larger), groups of 2 more.
  cfg.v_bits = 8;
  EXPECT_TRUE(costly_groupings(stories_like(), cfg, jobs({0}, 8, 8)).empty());
  cfg.group_size = 2;
  EXPECT_EQ(costly_groupings(stories_like(), cfg, jobs({0}, 8, 8)).size(), 1u);
  // 16-bit latents and waterfill codes have no scale/zero.
  cfg.v_bits = 16;
  EXPECT_TRUE(costly_groupings(stories_like(), cfg, jobs({0}, 8, 8)).empty());
  cfg.v_bits = 4;
  cfg.quant = QuantMode::kWaterfill;
  EXPECT_TRUE(costly_groupings(stories_like(), cfg, jobs({0}, 8, 8)).empty());
}

TEST(GroupOverhead, KeyWindowsAndGroupingsNoGroupSizeCanMend) {
  TrainConfig cfg;
  cfg.k_bits = 4;
  cfg.v_bits = 2;
  cfg.window = 2;  // K per channel over 2 tokens: 8 + 32 bytes against 32
  cfg.group_size = 2;
  std::vector<LayerJob> js = jobs({0, 2, 3}, 16, 2);
  const auto costly = costly_groupings(stories_like(), cfg, js);
  ASSERT_EQ(costly.size(), 2u);
  EXPECT_EQ(costly_grouping_message(costly[0]),
            "K of layers 0, 2-3: each latent channel's groups of 2 tokens at 4 bits store 40 bytes "
            "per token (8 of codes, 32 of fp16 scale/zero), more than the 32 bytes of 16-bit "
            "latents (16 channels); a --window of at least 3 or --k-bits 16 stores less");
  EXPECT_EQ(costly_grouping_message(costly[1]),
            "V of layers 0, 2-3: groups of 2 latent channels at 2 bits store 4.5 bytes per token "
            "(0.5 of codes, 4 of fp16 scale/zero), more than the 4 bytes of 16-bit latents (2 "
            "channels); no group size dividing 2 stores less; --v-bits 16 does");
  // One layer, one group of one channel without a window (K per token).
  cfg.window = 0;
  cfg.group_size = 1;
  const auto one = costly_groupings(stories_like(), cfg, {LayerJob(7, KvKind::kKey, 4)});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(costly_grouping_message(one[0]),
            "K of layer 7: groups of 1 latent channel at 4 bits store 18 bytes per token (2 of "
            "codes, 16 of fp16 scale/zero), more than the 8 bytes of 16-bit latents (4 "
            "channels); a --group-size of 4 (dividing 4) or --k-bits 16 stores less");
}

}  // namespace
}  // namespace cskv::trainer
