// Helpers for the data/ tests: deterministic activations and one-call shard + manifest writing.
// Header-only so the tests/data/*.cpp glob does not pick it up as a test source.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "data/activation_shard.h"
#include "data/manifest.h"

namespace cskv::data::testing {

constexpr const char* kHash = "cfg-0123abcd";

// Deterministic float32 activations [rows, h] (not fp16-representable in general).
inline at::Tensor activations(int64_t rows, int64_t h, uint64_t seed) {
  at::Tensor x = at::empty({rows, h}, at::kFloat);
  float* p = x.data_ptr<float>();
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 12345;
  for (int64_t i = 0; i < rows * h; ++i) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    const double u = static_cast<double>(s >> 11) / static_cast<double>(1ULL << 53);
    p[i] = static_cast<float>((u - 0.5) * 6.0);
  }
  return x;
}

struct ShardSpec {
  int rank = 0;
  int world = 1;
  std::string split = "train";
  std::vector<int64_t> layers = {0, 1};
  int64_t num_layers = 2;
  int64_t seq_len = 4;
  int64_t hidden = 8;
  ActivationDtype dtype = ActivationDtype::kFloat16;
  std::string hash = kHash;
  uint64_t seed = 7;
};

// Writes one shard holding x[layer] (rows = n_seq * seq_len) in two appends when possible;
// tokens are sequence_id * 1000 + position.
inline ShardSummary write_shard(const std::string& dir, const ShardSpec& spec,
                                const std::vector<at::Tensor>& x_per_layer,
                                const std::vector<int64_t>& sequence_ids) {
  ShardHeader h;
  h.model_config_hash = spec.hash;
  h.hidden_size = spec.hidden;
  h.num_layers = spec.num_layers;
  h.layers = spec.layers;
  h.seq_len = spec.seq_len;
  h.dtype = spec.dtype;
  h.seed = spec.seed;
  h.split = spec.split;
  ActivationShardWriter w(dir + "/" + shard_file_name(spec.rank, spec.world, spec.split), h);
  const auto n_seq = static_cast<int64_t>(sequence_ids.size());
  const int64_t first = n_seq > 1 ? n_seq / 2 : n_seq;
  const int64_t bounds[3] = {0, first, n_seq};
  for (int part = 0; part < 2; ++part) {
    const int64_t a = bounds[part], b = bounds[part + 1];
    if (a == b) continue;
    for (size_t i = 0; i < spec.layers.size(); ++i) {
      w.append(spec.layers[i], x_per_layer[i].slice(0, a * spec.seq_len, b * spec.seq_len));
    }
    at::Tensor tok = at::empty({b - a, spec.seq_len}, at::kLong);
    for (int64_t s = a; s < b; ++s) {
      for (int64_t t = 0; t < spec.seq_len; ++t) tok[s - a][t] = sequence_ids[s] * 1000 + t;
    }
    w.append_tokens(std::vector<int64_t>(sequence_ids.begin() + a, sequence_ids.begin() + b), tok);
  }
  return w.finish();
}

}  // namespace cskv::data::testing
