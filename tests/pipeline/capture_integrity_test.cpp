// Integrity of a capture as train, eval and analyze read it: shard checksums against the
// manifest, shards listed twice, stats.h5 tied to its capture (identity, layers, finite values).
// Every refusal: the exact message, exit status 1 and every file of the capture byte-identical.
#include <cmath>

#include "data/capture_identity.h"
#include "data/checksum.h"
#include "tests/pipeline/capture_test_util.h"

namespace cskv::data {
namespace {

using namespace capture_testing;
using json = nlohmann::json;

class CaptureIntegrity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    make_model_and_tokens(dir_->path(), toy_spec(2, 48, 4, 2, 100, 512), 20000);
    capture(*dir_ / "acts", "1");
    capture(*dir_ / "other", "2");
    // A compressor trained on the clean capture, for eval.
    const auto r = train(*dir_ / "acts", *dir_ / "ckpt");
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::CommandResult run_capture(const std::string& out, const std::string& seed) {
    return test::run_cskv({"capture", "--model", *dir_ / "model", "--tokens", *dir_ / "tokens.bin",
                           "--num-seqs", "6", "--seq-len", "16", "--holdout-seqs", "2", "--seed",
                           seed, "--out", out, "--log-level", "warn"});
  }
  static void capture(const std::string& out, const std::string& seed) {
    const auto r = run_capture(out, seed);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static test::CommandResult train(const std::string& acts, const std::string& ckpt) {
    return test::run_cskv({"train", "--model", *dir_ / "model", "--acts", acts, "--ckpt-dir", ckpt,
                           "--batch-tokens", "16", "--steps", "2", "--log-level", "warn"});
  }
  static test::CommandResult eval(const std::string& acts, const std::string& out) {
    return test::run_cskv({"eval", "--model", *dir_ / "model", "--acts", acts, "--compressor",
                           *dir_ / "ckpt/compressor.safetensors", "--context", "8", "--decode", "4",
                           "--memory-contexts", "64", "--no-plots", "--out", out, "--log-level",
                           "warn"});
  }
  static test::CommandResult analyze(const std::string& acts, const std::string& out) {
    return test::run_cskv({"analyze", "--model", *dir_ / "model", "--acts", acts, "--out", out,
                           "--no-plots", "--log-level", "warn"});
  }
  // A private copy of the clean capture (or of `from`).
  std::string copy_of(const std::string& from = *dir_ / "acts") {
    const std::string to = tmp_ / "acts";
    fs::copy(from, to, fs::copy_options::recursive);
    return to;
  }
  static std::string other() { return *dir_ / "other"; }
  static std::string error_line(const std::string& command, const std::string& message) {
    return "cskv " + command + ": error: " + message + "\n";
  }
  // Each of `commands` (train, eval, analyze) on acts fails with exit 1 and exactly `message`.
  void expect_refused_by(const std::vector<std::string>& commands, const std::string& acts,
                         const std::string& message) {
    for (const std::string& c : commands) {
      const auto r = c == "train"  ? train(acts, tmp_ / "ckpt")
                     : c == "eval" ? eval(acts, tmp_ / "eval")
                                   : analyze(acts, tmp_ / "report");
      EXPECT_EQ(r.exit_code, 1) << c;
      EXPECT_EQ(r.err, error_line(c, message));
    }
  }

  test::TempDir tmp_;

 private:
  static test::TempDir* dir_;
};
test::TempDir* CaptureIntegrity::dir_ = nullptr;

void flip_byte_in_the_middle(const std::string& path) {
  std::string bytes = test::read_file(path);
  bytes[bytes.size() / 2] ^= 0x10;
  test::write_file(path, bytes);
}

TEST_F(CaptureIntegrity, FlippedByteInAShardIsRefusedByTrainAndEvalNamingBothChecksums) {
  for (const std::string file : {"shard-00000-of-00001.h5", "holdout-00000-of-00001.h5"}) {
    SCOPED_TRACE(file);
    test::TempDir t;
    const std::string acts = t / "acts";
    fs::copy(copy_of(), acts, fs::copy_options::recursive);
    fs::remove_all(tmp_ / "acts");
    const std::string path = acts + "/" + file;
    std::string recorded;
    for (const auto& e : read_manifest(acts)) {
      if (e.file == file) recorded = e.checksum;
    }
    flip_byte_in_the_middle(path);
    const std::string found = format_checksum(xxh64_file(path));
    ASSERT_NE(found, recorded);
    const auto before = dir_bytes(acts);
    const std::string message = path + ": checksum " + found + ", manifest.json records " +
                                recorded + " (file is corrupt or changed)";
    auto r = train(acts, t / "ckpt");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, error_line("train", message));
    EXPECT_FALSE(fs::exists(t / "ckpt/compressor.safetensors"));
    if (file.rfind("holdout", 0) == 0) {  // eval reads the held-out shards only
      r = eval(acts, t / "eval");
      EXPECT_EQ(r.exit_code, 1);
      EXPECT_EQ(r.err, error_line("eval", message));
    }
    EXPECT_EQ(dir_bytes(acts), before);
  }
}

TEST_F(CaptureIntegrity, ShardListedTwiceIsRefused) {
  const std::string acts = copy_of();
  json m = json::parse(test::read_file(manifest_path(acts)));
  ASSERT_EQ(m["shards"][1]["file"], "shard-00000-of-00001.h5");
  m["shards"].push_back(m["shards"][1]);
  test::write_file(manifest_path(acts), m.dump(2) + "\n");
  const auto before = dir_bytes(acts);
  auto r = train(acts, tmp_ / "ckpt");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, error_line("train", manifest_path(acts) +
                                           ": lists shard-00000-of-00001.h5 twice (shard "
                                           "entries 1 and 2)"));
  EXPECT_EQ(dir_bytes(acts), before);
}

