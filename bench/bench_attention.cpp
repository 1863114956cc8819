// Causal attention of one sequence, dense vs blocked (model/attention.h): time per call at 16
// heads of 64 over T (the crossover that sets kDenseAttentionMaxTokens), the key chunk of the
// online softmax (kAttentionKeyBlock), and the blocked form's largest error against a float64
// reference on probe rows at long T.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "model/attention.h"

namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

void crossover(int64_t heads, int64_t hd) {
  std::printf("| T | dense ms | blocked ms | blocked/dense | block rows | max |diff| |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const int64_t t : {256, 512, 768, 1024, 1536, 2048, 4096}) {
    at::manual_seed(1);
    const at::Tensor q = at::randn({heads, t, hd}), k = at::randn({heads, t, hd}),
                     v = at::randn({heads, t, hd});
    const int64_t rows = cskv::model::attention_block_rows(heads, t, 0);
    at::Tensor d, b;
    const int reps = t <= 1024 ? 5 : 3;
    const double td =
        best_seconds(reps, [&] { d = cskv::model::dense_causal_attention(q, k, v, 0); });
    const double tb =
        best_seconds(reps, [&] { b = cskv::model::blocked_causal_attention(q, k, v, 0, rows); });
    std::printf("| %lld | %.2f | %.2f | %.2f | %lld | %.2e |\n", static_cast<long long>(t),
                td * 1e3, tb * 1e3, tb / td, static_cast<long long>(rows),
                (d - b).abs().max().item<double>());
  }
}

// Float64 reference of row i (all heads), written out per head.
double row_error(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& got, int64_t i) {
  const int64_t nh = q.size(0), hd = q.size(2);
  double err = 0;
  for (int64_t h = 0; h < nh; ++h) {
    const at::Tensor keys = k[h].narrow(0, 0, i + 1).to(at::kDouble);
    const at::Tensor s = at::mv(keys, q[h][i].to(at::kDouble)) / std::sqrt(static_cast<double>(hd));
    const at::Tensor e = at::exp(s - s.max());
    const at::Tensor ref = at::mv(v[h].narrow(0, 0, i + 1).to(at::kDouble).t(), e / e.sum());
    err = std::max(err,
                   (got[i].narrow(0, h * hd, hd).to(at::kDouble) - ref).abs().max().item<double>());
  }
  return err;
}

void long_sequences(int64_t heads, int64_t hd) {
  std::printf(
      "\n| T | heads | blocked s | max error vs float64 (64 probe rows) |\n|---|---|---|---|\n");
  for (const int64_t t : {8192, 16384, 32768}) {
    at::manual_seed(2);
    const at::Tensor q = at::randn({heads, t, hd}) * 1.2, k = at::randn({heads, t, hd}) * 1.2,
                     v = at::randn({heads, t, hd});
    at::Tensor out;
    const double s = best_seconds(1, [&] { out = cskv::model::causal_attention(q, k, v, 0); });
    double err = 0;
    for (int64_t j = 0; j < 64; ++j) err = std::max(err, row_error(q, k, v, out, (t - 1) * j / 63));
    std::printf("| %lld | %lld | %.2f | %.2e |\n", static_cast<long long>(t),
                static_cast<long long>(heads), s, err);
  }
}

}  // namespace

// The blocked form's key chunk: time per call at T = 8192 and 16384 for chunks of 1024..T keys
// (T: one chunk, a plain row softmax over all visible keys, as before the online softmax), each
// with the block height attention_block_rows would give that chunk.
void key_blocks(int64_t heads, int64_t hd) {
  std::printf(
      "\n| T | key chunk | block rows | ms | ms / ms(one chunk) | max |diff| vs one chunk |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const int64_t t : {8192, 16384}) {
    at::manual_seed(4);
    const at::Tensor q = at::randn({heads, t, hd}), k = at::randn({heads, t, hd}),
                     v = at::randn({heads, t, hd});
    auto rows_for = [&](int64_t chunk) {
      return std::max<int64_t>(
          16, std::min({cskv::model::kAttentionBlockScoreElements / (heads * std::min(chunk, t)),
                        chunk, t}));
    };
    at::Tensor one;
    const double t_one = best_seconds(
        1, [&] { one = cskv::model::blocked_causal_attention(q, k, v, 0, rows_for(t), t); });
    std::vector<int64_t> chunks;
    for (const int64_t c : {int64_t{1024}, int64_t{2048}, int64_t{4096}, int64_t{8192}}) {
      if (c < t) chunks.push_back(c);
    }
    chunks.push_back(t);
    for (const int64_t chunk : chunks) {
      at::Tensor out;
      const double s = chunk == t ? t_one : best_seconds(1, [&] {
        out = cskv::model::blocked_causal_attention(q, k, v, 0, rows_for(chunk), chunk);
      });
      std::printf("| %lld | %lld | %lld | %.0f | %.2f | %.2e |\n", static_cast<long long>(t),
                  static_cast<long long>(chunk), static_cast<long long>(rows_for(chunk)), s * 1e3,
                  s / t_one, chunk == t ? 0.0 : (out - one).abs().max().item<double>());
    }
  }
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  if (mode == "all" || mode == "crossover") crossover(16, 64);
  if (mode == "all" || mode == "keyblock") key_blocks(16, 64);
  if (mode == "all" || mode == "long") long_sequences(4, 64);
  return 0;
}
