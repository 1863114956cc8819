// Tests of data/activation_shard: the writer's atomic rename, header round trip, row/layer
// checks, fp16/fp32 storage bit for bit, and the schema as python3-h5py reads it.
#include "data/activation_shard.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "data/activation_reader.h"
#include "data/manifest.h"
#include "tests/data/data_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::data {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using testing::activations;
using testing::ShardSpec;
using testing::write_shard;

// All rows of one layer of one split through the reader (one batch).
at::Tensor read_all(const std::string& dir, int64_t layer, const std::string& split = "train") {
  ActivationReaderOptions o;
  o.acts_dir = dir;
  o.layer = layer;
  o.split = split;
  o.batch_tokens = 1 << 20;
  ActivationReader r(o);
  auto b = r.next();
  EXPECT_TRUE(b.has_value());
  return b ? b->x : at::Tensor();
}

TEST(ShardNames, FiveDigitRankAndWorld) {
  EXPECT_EQ(shard_file_name(1, 3), "shard-00001-of-00003.h5");
  EXPECT_EQ(shard_file_name(0, 1, "holdout"), "holdout-00000-of-00001.h5");
  EXPECT_CSKV_ERROR(shard_file_name(0, 1, "test"), "split must be train or holdout, got 'test'");
}

TEST(ActivationShardWriter, Float16RoundTripIsBitwiseTheHalfCast) {
  TempDir dir;
  ShardSpec spec;
  const at::Tensor x0 = activations(3 * spec.seq_len, spec.hidden, 1);
  const at::Tensor x1 = activations(3 * spec.seq_len, spec.hidden, 2);
  const ShardSummary s = write_shard(dir.path(), spec, {x0, x1}, {4, 9, 2});
  EXPECT_EQ(s.path, dir / "shard-00000-of-00001.h5");
  EXPECT_EQ(s.num_sequences, 3);
  EXPECT_EQ(s.token_count, 12);
  EXPECT_EQ(s.bytes, fs::file_size(s.path));
  EXPECT_FALSE(fs::exists(s.path + ".partial"));
  write_manifest(dir.path(), {manifest_entry(s)});

  const ShardHeader h = read_shard_header(s.path);
  EXPECT_EQ(h.format_version, 1);
  EXPECT_EQ(h.model_config_hash, testing::kHash);
  EXPECT_EQ(h.hidden_size, 8);
  EXPECT_EQ(h.num_layers, 2);
  EXPECT_EQ(h.layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(h.seq_len, 4);
  EXPECT_EQ(h.dtype, ActivationDtype::kFloat16);
  EXPECT_EQ(h.token_count, 12);
  EXPECT_EQ(h.sequence_ids, (std::vector<int64_t>{4, 9, 2}));
  EXPECT_EQ(h.seed, 7u);
  EXPECT_EQ(h.split, "train");

  const at::Tensor r0 = read_all(dir.path(), 0);
  const at::Tensor r1 = read_all(dir.path(), 1);
  EXPECT_TRUE(at::equal(r0, x0.to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE(at::equal(r1, x1.to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE(at::equal(r0, round_to_storage(x0, ActivationDtype::kFloat16)));
  EXPECT_FALSE(at::equal(r0, x0));  // the data really went through float16
}

TEST(ActivationShardWriter, Float32RoundTripIsExact) {
  TempDir dir;
  ShardSpec spec;
  spec.dtype = ActivationDtype::kFloat32;
  spec.layers = {1};
  spec.hidden = 5;
  const at::Tensor x = activations(2 * spec.seq_len, spec.hidden, 3);
  write_manifest(dir.path(), {manifest_entry(write_shard(dir.path(), spec, {x}, {0, 1}))});
  EXPECT_TRUE(at::equal(read_all(dir.path(), 1), x));
  EXPECT_EQ(read_shard_header(dir / "shard-00000-of-00001.h5").dtype, ActivationDtype::kFloat32);
}

TEST(ActivationShardWriter, UnfinishedWriterLeavesNoCompleteLookingFile) {
  TempDir dir;
  ShardHeader h;
  h.model_config_hash = "h";
  h.hidden_size = 4;
  h.num_layers = 1;
  h.layers = {0};
  h.seq_len = 2;
  const std::string path = dir / "shard-00000-of-00001.h5";
  {
    ActivationShardWriter w(path, h);
    w.append(0, at::ones({2, 4}));
    EXPECT_TRUE(fs::exists(path + ".partial"));
    EXPECT_FALSE(fs::exists(path));
  }
  EXPECT_FALSE(fs::exists(path + ".partial"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(ActivationShardWriter, RejectsInconsistentInput) {
  TempDir dir;
  ShardHeader h;
  h.model_config_hash = "h";
  h.hidden_size = 4;
  h.num_layers = 3;
  h.layers = {0, 2};
  h.seq_len = 2;
  const std::string path = dir / "s.h5";
  ActivationShardWriter w(path, h);
  EXPECT_CSKV_ERROR(w.append(1, at::ones({2, 4})), path + ": layer 1 is not stored in this shard");
  EXPECT_CSKV_ERROR(w.append(0, at::ones({3, 4})),
                    path + ": /layers/0/x takes whole sequences of 2 rows, got 3 rows");
  EXPECT_CSKV_ERROR(w.append(0, at::ones({2, 5})),
                    path + ": /layers/0/x expects rows of 4 values, got a tensor of shape [2, 5]");
  w.append(0, at::ones({4, 4}));
  w.append(2, at::ones({2, 4}));
  w.append_tokens({0, 1}, at::zeros({2, 2}, at::kInt));
  EXPECT_CSKV_ERROR(w.finish(),
                    path + ": layer 2 holds 2 rows but /tokens holds 2 sequences of 2 (4 rows)");
}

TEST(ActivationShardWriter, PythonH5pyReadsTheDocumentedSchema) {
  TempDir dir;
  ShardSpec spec;
  spec.rank = 1;
  spec.world = 3;
  spec.layers = {0, 2};
  spec.num_layers = 4;
  spec.hidden = 6;
  const at::Tensor x0 = activations(2 * spec.seq_len, spec.hidden, 4);
  const at::Tensor x2 = activations(2 * spec.seq_len, spec.hidden, 5);
  const ShardSummary s = write_shard(dir.path(), spec, {x0, x2}, {1, 4});
  EXPECT_EQ(fs::path(s.path).filename(), "shard-00001-of-00003.h5");

  const auto r = test::run_command(
      {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/data_check_shard.py", s.path,
       "6", "4", "2", "float16", "0,2"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const double sum = x0.to(at::kHalf).to(at::kDouble).sum().item<double>();
  std::ostringstream expect;
  expect.precision(17);
  expect << "SUM " << sum;
  // Python's %.17g and C++'s precision-17 general format agree digit for digit.
  EXPECT_NE(r.out.find(expect.str() + "\n"), std::string::npos) << r.out << " vs " << expect.str();
  EXPECT_NE(r.out.find("TOKENS 1000 1001 1002 1003\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SEQIDS 1 4\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("OK\n"), std::string::npos) << r.out;

  spec.dtype = ActivationDtype::kFloat32;
  spec.rank = 2;
  const ShardSummary s32 = write_shard(dir.path(), spec, {x0, x2}, {2, 5});
  const auto r32 = test::run_command(
      {test::python3(), std::string(CSKV_SOURCE_DIR) + "/tests/python/data_check_shard.py",
       s32.path, "6", "4", "2", "float32", "0,2"});
  EXPECT_EQ(r32.exit_code, 0) << r32.out << r32.err;
}

}  // namespace
}  // namespace cskv::data