TEST_F(CaptureIntegrity, SameSequencesUnderAnotherNameAreRefused) {
  const std::string acts = copy_of();
  fs::copy_file(acts + "/shard-00000-of-00001.h5", acts + "/shard-00001-of-00002.h5");
  json m = json::parse(test::read_file(manifest_path(acts)));
  json copy = m["shards"][1];
  copy["file"] = "shard-00001-of-00002.h5";
  m["shards"].push_back(copy);
  test::write_file(manifest_path(acts), m.dump(2) + "\n");
  const auto before = dir_bytes(acts);
  const auto r = train(acts, tmp_ / "ckpt");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, error_line("train", manifest_path(acts) +
                                           ": shard-00001-of-00002.h5 and "
                                           "shard-00000-of-00001.h5 both hold sequence 0 (a shard "
                                           "is listed twice under two names)"));
  EXPECT_EQ(dir_bytes(acts), before);
}

TEST_F(CaptureIntegrity, StatsOfAnotherCaptureAreRefusedByTrainEvalAndAnalyze) {
  const std::string acts = copy_of();
  fs::copy_file(other() + "/stats.h5", acts + "/stats.h5", fs::copy_options::overwrite_existing);
  const auto before = dir_bytes(acts);
  const std::string mine = *read_capture_identity(acts);
  const std::string theirs = *read_capture_identity(other());
  ASSERT_NE(mine, theirs);
  const std::string message = acts + "/stats.h5: capture_identity is " + theirs + ", but " + acts +
                              "/capture.json gives " + mine +
                              " (stats.h5 belongs to another capture; re-run cskv capture)";
  expect_refused_by({"train", "eval", "analyze"}, acts, message);
  EXPECT_EQ(dir_bytes(acts), before);
}

// Rewrites <acts>/stats.h5 with the given layers (random statistics), keeping its model hash and
// recording `identity`.
void rewrite_stats(const std::string& acts, const std::vector<int64_t>& layers,
                   const std::string& identity, double poison = 0, int64_t poison_layer = -1) {
  const StatsFile old = read_stats_header(acts + "/stats.h5");
  LayerStats stats(layers, old.hidden_size);
  for (const int64_t l : layers) stats.add(l, at::randn({32, old.hidden_size}));
  if (poison_layer >= 0) stats.sums(poison_layer).gram[2][3] = poison;
  write_stats(acts + "/stats.h5", stats, old.model_config_hash, identity);
}

