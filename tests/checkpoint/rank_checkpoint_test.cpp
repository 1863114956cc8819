// Rank checkpoint files: bitwise round trip of every tensor and scalar (doubles included), the
// file layout and manifest entry, empty ranks, and exact errors for inconsistent states.
#include "checkpoint/rank_checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/checksum.h"
#include "model/safetensors.h"
#include "tests/checkpoint/checkpoint_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::checkpoint {
namespace {

using test_util::expect_same_state;
using test_util::make_state;
using trainer::KvKind;
namespace fs = std::filesystem;

const char* kConfig = R"({"k_density":0.5,"seed":7})";

TEST(RankCheckpoint, NamesSortLikeSteps) {
  EXPECT_EQ(step_dir_name(12), "step-00000012");
  EXPECT_EQ(step_dir_name(0), "step-00000000");
  EXPECT_EQ(rank_file_name(1), "rank-1.safetensors");
  EXPECT_EQ(rank_file_path("ckpt", 12, 1), "ckpt/step-00000012/rank-1.safetensors");
}

TEST(RankCheckpoint, RoundTripIsBitwise) {
  test::TempDir dir;
  const std::vector<trainer::JobState> jobs = {make_state(0, KvKind::kKey, 8, 3, 6, 5, 10, 1),
                                               make_state(0, KvKind::kValue, 8, 2, 6, 0, 10, 2),
                                               make_state(2, KvKind::kKey, 8, 6, 6, 10, 10, 3)};
  const RankFileEntry e = write_rank_checkpoint(dir.path(), 12, 1, jobs, kConfig);
  const std::string path = dir / "step-00000012/rank-1.safetensors";
  ASSERT_TRUE(fs::is_regular_file(path));
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.file, "rank-1.safetensors");
  EXPECT_EQ(e.bytes, fs::file_size(path));
  EXPECT_EQ(e.checksum, data::format_checksum(data::xxh64_file(path)));
  // No temporary file is left next to it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "step-00000012"), fs::directory_iterator()),
            1);

  const auto back = read_rank_checkpoint(path);
  ASSERT_EQ(back.size(), jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) expect_same_state(jobs[i], back[i]);
  EXPECT_EQ(read_rank_checkpoint_config(path), kConfig);

  // The layout other tools see: named float32 tensors and the scalars as exact text.
  const auto f = model::SafetensorsFile::open(path);
  EXPECT_EQ(f->entry("jobs/0/V/A").shape, (std::vector<int64_t>{8, 2}));
  EXPECT_EQ(f->entry("jobs/2/K/eigenvalues_f64").shape, (std::vector<int64_t>{6, 2}));
  EXPECT_EQ(f->header().metadata.at("step"), "12");
  EXPECT_EQ(f->header().metadata.at("rank"), "1");
  const auto meta = nlohmann::json::parse(f->header().metadata.at("jobs"));
  EXPECT_EQ(meta[0]["floor"], "0.10000000000000002");
  EXPECT_EQ(meta[0]["floor_bits"], "3fb999999999999b");
  EXPECT_EQ(meta[1]["kind"], "V");
  EXPECT_EQ(meta[1]["data_position"], 2);
}

TEST(RankCheckpoint, RankWithoutJobsWritesAnEmptyFile) {
  test::TempDir dir;
  write_rank_checkpoint(dir.path(), 3, 4, {}, kConfig);
  EXPECT_TRUE(read_rank_checkpoint(dir / "step-00000003/rank-4.safetensors").empty());
}

TEST(RankCheckpoint, StateWithoutEigenvaluesRoundTrips) {
  test::TempDir dir;
  auto s = make_state(1, KvKind::kValue, 4, 2, 4, 1, 2, 9);
  s.eigenvalues = at::Tensor();
  write_rank_checkpoint(dir.path(), 1, 0, {s}, kConfig);
  const auto back = read_rank_checkpoint(dir / "step-00000001/rank-0.safetensors");
  ASSERT_EQ(back.size(), 1u);
  expect_same_state(s, back[0]);
}

TEST(RankCheckpoint, InconsistentStatesAreRefused) {
  test::TempDir dir;
  const std::string path = dir / "step-00000001/rank-0.safetensors";
  auto s = make_state(3, KvKind::kKey, 8, 3, 6, 1, 2, 4);
  s.m_A = at::zeros({4, 3});
  EXPECT_CSKV_ERROR(write_rank_checkpoint(dir.path(), 1, 0, {s}, kConfig),
                    path + ": layer 3 K: m_A is [4, 3], expected [8, 3]");
  s = make_state(3, KvKind::kKey, 8, 3, 6, 1, 2, 4);
  s.job.rank = 4;
  EXPECT_CSKV_ERROR(write_rank_checkpoint(dir.path(), 1, 0, {s}, kConfig),
                    path + ": layer 3 K has rank 4 but A is [8, 3] and B is [3, 6]");
  s = make_state(3, KvKind::kKey, 8, 3, 6, 1, 2, 4);
  s.eigenvalues = s.eigenvalues.to(at::kFloat);
  EXPECT_CSKV_ERROR(write_rank_checkpoint(dir.path(), 1, 0, {s}, kConfig),
                    path + ": layer 3 K: eigenvalues must be float64 [6], found Float [6]");
  EXPECT_FALSE(fs::exists(path));
}

TEST(RankCheckpoint, ForeignSafetensorsFileIsRefused) {
  test::TempDir dir;
  const std::string path = dir / "x.safetensors";
  model::write_safetensors(path, {{"w", at::zeros({2})}}, {{"format", "cskv-1"}});
  EXPECT_CSKV_ERROR(read_rank_checkpoint(path),
                    path + ": format is 'cskv-1', this build reads 'cskv-ckpt-2'");
}

}  // namespace
}  // namespace cskv::checkpoint
