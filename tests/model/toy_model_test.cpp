// Tests of the toy model generator (shapes for every architecture, sharding, deterministic bytes,
// realistic K/V spectra) and of the toy token stream.
#include "model/toy_model.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

namespace fs = std::filesystem;

ToyModelSpec small_spec(Arch arch) {
  ToyModelSpec s;
  s.arch = arch;
  s.hidden = 64;
  s.layers = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.intermediate = 96;
  s.vocab = 50;
  s.dtype = StDType::kF32;
  return s;
}

std::vector<std::string> sorted_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  return files;
}

TEST(ToyModel, ShapesMatchConfigForAllArchitectures) {
  for (Arch arch : {Arch::kLlama, Arch::kMistral, Arch::kQwen2}) {
    SCOPED_TRACE(arch_name(arch));
    const ToyModelSpec spec = small_spec(arch);
    const ModelConfig c = toy_config(spec);
    EXPECT_EQ(c.arch, arch);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.kv_dim(), 32);  // GQA: 2 kv heads for 4 query heads
    EXPECT_EQ(c.attention_bias, arch == Arch::kQwen2);

    const NamedTensors w = toy_weights(spec);
    const auto expected = expected_weight_list(c);
    ASSERT_EQ(w.size(), expected.size());
    EXPECT_EQ(w.size(), arch == Arch::kQwen2 ? 1u + 2u * 12u + 2u : 1u + 2u * 9u + 2u);
    for (size_t i = 0; i < w.size(); ++i) {
      EXPECT_EQ(w[i].first, expected[i].first);
      EXPECT_EQ(w[i].second.sizes().vec(), expected[i].second) << w[i].first;
      EXPECT_EQ(w[i].second.scalar_type(), at::kFloat);
    }

    test::TempDir dir;
    EXPECT_EQ(write_toy_model(spec, dir.path()),
              (std::vector<std::string>{"model.safetensors", "config.json"}));
    const ModelConfig loaded = load_config(dir.path());
    EXPECT_EQ(loaded.canonical_json(), c.canonical_json());
    const auto model = SafetensorsModel::open_dir(dir.path());
    const WeightsReport report = validate_weights(loaded, model, dir.path());
    EXPECT_EQ(report.params, count_params(c));
    EXPECT_TRUE(report.unexpected.empty());
    for (const auto& [name, t] : w) EXPECT_TRUE(at::equal(model.get(name), t)) << name;
  }
}

TEST(ToyModel, TiedEmbeddingsAndDtypes) {
  ToyModelSpec spec = small_spec(Arch::kLlama);
  spec.tie_word_embeddings = true;
  spec.dtype = StDType::kBF16;
  const NamedTensors w = toy_weights(spec);
  EXPECT_EQ(w.back().first, "model.norm.weight");
  for (const auto& [name, t] : w) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << name;
  EXPECT_EQ(toy_config(spec).torch_dtype, "bfloat16");
}