TEST_F(CaptureIntegrity, StatsMissingALayerOfTheShardsAreRefused) {
  const std::string acts = copy_of();
  rewrite_stats(acts, {0}, *read_capture_identity(acts));
  const auto before = dir_bytes(acts);
  const std::string message = acts + "/stats.h5: no statistics for layer(s) 1 that " + acts +
                              "/holdout-00000-of-00001.h5 holds (stats.h5 has 0; re-run cskv "
                              "capture --overwrite)";
  expect_refused_by({"train", "analyze"}, acts, message);
  EXPECT_EQ(dir_bytes(acts), before);
}

TEST_F(CaptureIntegrity, NonFiniteStatisticsAreRefusedNamingLayerAndMatrix) {
  const std::string acts = copy_of();
  rewrite_stats(acts, {0, 1}, *read_capture_identity(acts), std::nan(""), 1);
  const auto before = dir_bytes(acts);
  const std::string message = acts +
                              "/stats.h5: layer 1 gram holds nan at [2, 3] (non-finite "
                              "statistics; re-run cskv capture)";
  expect_refused_by({"train", "analyze"}, acts, message);
  EXPECT_EQ(dir_bytes(acts), before);
  EXPECT_CSKV_ERROR(read_stats(acts + "/stats.h5"), message);
}

TEST_F(CaptureIntegrity, StatsWithoutIdentityAreUsedWithAWarning) {
  const std::string acts = copy_of();
  rewrite_stats(acts, {0, 1}, /*identity=*/"");
  EXPECT_TRUE(read_stats_header(acts + "/stats.h5").capture_identity.empty());
  const auto r = train(acts, tmp_ / "ckpt");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(acts +
                       "/stats.h5 records no capture_identity (written by an older cskv), "
                       "so it cannot be checked against " +
                       acts + "/capture.json; re-run cskv capture --overwrite to record it"),
            std::string::npos)
      << r.err;
}

TEST_F(CaptureIntegrity, CaptureRecordsItsIdentityIndependentOfBatch) {
  const std::string acts = copy_of();
  const StatsFile s = read_stats_header(acts + "/stats.h5");
  EXPECT_EQ(s.capture_identity, *read_capture_identity(acts));
  EXPECT_EQ(s.capture_identity.rfind("xxh64:", 0), 0u);
  // world_size and batch do not change what is stored, so not the identity either.
  json c = json::parse(test::read_file(capture_json_path(acts)));
  c["batch"] = 1;
  c["world_size"] = 3;
  EXPECT_EQ(capture_identity(c.dump(2), "x"), s.capture_identity);
  c["seed"] = 5;
  EXPECT_NE(capture_identity(c.dump(2), "x"), s.capture_identity);
}

// A damaged capture.json on a rerun: a message naming the file or the key, never nlohmann's
// "[json.exception...]" without a file; nothing in the directory changes.
TEST_F(CaptureIntegrity, DamagedCaptureJsonIsRefusedNamingTheFileOrKey) {
  const std::string acts = copy_of();
  json c = json::parse(test::read_file(capture_json_path(acts)));
  c["world_size"] = "x";  // the only difference: once "[json.exception.type_error.302] ..."
  test::write_file(capture_json_path(acts), c.dump(2) + "\n");
  auto before = dir_bytes(acts);
  auto r = run_capture(acts, "1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, error_line("capture", acts + " holds a capture with other settings (world_size: "
                                                "\"x\" -> 1); use another --out or --overwrite"));
  EXPECT_EQ(dir_bytes(acts), before);
  test::write_file(capture_json_path(acts), "[1, 2]\n");
  before = dir_bytes(acts);
  r = run_capture(acts, "1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            error_line("capture", capture_json_path(acts) +
                                      ": not a JSON object (expected the settings of the "
                                      "capture in this directory; --overwrite starts over)"));
  EXPECT_EQ(dir_bytes(acts), before);
}

}  // namespace
}  // namespace cskv::data
