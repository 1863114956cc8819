// Step manifests and complete-step search: fallback past corrupt / truncated / missing rank
// files and unfinished saves (with the warning), no complete step, load_step, pruning, and
// the resume-config guard.
#include "checkpoint/step_manifest.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoint/resume_config.h"
#include "checkpoint/step_manifest_json.h"
#include "common/log.h"
#include "data/checksum.h"
#include "tests/checkpoint/checkpoint_test_util.h"
#include "tests/support/test_support.h"

namespace cskv::checkpoint {
namespace {

using test_util::expect_same_state;
using test_util::make_state;
using trainer::KvKind;
namespace fs = std::filesystem;

const char* kConfig = R"({"k_density":0.5,"seed":0})";

// Captures the "checkpoint" logger's lines (message only) while alive.
class LogCapture {
 public:
  LogCapture() : logger_(log::get("checkpoint")) {
    sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink_->set_pattern("%l: %v");
    logger_->sinks().push_back(sink_);
  }
  ~LogCapture() {
    auto& sinks = logger_->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> logger_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

// A complete step: ranks own layers round-robin (layer l K and V on rank l % world).
void save_step(const std::string& dir, int64_t step, int world, int64_t layers = 4) {
  std::vector<RankFileEntry> entries;
  for (int r = 0; r < world; ++r) {
    std::vector<trainer::JobState> jobs;
    for (int64_t l = r; l < layers; l += world) {
      for (const KvKind k : {KvKind::kKey, KvKind::kValue}) {
        jobs.push_back(make_state(l, k, 8, 3, 6, step, 100, static_cast<uint64_t>(step * 100 + l)));
      }
    }
    entries.push_back(write_rank_checkpoint(dir, step, r, jobs, kConfig));
  }
  write_step_manifest(dir, step, world, entries, kConfig);
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

TEST(StepManifest, WritesEntriesAndConfig) {
  test::TempDir dir;
  save_step(dir.path(), 12, 2);
  const StepManifest m = read_step_manifest(dir.path(), 12);
  EXPECT_EQ(m.step, 12);
  EXPECT_EQ(m.world_size, 2);
  ASSERT_EQ(m.files.size(), 2u);
  const std::string rank1 = dir / "step-00000012/rank-1.safetensors";
  EXPECT_EQ(m.files[1].file, "rank-1.safetensors");
  EXPECT_EQ(m.files[1].bytes, fs::file_size(rank1));
  EXPECT_EQ(m.files[1].checksum, data::format_checksum(data::xxh64_file(rank1)));
  EXPECT_EQ(m.config_json, kConfig);
  EXPECT_FALSE(fs::exists(dir / "step-00000012/manifest.json.tmp"));
}

TEST(StepManifest, RefusesAnIncompleteRankList) {
  test::TempDir dir;
  const auto e0 = write_rank_checkpoint(dir.path(), 1, 0, {}, kConfig);
  EXPECT_CSKV_ERROR(write_step_manifest(dir.path(), 1, 2, {e0}, kConfig),
                    dir / "step-00000001/manifest.json: 1 rank file(s) given for world size 2");
  EXPECT_CSKV_ERROR(write_step_manifest(dir.path(), 1, 2, {e0, e0}, kConfig),
                    dir /
                        "step-00000001/manifest.json: expected one entry per rank 0..1; entry 1 "
                        "is rank 0 (rank-0.safetensors)");
  EXPECT_FALSE(fs::exists(dir / "step-00000001/manifest.json"));
}

// Numbers that an integer field cannot hold exactly are the wrong type, never converted (a float
// beyond the range was undefined behaviour; found by fuzz_json_formats, now in its corpus).
TEST(StepManifest, IntegersThatDoNotFitAreTheWrongType) {
  for (const char* rank : {"184467440737095516150", "1.5", "4294967296", "-1"}) {
    const std::string entry = std::string("{\"rank\": ") + rank +
                              ", \"file\": \"rank-0.safetensors\", \"bytes\": 8, "
                              "\"checksum\": \"xxh64:729a587c3413e13c\"}";
    if (std::string(rank) == "-1") {  // an int holds it; the manifest's own checks name it
      EXPECT_EQ(nlohmann::json::parse(entry).get<RankFileEntry>().rank, -1);
      continue;
    }
    EXPECT_THROW(nlohmann::json::parse(entry).get<RankFileEntry>(), nlohmann::json::type_error)
        << rank;
  }
  const std::string manifest =
      "{\"format_version\": 1, \"step\": 4, \"world_size\": 1e30, \"files\": [], "
      "\"config\": {}}";
  EXPECT_CSKV_ERROR(parse_step_manifest(manifest, "m.json", 4),
                    "m.json: the manifest field 'world_size' has the wrong type: 1e+30");
}

TEST(StepSearch, NewestCompleteStepWins) {
  test::TempDir dir;
  save_step(dir.path(), 10, 2);
  save_step(dir.path(), 20, 2);
  LogCapture logs;
  const auto found = search_latest_complete_step(dir.path());
  EXPECT_EQ(found.step, std::optional<int64_t>(20));
  EXPECT_TRUE(found.skipped.empty());
  EXPECT_EQ(logs.text(), "");
  EXPECT_EQ(list_steps(dir.path()), (std::vector<int64_t>{10, 20}));
}

TEST(StepSearch, CorruptRankFileFallsBackWithWarning) {
  test::TempDir dir;
  save_step(dir.path(), 10, 2);
  save_step(dir.path(), 12, 2);
  const std::string bad = dir / "step-00000012/rank-1.safetensors";
  const std::string recorded = read_step_manifest(dir.path(), 12).files[1].checksum;
  flip_byte(bad, fs::file_size(bad) - 5);
  const std::string actual = data::format_checksum(data::xxh64_file(bad));
  ASSERT_NE(actual, recorded);
  LogCapture logs;
  const auto found = search_latest_complete_step(dir.path());
  EXPECT_EQ(found.step, std::optional<int64_t>(10));
  const std::string reason =
      bad + ": checksum " + actual + " does not match the manifest (" + recorded + ")";
  EXPECT_EQ(found.skipped, std::vector<std::string>{reason});
  EXPECT_EQ(logs.text(), "warning: " + reason + "; falling back to an earlier step\n");
  EXPECT_EQ(find_latest_complete_step(dir.path()), std::optional<int64_t>(10));
}

TEST(StepSearch, TruncatedMissingAndUnfinishedStepsFallBack) {
  test::TempDir dir;
  save_step(dir.path(), 10, 2);
  save_step(dir.path(), 20, 2);
  save_step(dir.path(), 30, 3);
  // Step 40: the ranks wrote their files but the manifest never came.
  write_rank_checkpoint(dir.path(), 40, 0, {}, kConfig);
  const std::string truncated = dir / "step-00000030/rank-2.safetensors";
  const uint64_t size = fs::file_size(truncated);
  fs::resize_file(truncated, size - 100);
  const std::string missing = dir / "step-00000020/rank-0.safetensors";
  fs::remove(missing);
  LogCapture logs;
  const auto found = search_latest_complete_step(dir.path());
  EXPECT_EQ(found.step, std::optional<int64_t>(10));
  const std::vector<std::string> expected = {
      dir / "step-00000040: no manifest.json (the save did not complete)",
      truncated + ": " + std::to_string(size - 100) + " bytes, the manifest records " +
          std::to_string(size) + " (truncated or rewritten)",
      missing + ": missing (the manifest lists it)"};
  EXPECT_EQ(found.skipped, expected);
  std::string expected_log;
  for (const auto& e : expected)
    expected_log += "warning: " + e + "; falling back to an earlier step\n";
  EXPECT_EQ(logs.text(), expected_log);
}

TEST(StepSearch, NoCompleteStepIsAnError) {
  test::TempDir dir;
  EXPECT_EQ(find_latest_complete_step(dir / "nothing"), std::nullopt);
  EXPECT_CSKV_ERROR(require_latest_complete_step(dir / "nothing"),
                    "no complete checkpoint in " + dir / "nothing");
  save_step(dir.path(), 5, 1);
  fs::remove(dir / "step-00000005/manifest.json");
  LogCapture logs;
  EXPECT_EQ(find_latest_complete_step(dir.path()), std::nullopt);
  EXPECT_CSKV_ERROR(require_latest_complete_step(dir.path()),
                    "no complete checkpoint in " + dir.path());
  EXPECT_EQ(no_complete_checkpoint_message("ckpt/"), "no complete checkpoint in ckpt/");
}

TEST(LoadStep, IsTheUnionOfTheRankFiles) {
  test::TempDir dir;
  // Rank 0: layer 0 K, layer 1 V; rank 1: layer 0 V, layer 1 K (any split of the jobs works).
  const auto s0k = make_state(0, KvKind::kKey, 8, 3, 6, 7, 9, 1);
  const auto s1v = make_state(1, KvKind::kValue, 8, 2, 6, 9, 9, 2);
  const auto s0v = make_state(0, KvKind::kValue, 8, 4, 6, 3, 9, 3);
  const auto s1k = make_state(1, KvKind::kKey, 8, 3, 6, 0, 9, 4);
  const auto e0 = write_rank_checkpoint(dir.path(), 7, 0, {s0k, s1v}, kConfig);
  const auto e1 = write_rank_checkpoint(dir.path(), 7, 1, {s0v, s1k}, kConfig);
  write_step_manifest(dir.path(), 7, 2, {e1, e0}, kConfig);
  const auto jobs = load_step(dir.path(), 7);
  ASSERT_EQ(jobs.size(), 4u);
  expect_same_state(jobs.at({0, KvKind::kKey}), s0k);
  expect_same_state(jobs.at({0, KvKind::kValue}), s0v);
  expect_same_state(jobs.at({1, KvKind::kKey}), s1k);
  expect_same_state(jobs.at({1, KvKind::kValue}), s1v);
}

TEST(LoadStep, DuplicateJobsMustBeIdentical) {
  test::TempDir dir;
  const auto s = make_state(2, KvKind::kKey, 8, 3, 6, 4, 9, 1);
  auto other = s;
  other.A = s.A.clone();
  other.A[1][1] = 5.0f;
  const auto e0 = write_rank_checkpoint(dir.path(), 4, 0, {s}, kConfig);
  const auto e1 = write_rank_checkpoint(dir.path(), 4, 1, {s}, kConfig);
  write_step_manifest(dir.path(), 4, 2, {e0, e1}, kConfig);
  EXPECT_EQ(load_step(dir.path(), 4).size(), 1u);
  const auto e1b = write_rank_checkpoint(dir.path(), 4, 1, {other}, kConfig);
  write_step_manifest(dir.path(), 4, 2, {e0, e1b}, kConfig);
  EXPECT_CSKV_ERROR(load_step(dir.path(), 4),
                    "layer 2 K is saved in both " + dir / "step-00000004/rank-0.safetensors" +
                        " and " + dir / "step-00000004/rank-1.safetensors" +
                        " with different states");
}

TEST(Prune, KeepsTheNewestCompleteSteps) {
  test::TempDir dir;
  for (const int64_t s : {10, 20, 30, 40}) save_step(dir.path(), s, 1, 1);
  write_rank_checkpoint(dir.path(), 25, 0, {}, kConfig);  // incomplete, older than 40
  write_rank_checkpoint(dir.path(), 50, 0, {}, kConfig);  // incomplete, newer: a save in progress
  EXPECT_EQ(prune_steps(dir.path(), 2), (std::vector<int64_t>{10, 20, 25}));
  EXPECT_EQ(list_steps(dir.path()), (std::vector<int64_t>{30, 40, 50}));
  EXPECT_EQ(prune_steps(dir.path(), 2), std::vector<int64_t>{});
  EXPECT_EQ(prune_steps(dir.path(), 1, /*verify_checksums=*/false), std::vector<int64_t>{30});
  EXPECT_EQ(list_steps(dir.path()), (std::vector<int64_t>{40, 50}));
  EXPECT_CSKV_ERROR(prune_steps(dir.path(), 0),
                    "--keep: expected at least 1 checkpoint to keep, found 0");
}

TEST(Prune, CorruptStepDoesNotCountAsKept) {
  test::TempDir dir;
  for (const int64_t s : {10, 20, 30}) save_step(dir.path(), s, 1, 1);
  const std::string bad = dir / "step-00000020/rank-0.safetensors";
  flip_byte(bad, fs::file_size(bad) - 1);
  LogCapture logs;  // keeps the test output quiet
  EXPECT_EQ(prune_steps(dir.path(), 2), std::vector<int64_t>{20});
  EXPECT_EQ(list_steps(dir.path()), (std::vector<int64_t>{10, 30}));
}

TEST(ResumeConfig, ListsEveryDifferingKey) {
  EXPECT_CSKV_ERROR(check_resume_config(R"({"k_density":0.5,"seed":0,"init":"pca"})",
                                        R"({"k_density":0.25,"seed":1,"init":"pca"})", "ckpt/"),
                    "ckpt/ holds a run with other settings (k_density: 0.5 -> 0.25; seed: 0 -> "
                    "1); use another --ckpt-dir");
  EXPECT_CSKV_ERROR(
      check_resume_config(R"({"init":"pca","quant":{"k_bits":4,"window":32},"old":true})",
                          R"({"init":"svd","quant":{"k_bits":2,"window":32},"rotate":"none"})",
                          "run/ckpt"),
      "run/ckpt holds a run with other settings (init: pca -> svd; old: true -> (absent); "
      "quant.k_bits: 4 -> 2; rotate: (absent) -> none); use another --ckpt-dir");
  EXPECT_NO_THROW(check_resume_config(R"({"a":1,"b":[1,2]})", R"({"b":[1,2],"a":1})", "ckpt/"));
  EXPECT_CSKV_ERROR(check_resume_config("[1]", "{}", "ckpt/"),
                    "the saved config is not a JSON object: [1]");
}

}  // namespace
}  // namespace cskv::checkpoint