TEST(ToyModel, ShardedOutputHasNFilesIndexAndSameTensors) {
  const ToyModelSpec single = small_spec(Arch::kQwen2);
  ToyModelSpec sharded = single;
  sharded.shards = 3;
  test::TempDir a, b;
  write_toy_model(single, a.path());
  const auto files = write_toy_model(sharded, b.path());
  EXPECT_EQ(files, (std::vector<std::string>{"model-00001-of-00003.safetensors",
                                             "model-00002-of-00003.safetensors",
                                             "model-00003-of-00003.safetensors",
                                             "model.safetensors.index.json", "config.json"}));
  EXPECT_EQ(
      sorted_files(b.path()),
      (std::vector<std::string>{
          "config.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
          "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  const auto index = nlohmann::json::parse(test::read_file(b / "model.safetensors.index.json"));
  const auto one = SafetensorsModel::open_dir(a.path());
  const auto three = SafetensorsModel::open_dir(b.path());
  EXPECT_EQ(index["weight_map"].size(), one.names().size());
  uint64_t total = 0;
  std::map<std::string, int> per_file;
  for (const auto& name : one.names()) {
    EXPECT_TRUE(at::equal(one.get(name), three.get(name))) << name;
    total += one.entry(name).end - one.entry(name).begin;
    per_file[index["weight_map"][name].get<std::string>()] += 1;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(per_file.size(), 3u);
  const auto report = validate_weights(load_config(b.path()), three, b.path());
  EXPECT_EQ(report.files.size(), 3u);

  // Re-writing as a single file into the sharded dir removes the stale shards and index.
  write_toy_model(single, b.path());
  EXPECT_EQ(sorted_files(b.path()), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(test::read_file(a / "model.safetensors"), test::read_file(b / "model.safetensors"));
}

TEST(ToyModel, SameSeedGivesIdenticalBytesAtAnyThreadCount) {
  ToyModelSpec spec = small_spec(Arch::kMistral);
  spec.hidden = 128;
  spec.intermediate = 320;
  spec.dtype = StDType::kF16;
  test::TempDir a, b, c;
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  write_toy_model(spec, a.path());
  at::set_num_threads(std::max(2, threads));
  write_toy_model(spec, b.path());
  at::set_num_threads(threads);
  spec.seed = 1;
  write_toy_model(spec, c.path());
  const std::string bytes = test::read_file(a / "model.safetensors");
  EXPECT_EQ(bytes, test::read_file(b / "model.safetensors"));
  EXPECT_EQ(test::read_file(a / "config.json"), test::read_file(b / "config.json"));
  EXPECT_NE(bytes, test::read_file(c / "model.safetensors"));
  EXPECT_EQ(bytes.size(), test::read_file(c / "model.safetensors").size());
}

// Number of leading eigenvalues (descending) that hold `share` of the total.
int64_t components_for_energy(const at::Tensor& eigenvalues_desc, double share) {
  const at::Tensor cum = eigenvalues_desc.cumsum(0) / eigenvalues_desc.sum();
  return (cum < share).sum().item<int64_t>() + 1;
}

TEST(ToyModel, KeyAndValueCachesAreLowRankLikeRealLlms) {
  const ToyModelSpec spec;  // the default toy model: hidden 256, 8 heads, 2 kv heads, D = 64
  const ModelConfig c = toy_config(spec);
  const int64_t D = c.kv_dim(), H = c.hidden_size, N = 4096;
  ASSERT_EQ(D, 64);
  test::TempDir dir;
  write_toy_model(spec, dir.path());
  const auto model = SafetensorsModel::open_dir(dir.path());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor first_outliers;
  int64_t k_total = 0, v_total = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const at::Tensor ln = model.get(p + "input_layernorm.weight").to(at::kDouble);
    // A few outlier channels (×5–15, the same in every layer), the rest ≈ 1.
    EXPECT_EQ((ln >= ToySpectrum::kOutlierMin).sum().item<int64_t>(), 4) << "layer " << l;
    EXPECT_EQ(
        (ln < ToySpectrum::kOutlierMin).logical_and((ln - 1).abs() > 0.2).sum().item<int64_t>(), 0);
    const at::Tensor outliers = (ln >= ToySpectrum::kOutlierMin).nonzero().flatten();
    if (l == 0) first_outliers = outliers;
    EXPECT_TRUE(at::equal(outliers, first_outliers)) << "layer " << l;

    // X = RMSNorm(Gaussian hidden states) · input_layernorm weight; K = X·Wkᵀ in float64.
    const at::Tensor h = at::randn({N, H}, gen, f64);
    const at::Tensor x = h / (h.pow(2).mean(1, true) + c.rms_norm_eps).sqrt() * ln;
    for (const char* kv : {"k_proj", "v_proj"}) {
      const at::Tensor w = model.get(p + "self_attn." + kv + ".weight").to(at::kDouble);
      const at::Tensor k = at::matmul(x, w.t());
      const at::Tensor eig = std::get<0>(at::linalg_eigh(at::matmul(k.t(), k))).flip(0);
      const int64_t n90 = components_for_energy(eig, 0.9);
      std::printf("[ spectrum ] layer %lld %s: %lld of D=%lld components hold 90%% energy\n",
                  static_cast<long long>(l), kv, static_cast<long long>(n90),
                  static_cast<long long>(D));
      // Keys: clearly fewer than D/2 (the criterion); values: less compressible.
      EXPECT_LT(n90, std::string(kv) == "k_proj" ? D / 2 : 3 * D / 4) << "layer " << l << " " << kv;
      (std::string(kv) == "k_proj" ? k_total : v_total) += n90;

      // The weight itself: s_1/s_10 = 10^alpha and ‖W‖²_F = D (unit-variance outputs).
      const at::Tensor s = at::linalg_svdvals(w);
      const double alpha = std::string(kv) == "k_proj" ? ToySpectrum::kKey : ToySpectrum::kValue;
      EXPECT_NEAR(s[0].item<double>() / s[9].item<double>(), std::pow(10.0, alpha),
                  0.02 * std::pow(10.0, alpha));
      EXPECT_NEAR(w.pow(2).sum().item<double>(), static_cast<double>(D), 0.01 * D);
    }
  }
  // Values are harder to compress than keys, as in real models.
  EXPECT_GT(v_total, k_total);
}

TEST(ToyModel, SpecErrorsNameTheFlag) {
  ToyModelSpec s;
  s.hidden = 100;
  EXPECT_CSKV_ERROR(toy_config(s), "toy model: --hidden (100) is not divisible by --heads (8)");
  s = ToyModelSpec{};
  s.kv_heads = 3;
  EXPECT_CSKV_ERROR(toy_config(s), "toy model: --heads (8) is not divisible by --kv-heads (3)");
  s = ToyModelSpec{};
  s.layers = 0;
  EXPECT_CSKV_ERROR(toy_config(s), "toy model: --layers must be positive, found 0");
  s = ToyModelSpec{};
  s.shards = 100;
  EXPECT_CSKV_ERROR(toy_config(s), "toy model: --shards (100) exceeds the number of tensors (39)");
}

TEST(ToyTokens, DeterministicInRangeAndZipfMarkov) {
  const int64_t vocab = 1000, count = 200000;
  const auto t = toy_tokens(vocab, count, 7);
  ASSERT_EQ(t.size(), static_cast<size_t>(count));
  EXPECT_EQ(t, toy_tokens(vocab, count, 7));
  EXPECT_NE(t, toy_tokens(vocab, count, 8));
  // Pinned: std::mt19937_64 and integer arithmetic make the stream the same on every platform.
  EXPECT_EQ(std::vector<uint32_t>(t.begin(), t.begin() + 8),
            (std::vector<uint32_t>{608, 254, 381, 811, 783, 608, 310, 816}));

  std::vector<int64_t> freq(vocab, 0);
  for (uint32_t id : t) {
    ASSERT_LT(id, static_cast<uint32_t>(vocab));
    ++freq[id];
  }
  const int64_t top = *std::max_element(freq.begin(), freq.end());
  const double top_share = static_cast<double>(top) / count;
  std::printf("[ tokens   ] top token share %.4f (uniform %.4f), distinct %lld\n", top_share,
              1.0 / vocab,
              static_cast<long long>(
                  std::count_if(freq.begin(), freq.end(), [](int64_t f) { return f > 0; })));
  EXPECT_GT(top_share, 20.0 / vocab);

  // Markov structure: after the most frequent token, its most likely successor is far more
  // likely than that successor's overall share.
  const uint32_t a =
      static_cast<uint32_t>(std::max_element(freq.begin(), freq.end()) - freq.begin());
  std::vector<int64_t> next(vocab, 0);
  int64_t after_a = 0;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    if (t[i] == a) ++next[t[i + 1]], ++after_a;
  }
  const auto b = std::max_element(next.begin(), next.end()) - next.begin();
  const double conditional = static_cast<double>(next[b]) / after_a;
  const double marginal = static_cast<double>(freq[b]) / count;
  std::printf("[ tokens   ] P(%lld | %u) = %.3f vs P(%lld) = %.3f\n", static_cast<long long>(b), a,
              conditional, static_cast<long long>(b), marginal);
  EXPECT_GT(conditional, 2.0 * marginal);
}

TEST(ToyTokens, WritesLittleEndianU16AndU32) {
  const auto t = toy_tokens(70000, 1000, 3);
  test::TempDir dir;
  write_tokens(dir / "t32.bin", t, 70000, TokenDType::kU32);
  const std::string b32 = test::read_file(dir / "t32.bin");
  ASSERT_EQ(b32.size(), 4000u);
  for (size_t i = 0; i < t.size(); ++i) {
    const auto* p = reinterpret_cast<const unsigned char*>(b32.data()) + 4 * i;
    ASSERT_EQ(uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24,
              t[i]);
  }
  EXPECT_CSKV_ERROR(
      write_tokens(dir / "t16.bin", t, 70000, TokenDType::kU16),
      "toy tokens: --vocab 70000 does not fit in u16 (at most 65536); use --dtype u32");
  const auto s = toy_tokens(65536, 1000, 3);
  write_tokens(dir / "t16.bin", s, 65536, TokenDType::kU16);
  const std::string b16 = test::read_file(dir / "t16.bin");
  ASSERT_EQ(b16.size(), 2000u);
  for (size_t i = 0; i < s.size(); ++i) {
    const auto* p = reinterpret_cast<const unsigned char*>(b16.data()) + 2 * i;
    ASSERT_EQ(uint32_t(p[0]) | uint32_t(p[1]) << 8, s[i]);
  }
  EXPECT_CSKV_ERROR(toy_tokens(0, 10, 0), "toy tokens: --vocab must be in [1, 16777216], found 0");
  EXPECT_CSKV_ERROR(toy_tokens(10, 0, 0), "toy tokens: --count must be positive, found 0");
  EXPECT_EQ(toy_tokens(1, 5, 0), std::vector<uint32_t>(5, 0));
}

}  // namespace
}  // namespace cskv::model
