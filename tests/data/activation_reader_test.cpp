// Tests of data/activation_reader: batches across shards equal the concatenation, prefetch and
// synchronous reads agree, seek/position resume, epochs, row slices, splits, NaN/Inf messages.
#include "data/activation_reader.h"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <thread>

#include "tests/data/data_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::data {
namespace {

using test::TempDir;
using testing::activations;
using testing::ShardSpec;
using testing::write_shard;

// Three training shards with 2, 1 and 3 sequences (seq_len 4, H 8, layers 0 and 1) and one
// holdout shard; the expected rows of layer 1 are kept in `expected` (fp16-rounded).
class ReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ShardSpec spec;
    spec.world = 3;
    const int64_t seqs[3] = {2, 1, 3};
    std::vector<at::Tensor> parts;
    int64_t id = 0;
    std::vector<ManifestEntry> entries;
    for (int rank = 0; rank < 3; ++rank) {
      spec.rank = rank;
      const at::Tensor x0 = activations(seqs[rank] * 4, 8, 100 + rank);
      const at::Tensor x1 = activations(seqs[rank] * 4, 8, 200 + rank);
      std::vector<int64_t> ids;
      for (int64_t s = 0; s < seqs[rank]; ++s) ids.push_back(id++);
      entries.push_back(manifest_entry(write_shard(dir.path(), spec, {x0, x1}, ids)));
      parts.push_back(x1.to(at::kHalf).to(at::kFloat));
    }
    expected = at::cat(parts, 0);  // [24, 8]
    spec.split = "holdout";
    spec.world = 1;
    spec.rank = 0;
    holdout_x1 = activations(8, 8, 300);
    entries.push_back(manifest_entry(
        write_shard(dir.path(), spec, {activations(8, 8, 301), holdout_x1}, {90, 91})));
    write_manifest(dir.path(), entries);
  }

  ActivationReaderOptions options(int64_t batch, int prefetch = 2) const {
    ActivationReaderOptions o;
    o.acts_dir = dir.path();
    o.layer = 1;
    o.batch_tokens = batch;
    o.prefetch_batches = prefetch;
    o.expect.model_config_hash = testing::kHash;
    o.expect.hidden_size = 8;
    return o;
  }

  static std::vector<ActivationBatch> drain(ActivationReader& r) {
    std::vector<ActivationBatch> out;
    while (auto b = r.next()) out.push_back(*b);
    return out;
  }

  TempDir dir;
  at::Tensor expected;
  at::Tensor holdout_x1;
};

TEST_F(ReaderTest, BatchesAcrossShardsEqualTheConcatenation) {
  ActivationReader r(options(5));
  EXPECT_EQ(r.epoch_tokens(), 24);
  EXPECT_EQ(r.hidden_size(), 8);
  EXPECT_EQ(r.shard_paths().size(), 3u);
  const auto batches = drain(r);
  ASSERT_EQ(batches.size(), 5u);
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < batches.size(); ++i) {
    EXPECT_EQ(batches[i].x.size(0), i < 4 ? 5 : 4);
    EXPECT_EQ(batches[i].position, static_cast<int64_t>(i) * 5);
    EXPECT_EQ(batches[i].x.scalar_type(), at::kFloat);
    xs.push_back(batches[i].x);
  }
  EXPECT_TRUE(at::equal(at::cat(xs, 0), expected));
  EXPECT_EQ(r.position(), 24);
  EXPECT_FALSE(r.next().has_value());  // stays at the end
}

TEST_F(ReaderTest, PrefetchDeliversTheSameDataAsSynchronousReads) {
  for (int prefetch : {0, 1, 2, 4}) {
    ActivationReader r(options(3, prefetch));
    const auto batches = drain(r);
    ASSERT_EQ(batches.size(), 8u) << prefetch;
    std::vector<at::Tensor> xs;
    for (const auto& b : batches) xs.push_back(b.x);
    EXPECT_TRUE(at::equal(at::cat(xs, 0), expected)) << prefetch;
  }
  // A slow consumer: the producer fills the bounded queue ahead and data stays in order.
  ActivationReader r(options(2, 2));
  std::vector<at::Tensor> xs;
  while (auto b = r.next()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    xs.push_back(b->x);
  }
  EXPECT_TRUE(at::equal(at::cat(xs, 0), expected));
}

TEST_F(ReaderTest, SeekToPositionResumesTheContinuousStream) {
  auto o = options(5);
  o.num_epochs = 2;
  ActivationReader full(o);
  const auto all = drain(full);
  ASSERT_EQ(all.size(), 10u);
  EXPECT_EQ(all[5].epoch, 1);
  EXPECT_EQ(all[5].row, 0);
  EXPECT_EQ(all[5].position, 24);
  EXPECT_TRUE(at::equal(all[5].x, all[0].x));

  for (int stop : {1, 4, 5, 7}) {
    ActivationReader first(o);
    for (int i = 0; i < stop; ++i) ASSERT_TRUE(first.next().has_value());
    const int64_t pos = first.position();
    ActivationReader resumed(o);  // a restarted process
    resumed.seek(pos);
    EXPECT_EQ(resumed.position(), pos);
    const auto rest = drain(resumed);
    ASSERT_EQ(rest.size(), all.size() - static_cast<size_t>(stop)) << stop;
    for (size_t i = 0; i < rest.size(); ++i) {
      EXPECT_EQ(rest[i].position, all[stop + i].position);
      EXPECT_TRUE(at::equal(rest[i].x, all[stop + i].x)) << stop << " " << i;
    }
  }
  // Seeking back inside one reader (prefetch thread restarted) gives the same batches again.
  ActivationReader r(o);
  ASSERT_TRUE(r.next().has_value());
  ASSERT_TRUE(r.next().has_value());
  r.seek(5);
  auto b = r.next();
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(at::equal(b->x, all[1].x));
}

