// The capture's sequence plan: held-out sequences from a region no training window reaches (the
// end of the stream), or from a separate stream; too-short streams named with what they need.
#include "pipeline/sequence_plan.h"

#include <gtest/gtest.h>

#include <numeric>

#include "tests/support/test_support.h"

namespace cskv::pipeline {
namespace {

using data::Sampling;
using data::TokenFile;

TokenFile stream(int64_t n, const std::string& name) {
  std::vector<uint32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0u);
  return TokenFile::from_tokens(ids, name, 0);
}

TEST(SequencePlan, HeldOutIsTheEndOfTheStreamNoTrainingWindowReaches) {
  const TokenFile s = stream(1000, "corpus");
  const SequencePlan p = plan_sequences(s, nullptr, 50, 3, 64, 7, Sampling::kRandom);
  EXPECT_EQ(p.holdout_starts, (std::vector<int64_t>{808, 872, 936}));
  EXPECT_EQ(p.train_starts, data::sample_sequences(808, 50, 64, 7, Sampling::kRandom));
  for (const int64_t start : p.train_starts) EXPECT_LE(start + 64, 808);
  const SequencePlan c = plan_sequences(s, nullptr, 12, 3, 64, 7, Sampling::kContiguous);
  EXPECT_EQ(c.train_starts.back(), 11 * 64);  // 704 + 64 <= 808
  EXPECT_EQ(c.holdout_starts.front(), 808);
  // Without held-out sequences the training windows are sampled from the whole stream.
  EXPECT_EQ(plan_sequences(s, nullptr, 50, 0, 64, 7, Sampling::kRandom).train_starts,
            data::sample_sequences(1000, 50, 64, 7, Sampling::kRandom));
}

TEST(SequencePlan, SeparateHeldOutStreamGivesItsFirstChunks) {
  const TokenFile s = stream(1000, "corpus"), held = stream(200, "held");
  const SequencePlan p = plan_sequences(s, &held, 50, 3, 64, 7, Sampling::kRandom);
  EXPECT_EQ(p.holdout_starts, (std::vector<int64_t>{0, 64, 128}));
  EXPECT_EQ(p.train_starts, data::sample_sequences(1000, 50, 64, 7, Sampling::kRandom));
}

TEST(SequencePlan, TooShortStreamsAreNamedWithWhatTheyNeed) {
  EXPECT_CSKV_ERROR(plan_sequences(stream(200, "corpus"), nullptr, 4, 3, 64, 0, Sampling::kRandom),
                    "corpus: 200 tokens cannot hold 3 held-out sequences of 64 tokens at its end "
                    "and a training window before them (at least 256 tokens are needed; or give "
                    "a separate held-out corpus)");
  const TokenFile held = stream(100, "held");
  EXPECT_CSKV_ERROR(plan_sequences(stream(1000, "corpus"), &held, 4, 2, 64, 0, Sampling::kRandom),
                    "held: 100 tokens hold only 1 held-out sequences of 64 tokens, 2 requested");
  EXPECT_CSKV_ERROR(
      plan_sequences(stream(1000, "corpus"), nullptr, 14, 2, 64, 0, Sampling::kContiguous),
      "corpus: 872 tokens hold only 13 contiguous sequences of 64 tokens, 14 requested");
}

}  // namespace
}  // namespace cskv::pipeline
