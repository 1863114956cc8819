// `cskv capture` on a full disk or under a file size limit: one line naming the file and the
// bytes it needed, exit status 1 (never a crash in HDF5's shutdown), the complete shards and the
// manifest byte-identical, no partial file left, and a rerun with room completes the capture.
#include <sys/statvfs.h>

#include <regex>

#include "tests/pipeline/capture_test_util.h"

namespace cskv::data {
namespace {

using namespace capture_testing;

class CaptureDiskFull : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    make_model_and_tokens(dir_->path(), toy_spec(2, 48, 4, 2, 100, 512), 20000);
    const auto r = test::run_cskv(args(reference()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  // 2 training sequences and 6 held-out ones: the held-out shard is the larger one, and
  // stats.h5 (2 layers of 48 x 48 float64) is larger still.
  static std::vector<std::string> args(const std::string& out) {
    return {"capture",
            "--model",
            *dir_ / "model",
            "--tokens",
            *dir_ / "tokens.bin",
            "--num-seqs",
            "2",
            "--holdout-seqs",
            "6",
            "--seq-len",
            "16",
            "--out",
            out,
            "--log-level",
            "warn"};
  }
  static std::string reference() { return *dir_ / "reference"; }
  static uint64_t size_of(const std::string& name) {
    return fs::file_size(reference() + "/" + name);
  }
  // The capture under `ulimit -f kib` with SIGXFSZ ignored, so a write past the limit fails
  // with EFBIG as on a full disk (no privileges needed).
  static test::CommandResult capture_limited(const std::string& out, uint64_t kib) {
    std::vector<std::string> argv{
        "bash", "-c", "trap '' XFSZ; ulimit -f " + std::to_string(kib) + " && exec \"$@\"", "bash",
        cskv_binary()};
    const auto a = args(out);
    argv.insert(argv.end(), a.begin(), a.end());
    return test::run_command(argv);
  }

  test::TempDir tmp_;

 private:
  static test::TempDir* dir_;
};
test::TempDir* CaptureDiskFull::dir_ = nullptr;

const char* const kTrain = "shard-00000-of-00001.h5";
const char* const kHoldout = "holdout-00000-of-00001.h5";

// "cskv capture: error: <file>: cannot write <object>: File too large (needed N more bytes)\n"
// (the object and the byte count are HDF5's: which cached chunk it was flushing when the write
// failed).
void expect_one_line_naming(const std::string& err, const std::string& file,
                            const std::string& objects,
                            const std::string& reason = "File too large") {
  const std::regex line(
      "cskv capture: error: " + std::regex_replace(file, std::regex("\\."), "\\.") +
      ": cannot write (" + objects + "): " + reason +
      " \\(needed "
      "[0-9]+ more bytes\\)\n");
  EXPECT_TRUE(std::regex_match(err, line)) << err;
}

TEST_F(CaptureDiskFull, ShardThatDoesNotFitFailsInOneLineAndKeepsTheCompleteShard) {
  ASSERT_LT(size_of(kTrain) / 1024 + 1, size_of(kHoldout) / 1024) << "sizes do not separate";
  const uint64_t kib = size_of(kTrain) / 1024 + 1;  // the training shard fits, the held-out not
  const std::string out = tmp_ / "acts";
  auto r = capture_limited(out, kib);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  expect_one_line_naming(r.err, out + "/" + kHoldout + ".partial", "/layers/[01]/x|/tokens|file");
  // The complete shard and its manifest entry are exactly the unlimited run's; nothing else.
  const auto after = dir_bytes(out);
  std::vector<std::string> names;
  for (const auto& [name, bytes] : after) names.push_back(name);
  EXPECT_EQ(names,
            (std::vector<std::string>{".manifest.lock", "capture.json", "manifest.json", kTrain}));
  EXPECT_TRUE(after.at(kTrain) == test::read_file(reference() + "/" + kTrain));
  ASSERT_EQ(read_manifest(out).size(), 1u);
  EXPECT_EQ(read_manifest(out)[0].checksum, read_manifest(reference())[0].file == kTrain
                                                ? read_manifest(reference())[0].checksum
                                                : read_manifest(reference())[1].checksum);
  // The same failure again leaves every file byte-identical.
  r = capture_limited(out, kib);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  expect_one_line_naming(r.err, out + "/" + kHoldout + ".partial", "/layers/[01]/x|/tokens|file");
  EXPECT_EQ(dir_bytes(out), after);
  // With room, the capture completes as if nothing had happened.
  r = test::run_cskv(args(out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_bytes(out, reference());
}

TEST_F(CaptureDiskFull, StatisticsThatDoNotFitFailInOneLineAndKeepTheShards) {
  ASSERT_LT(size_of(kHoldout) / 1024 + 1, size_of("stats.h5") / 1024) << "sizes do not separate";
  const uint64_t kib = size_of(kHoldout) / 1024 + 1;  // every shard fits, stats.h5 does not
  const std::string out = tmp_ / "acts";
  auto r = capture_limited(out, kib);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  expect_one_line_naming(r.err, out + "/stats.h5.partial", "/layers/[01]/(gram|abs_mean)|file");
  EXPECT_FALSE(fs::exists(out + "/stats.h5"));
  EXPECT_FALSE(fs::exists(out + "/stats.h5.partial"));
  const auto after = dir_bytes(out);
  for (const std::string f : {kTrain, kHoldout, "manifest.json", "capture.json"}) {
    EXPECT_TRUE(after.at(f) == test::read_file(reference() + "/" + f)) << f;
  }
  r = test::run_cskv(args(out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_bytes(out, reference());
}

// What a capture of 64 sequences of 64 tokens into a fresh tmpfs of `size` left behind.
struct TmpfsRun {
  bool ran = false;  // false: no private mount namespace here (the reason is in err)
  std::string err;   // the capture's stderr (or unshare's)
  std::string rc;    // its exit status, as text
  uint64_t free_bytes = 0;
  std::vector<std::string> files;  // what the tmpfs held afterwards
};

TmpfsRun capture_on_tmpfs(const std::string& size, const std::string& out, const std::string& logs,
                          std::vector<std::string> capture_args) {
  fs::create_directories(out);
  fs::create_directories(logs + "/snap");
  std::vector<std::string> argv{
      "unshare",
      "-m",
      "bash",
      "-c",
      "mount -t tmpfs -o size=" + size +
          " tmpfs \"$1\" || exit 99; shift; out=$1; logs=$2; shift 2; "
          "\"$@\" 2>\"$logs/err\"; echo $? >\"$logs/rc\"; stat -f -c '%a %S' \"$out\" "
          ">\"$logs/free\"; cp -a \"$out/.\" \"$logs/snap/\"",
      "bash",
      out,
      out,
      logs,
      cskv_binary()};
  capture_args[6] = "64";   // --num-seqs
  capture_args[10] = "64";  // --seq-len
  argv.insert(argv.end(), capture_args.begin(), capture_args.end());
  TmpfsRun run;
  const auto r = test::run_command(argv);
  run.ran = r.exit_code == 0;
  if (!run.ran) {
    run.err = r.err;
    return run;
  }
  run.err = test::read_file(logs + "/err");
  run.rc = test::read_file(logs + "/rc");
  std::istringstream free_text(test::read_file(logs + "/free"));
  uint64_t blocks = 0, block_size = 0;
  free_text >> blocks >> block_size;
  run.free_bytes = blocks * block_size;
  for (const auto& [name, bytes] : dir_bytes(logs + "/snap")) run.files.push_back(name);
  return run;
}

// The issue's example: a 300 KB tmpfs as --out. Needs a private mount namespace (root or
// user namespaces); skipped with the reason otherwise.
TEST_F(CaptureDiskFull, TinyTmpfsIsRefusedBeforeWritingNamingTheBytesNeeded) {
  const std::string out = tmp_ / "acts";
  const TmpfsRun run = capture_on_tmpfs("300k", out, tmp_ / "logs", args(out));
  if (!run.ran) GTEST_SKIP() << "no private tmpfs here (unshare -m / mount): " << run.err;
  EXPECT_EQ(run.rc, "1\n");
  const uint64_t tokens = 64 * 64;
  EXPECT_EQ(run.err, "cskv capture: error: " + out + "/" + kTrain + ": needs at least " +
                         std::to_string(tokens * (2 * 48 * 2 + 4)) + " bytes (" +
                         std::to_string(tokens) +
                         " tokens x 2 layers x 48 x 2 bytes, plus the token ids), but the file "
                         "system holding " +
                         out + " has " + std::to_string(run.free_bytes - 4096) +
                         " bytes free\n");  // while it checked, its .cskv.lock held one page
  EXPECT_EQ(run.files, std::vector<std::string>{"capture.json"});
}

// Room for the data but not for HDF5's own bytes: the write itself fails with ENOSPC (once a
// multi-line HDF5 stack and a segmentation fault in HDF5's shutdown).
TEST_F(CaptureDiskFull, FullTmpfsDuringTheWriteFailsInOneLine) {
  const std::string out = tmp_ / "acts";
  const TmpfsRun run = capture_on_tmpfs("800k", out, tmp_ / "logs", args(out));
  if (!run.ran) GTEST_SKIP() << "no private tmpfs here (unshare -m / mount): " << run.err;
  EXPECT_EQ(run.rc, "1\n");
  expect_one_line_naming(run.err, out + "/" + kTrain + ".partial", "/layers/[01]/x|/tokens|file",
                         "No space left on device");
  EXPECT_EQ(run.files, std::vector<std::string>{"capture.json"});
}

}  // namespace
}  // namespace cskv::data
