// Tests of data/manifest and data/checksum: XXH64 reference vectors, manifest round trip and
// the exact messages for a missing, truncated, corrupted or foreign shard.
#include "data/manifest.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/checksum.h"
#include "tests/data/data_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::data {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using testing::activations;
using testing::ShardSpec;
using testing::write_shard;

TEST(Checksum, Xxh64ReferenceVectors) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ULL);
  const std::string s = "Nobody inspects the spammish repetition";  // 39 bytes: one stripe
  EXPECT_EQ(xxh64(s.data(), s.size()), 0xFBCEA83C8A378BF1ULL);
  // Incremental updates of any split give the one-shot digest.
  std::string big(100003, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) ^ (i >> 7));
  const uint64_t whole = xxh64(big.data(), big.size());
  for (size_t step : {1u, 7u, 31u, 32u, 33u, 4096u}) {
    Xxh64 h;
    for (size_t off = 0; off < big.size(); off += step) {
      h.update(big.data() + off, std::min(step, big.size() - off));
    }
    EXPECT_EQ(h.digest(), whole) << "step " << step;
  }
  TempDir dir;
  test::write_file(dir / "f", big);
  EXPECT_EQ(xxh64_file(dir / "f"), whole);
  EXPECT_EQ(format_checksum(0xFBCEA83C8A378BF1ULL), "xxh64:fbcea83c8a378bf1");
}

class ManifestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ShardSpec spec;
    spec.world = 2;
    for (int rank = 0; rank < 2; ++rank) {
      spec.rank = rank;
      const at::Tensor x = activations(2 * spec.seq_len, spec.hidden, rank + 10);
      entries.push_back(manifest_entry(write_shard(dir.path(), spec, {x, x}, {rank, rank + 2})));
    }
    write_manifest(dir.path(), entries);
  }
  std::string shard(int rank) const { return dir / shard_file_name(rank, 2); }
  ShardExpectation expect() const {
    ShardExpectation e;
    e.model_config_hash = testing::kHash;
    e.hidden_size = 8;
    e.dtype = "float16";
    return e;
  }

  TempDir dir;
  std::vector<ManifestEntry> entries;
};

TEST_F(ManifestTest, RoundTripAndValidation) {
  EXPECT_FALSE(fs::exists(dir / "manifest.json.tmp"));
  const auto read = read_manifest(dir.path());
  ASSERT_EQ(read.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(read[i].file, shard_file_name(static_cast<int>(i), 2));
    EXPECT_EQ(read[i].bytes, fs::file_size(shard(static_cast<int>(i))));
    EXPECT_EQ(read[i].checksum, format_checksum(xxh64_file(shard(static_cast<int>(i)))));
    EXPECT_EQ(read[i].split, "train");
    EXPECT_EQ(read[i].num_sequences, 2);
    EXPECT_EQ(read[i].token_count, 8);
  }
  const auto headers = validate_manifest(dir.path(), read, expect(), true);
  ASSERT_EQ(headers.size(), 2u);
  EXPECT_EQ(headers[1].sequence_ids, (std::vector<int64_t>{1, 3}));
}

TEST_F(ManifestTest, MissingManifest) {
  TempDir empty;
  EXPECT_CSKV_ERROR(read_manifest(empty.path()),
                    empty / "manifest.json" + ": no manifest (capture has not completed)");
}

TEST_F(ManifestTest, MissingShardIsNamed) {
  fs::remove(shard(1));
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), read_manifest(dir.path()), expect(), false),
                    dir / "manifest.json" + " lists shard-00001-of-00002.h5, but " + shard(1) +
                        " does not exist");
}

TEST_F(ManifestTest, TruncatedShard) {
  const uint64_t size = fs::file_size(shard(0));
  fs::resize_file(shard(0), size / 2);
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), read_manifest(dir.path()), expect(), false),
                    shard(0) + ": " + std::to_string(size / 2) + " bytes, manifest.json records " +
                        std::to_string(size) + " bytes (truncated or rewritten)");
  // Opened directly, HDF5's own diagnosis is wrapped with the path.
  const std::string msg = test::error_message([&] { read_shard_header(shard(0)); });
  const std::string prefix = shard(0) + ": cannot open HDF5 file: ";
  EXPECT_EQ(msg.substr(0, prefix.size()), prefix) << msg;
  EXPECT_NE(msg.find("truncated file"), std::string::npos) << msg;
}

TEST_F(ManifestTest, ChecksumMismatch) {
  // Flip one byte without changing the size.
  std::string bytes = test::read_file(shard(1));
  bytes[bytes.size() - 100] = static_cast<char>(bytes[bytes.size() - 100] ^ 0x5a);
  test::write_file(shard(1), bytes);
  const std::string now = format_checksum(xxh64(bytes.data(), bytes.size()));
  const auto m = read_manifest(dir.path());
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), m, expect(), true),
                    shard(1) + ": checksum " + now + ", manifest.json records " + m[1].checksum +
                        " (file is corrupt or changed)");
}

TEST_F(ManifestTest, ForeignModelHiddenSizeAndDtype) {
  const auto m = read_manifest(dir.path());
  ShardExpectation e = expect();
  e.model_config_hash = "cfg-ffff0000";
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), m, e, false),
                    shard(0) +
                        ": model_config_hash is 'cfg-0123abcd', expected 'cfg-ffff0000' "
                        "(activations captured from another model or config)");
  e = expect();
  e.hidden_size = 16;
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), m, e, false),
                    shard(0) + ": hidden_size is 8, expected 16");
  e = expect();
  e.dtype = "float32";
  EXPECT_CSKV_ERROR(validate_manifest(dir.path(), m, e, false),
                    shard(0) + ": dtype is float16, expected float32");
}

TEST_F(ManifestTest, MalformedManifest) {
  test::write_file(dir / "manifest.json", R"({"format_version": 1, "shards": [{"file": "a.h5"}]})");
  EXPECT_CSKV_ERROR(read_manifest(dir.path()),
                    dir / "manifest.json" + ": shard entry 0 has no 'bytes'");
  test::write_file(dir / "manifest.json", R"({"format_version": 2, "shards": []})");
  EXPECT_CSKV_ERROR(read_manifest(dir.path()),
                    dir / "manifest.json" + ": format_version is 2, this build reads version 1");
}

}  // namespace
}  // namespace cskv::data
