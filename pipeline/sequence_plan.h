// Which token windows capture runs: training windows sampled from the training stream, held-out
// sequences from a region no training window touches (or from a separate held-out stream).
#pragma once

#include <cstdint>
#include <vector>

#include "data/token_source.h"

namespace cskv::pipeline {

struct SequencePlan {
  std::vector<int64_t> train_starts;    // offsets into the training stream
  std::vector<int64_t> holdout_starts;  // offsets into the held-out stream
};

// Without a held-out stream (`holdout` null) the last holdout_seqs * seq_len tokens of `train`
// are the held-out sequences, as consecutive chunks, and the training windows are sampled
// (data::sample_sequences: --sampling, --seed) from the tokens before them only, so no held-out
// token lies inside a training window. With one, the training windows are sampled from all of
// `train` and the held-out sequences are the first holdout_seqs consecutive chunks of `holdout`.
// Input errors name the stream that is too short and the tokens it would need.
SequencePlan plan_sequences(const data::TokenFile& train, const data::TokenFile* holdout,
                            int64_t num_seqs, int64_t holdout_seqs, int64_t seq_len, uint64_t seed,
                            data::Sampling sampling);

}  // namespace cskv::pipeline
