// The capture's sequence plan: held-out sequences carved out of what the training sampler sees.
#include "pipeline/sequence_plan.h"

#include "common/error.h"

namespace cskv::pipeline {

namespace {

std::vector<int64_t> consecutive_chunks(int64_t first, int64_t count, int64_t seq_len) {
  std::vector<int64_t> starts(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) starts[static_cast<size_t>(i)] = first + i * seq_len;
  return starts;
}

std::vector<int64_t> sample_from(const data::TokenFile& stream, int64_t num_tokens,
                                 int64_t num_seqs, int64_t seq_len, uint64_t seed,
                                 data::Sampling sampling) {
  try {
    return data::sample_sequences(num_tokens, num_seqs, seq_len, seed, sampling);
  } catch (const Error& e) {
    CSKV_FAIL_INPUT(stream.path() << ": " << e.message());
  }
}

}  // namespace

SequencePlan plan_sequences(const data::TokenFile& train, const data::TokenFile* holdout,
                            int64_t num_seqs, int64_t holdout_seqs, int64_t seq_len, uint64_t seed,
                            data::Sampling sampling) {
  const int64_t held_tokens = holdout_seqs * seq_len;
  SequencePlan plan;
  if (holdout != nullptr) {
    CSKV_CHECK_INPUT(holdout->size() >= held_tokens,
                     holdout->path() << ": " << holdout->size() << " tokens hold only "
                                     << holdout->size() / seq_len << " held-out sequences of "
                                     << seq_len << " tokens, " << holdout_seqs << " requested");
    plan.train_starts = sample_from(train, train.size(), num_seqs, seq_len, seed, sampling);
    plan.holdout_starts = consecutive_chunks(0, holdout_seqs, seq_len);
    return plan;
  }
  const int64_t train_tokens = train.size() - held_tokens;
  CSKV_CHECK_INPUT(holdout_seqs == 0 || train_tokens >= seq_len,
                   train.path() << ": " << train.size() << " tokens cannot hold " << holdout_seqs
                                << " held-out sequences of " << seq_len
                                << " tokens at its end and a training window before them (at least "
                                << held_tokens + seq_len
                                << " tokens are needed; or give a separate held-out corpus)");
  plan.train_starts = sample_from(train, train_tokens, num_seqs, seq_len, seed, sampling);
  plan.holdout_starts = consecutive_chunks(train_tokens, holdout_seqs, seq_len);
  return plan;
}

}  // namespace cskv::pipeline
