// Tests of data/layer_stats: Gram and mean |x| against float64 recomputation from the stored
// shards, the reduction of partial sums, and the stats.h5 round trip and its errors.
#include "data/layer_stats.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "data/activation_reader.h"
#include "tests/data/data_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::data {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using testing::activations;
using testing::ShardSpec;
using testing::write_shard;

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

// Captures 2 shards of layers {0, 2}, accumulating stats per batch the way capture does.
struct Captured {
  TempDir dir;
  LayerStats stats{{0, 2}, 16};
  std::vector<at::Tensor> raw;  // per layer, float32 before rounding
};

void capture(Captured& c, ActivationDtype dtype) {
  ShardSpec spec;
  spec.world = 2;
  spec.layers = {0, 2};
  spec.num_layers = 3;
  spec.hidden = 16;
  spec.seq_len = 8;
  spec.dtype = dtype;
  c.stats = LayerStats({2, 0}, 16, dtype);
  std::vector<ManifestEntry> entries;
  for (int rank = 0; rank < 2; ++rank) {
    spec.rank = rank;
    std::vector<at::Tensor> xs;
    for (int64_t l : spec.layers) {
      at::Tensor x = activations(3 * 8, 16, 50 + rank * 10 + static_cast<uint64_t>(l));
      x.mul_(at::arange(1, 17, at::kFloat) * 0.25f);  // channels of different scale
      xs.push_back(x);
      // Batches of one sequence, as the forward produces them.
      for (int s = 0; s < 3; ++s) c.stats.add(l, x.slice(0, s * 8, (s + 1) * 8));
    }
    entries.push_back(
        manifest_entry(write_shard(c.dir.path(), spec, xs, {rank, rank + 2, rank + 4})));
  }
  write_manifest(c.dir.path(), entries);
}

at::Tensor stored_rows(const std::string& dir, int64_t layer) {
  ActivationReaderOptions o;
  o.acts_dir = dir;
  o.layer = layer;
  o.batch_tokens = 1000;
  ActivationReader r(o);
  return r.next()->x;
}

TEST(LayerStats, EqualsFloat64RecomputationFromStoredShards) {
  for (ActivationDtype dtype : {ActivationDtype::kFloat16, ActivationDtype::kFloat32}) {
    Captured c;
    capture(c, dtype);
    for (int64_t l : {0, 2}) {
      const at::Tensor x = stored_rows(c.dir.path(), l).to(at::kDouble);
      ASSERT_EQ(x.size(0), 48);
      const at::Tensor g = at::mm(x.t(), x);
      EXPECT_LE(relative_error(c.stats.sums(l).gram, g), 1e-12) << l;
      EXPECT_EQ(c.stats.token_count(l), 48);
      // Every |x| of a float16/float32 value is exact in float64 and so are these short sums.
      const at::Tensor mean = x.abs().sum(0) / 48.0;
      EXPECT_TRUE(at::equal(c.stats.abs_mean(l), mean)) << l;
      EXPECT_EQ(c.stats.abs_mean(l).scalar_type(), at::kDouble);
    }
  }
}

TEST(LayerStats, PartialSumsReduceToTheWhole) {
  const at::Tensor x = activations(40, 6, 9);
  LayerStats whole({1}, 6, ActivationDtype::kFloat32);
  whole.add(1, x);
  LayerStats a({1}, 6, ActivationDtype::kFloat32), b({1}, 6, ActivationDtype::kFloat32);
  a.add(1, x.slice(0, 0, 13));
  b.add(1, x.slice(0, 13, 40));
  auto ta = a.reduction_tensors();
  auto tb = b.reduction_tensors();
  ASSERT_EQ(ta.size(), 3u);
  for (size_t i = 0; i < ta.size(); ++i) ta[i].add_(tb[i]);  // what allreduce(sum) does
  EXPECT_EQ(a.token_count(1), 40);
  EXPECT_LE(relative_error(a.sums(1).gram, whole.sums(1).gram), 1e-15);
  EXPECT_LE(relative_error(a.abs_mean(1), whole.abs_mean(1)), 1e-15);
  EXPECT_CSKV_ERROR(a.add(0, x), "LayerStats: layer 0 is not tracked");
}

TEST(StatsFile, WriteReadRoundTripIsBitwise) {
  Captured c;
  capture(c, ActivationDtype::kFloat16);
  const std::string path = c.dir / "stats.h5";
  write_stats(path, c.stats, testing::kHash);
  EXPECT_FALSE(fs::exists(path + ".partial"));

  const StatsFile s = read_stats(path, testing::kHash);
  EXPECT_EQ(s.model_config_hash, testing::kHash);
  EXPECT_EQ(s.hidden_size, 16);
  EXPECT_EQ(s.token_count, 48);
  EXPECT_EQ(s.layers, (std::vector<int64_t>{0, 2}));
  for (int64_t l : {0, 2}) {
    EXPECT_TRUE(at::equal(s.per_layer.at(l).gram, c.stats.sums(l).gram));
    EXPECT_TRUE(at::equal(s.per_layer.at(l).abs_mean, c.stats.abs_mean(l)));
  }
  const LayerStatistics one = read_layer_stats(path, 2);
  EXPECT_TRUE(at::equal(one.gram, c.stats.sums(2).gram));
  EXPECT_TRUE(read_stats_header(path).per_layer.empty());

  EXPECT_CSKV_ERROR(read_stats(path, "cfg-other"),
                    path + ": model_config_hash is 'cfg-0123abcd', expected 'cfg-other'");
  EXPECT_CSKV_ERROR(read_layer_stats(path, 1), path + ": layer 1 has no statistics");
  const std::string msg = test::error_message([&] { read_stats(c.dir / "none.h5"); });
  EXPECT_EQ(msg.rfind(c.dir / "none.h5" + ": cannot open HDF5 file: ", 0), 0u) << msg;
}

TEST(StatsFile, PythonReadsTheDatasets) {
  Captured c;
  capture(c, ActivationDtype::kFloat16);
  const std::string path = c.dir / "stats.h5";
  write_stats(path, c.stats, testing::kHash);
  const std::string script =
      "import h5py,sys\n"
      "f=h5py.File(sys.argv[1],'r')\n"
      "g=f['layers/2/gram']; m=f['layers/0/abs_mean']\n"
      "print(g.shape, g.dtype, m.shape, m.dtype, int(f.attrs['token_count']), "
      "f.attrs['model_config_hash'])\n"
      "print('%.17g' % g[3,5])\n";
  const auto r = test::run_command({test::python3(), "-c", script, path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::ostringstream want;
  want.precision(17);
  want << "(16, 16) float64 (16,) float64 48 cfg-0123abcd\n"
       << c.stats.sums(2).gram[3][5].item<double>() << "\n";
  EXPECT_EQ(r.out, want.str());
}

}  // namespace
}  // namespace cskv::data