TEST_F(ReaderTest, RowSliceAndHoldoutSplit) {
  auto o = options(100);
  o.row_begin = 6;
  o.row_end = 19;
  ActivationReader r(o);
  EXPECT_EQ(r.epoch_tokens(), 13);
  auto b = r.next();
  ASSERT_TRUE(b.has_value());
  EXPECT_TRUE(at::equal(b->x, expected.slice(0, 6, 19)));

  auto h = options(100);
  h.split = "holdout";
  ActivationReader hr(h);
  EXPECT_EQ(hr.epoch_tokens(), 8);
  auto hb = hr.next();
  ASSERT_TRUE(hb.has_value());
  EXPECT_TRUE(at::equal(hb->x, holdout_x1.to(at::kHalf).to(at::kFloat)));
}

TEST_F(ReaderTest, UnknownLayerAndWrongModel) {
  auto o = options(4);
  o.layer = 5;
  EXPECT_CSKV_ERROR(ActivationReader r(o), dir / "shard-00000-of-00003.h5" +
                                               ": layer 5 was not captured (shard holds 2 layers)");
  o = options(4);
  o.expect.model_config_hash = "other";
  EXPECT_CSKV_ERROR(ActivationReader r(o),
                    dir / "shard-00000-of-00003.h5" +
                        ": model_config_hash is 'cfg-0123abcd', expected 'other' (activations "
                        "captured from another model or config)");
}

TEST(ReaderNonFinite, NanAndInfNameLayerShardAndRow) {
  TempDir dir;
  ShardSpec spec;
  spec.world = 2;
  spec.layers = {3};
  spec.num_layers = 4;
  spec.dtype = ActivationDtype::kFloat32;
  at::Tensor a = activations(8, 8, 1);
  at::Tensor b = activations(8, 8, 2);
  b[6][5] = std::numeric_limits<float>::quiet_NaN();
  std::vector<ManifestEntry> entries;
  spec.rank = 0;
  entries.push_back(manifest_entry(write_shard(dir.path(), spec, {a}, {0, 1})));
  spec.rank = 1;
  entries.push_back(manifest_entry(write_shard(dir.path(), spec, {b}, {2, 3})));
  write_manifest(dir.path(), entries);

  for (int prefetch : {0, 2}) {
    ActivationReaderOptions o;
    o.acts_dir = dir.path();
    o.layer = 3;
    o.batch_tokens = 5;
    o.prefetch_batches = prefetch;
    ActivationReader r(o);
    ASSERT_TRUE(r.next().has_value());  // rows 0-4
    ASSERT_TRUE(r.next().has_value());  // rows 5-9
    const std::string msg = dir / "shard-00001-of-00002.h5" +
                            ": layer 3 row 6 channel 5 is nan (non-finite activation)";
    EXPECT_CSKV_ERROR(r.next(), msg);  // rows 10-14 hold shard 1 row 6
    EXPECT_CSKV_ERROR(r.next(), msg);  // the error sticks until seek()
    r.seek(0);
    EXPECT_TRUE(r.next().has_value());
  }

  // Infinity in a float16 shard (values beyond 65504 overflow when stored).
  TempDir dir2;
  spec.dtype = ActivationDtype::kFloat16;
  spec.world = 1;
  spec.rank = 0;
  at::Tensor c = activations(4, 8, 3);
  c[2][0] = -1e6f;
  write_manifest(dir2.path(), {manifest_entry(write_shard(dir2.path(), spec, {c}, {0}))});
  ActivationReaderOptions o;
  o.acts_dir = dir2.path();
  o.layer = 3;
  ActivationReader r(o);
  EXPECT_CSKV_ERROR(r.next(), dir2 / "shard-00000-of-00001.h5" +
                                  ": layer 3 row 2 channel 0 is -inf (non-finite activation)");
}

// Without convert the rows arrive as stored; converted where they are used (a GPU, or here the
// CPU), they are the converted batches bit for bit, and check_finite there says what next() says.
TEST(ActivationReaderChecks, UnconvertedBatchesConvertAndCheckWhereTheyAreUsed) {
  TempDir dir;
  ShardSpec spec;
  spec.world = 1;
  spec.rank = 0;
  spec.layers = {3};
  spec.num_layers = 4;
  spec.dtype = ActivationDtype::kFloat16;
  at::Tensor c = activations(12, 8, 3);
  c[9][4] = -1e6f;  // -inf once stored as float16
  write_manifest(dir.path(), {manifest_entry(write_shard(dir.path(), spec, {c}, {0, 1, 2}))});
  ActivationReaderOptions o;
  o.acts_dir = dir.path();
  o.layer = 3;
  o.batch_tokens = 5;
  ActivationReader converted(o);
  o.convert = false;
  ActivationReader raw(o);
  {  // rows 0-4
    const auto want = converted.next();
    const auto got = raw.next();
    ASSERT_TRUE(want && got);
    EXPECT_EQ(got->x.scalar_type(), at::kHalf);
    EXPECT_TRUE(at::equal(got->x.to(at::kFloat), want->x));
    raw.check_finite(*got, got->x.to(at::kFloat));  // rows 0-4 are finite
  }
  const std::string msg =
      dir / "shard-00000-of-00001.h5" + ": layer 3 row 9 channel 4 is -inf (non-finite activation)";
  EXPECT_CSKV_ERROR(converted.next(), msg);
  const auto bad = raw.next();  // rows 5-9, unchecked
  ASSERT_TRUE(bad.has_value());
  EXPECT_CSKV_ERROR(raw.check_finite(*bad, bad->x.to(at::kFloat)), msg);
}

}  // namespace
}  // namespace cskv::data
