// Hostile command lines and job files: oversized arguments and JSON are refused before any parser
// sees them, every numeric setting has a range, a flag given twice is refused, and whatever goes
// wrong is one line on stderr with the documented status; nothing the user had is touched.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "launch/cli.h"
#include "launch/settings.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Every file under dir with its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files[e.path().string()] = test::read_file(e.path().string());
  }
  return files;
}

class HostileCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    data::capture_testing::write_tiny_model_and_tokens(dir_->path());
    const auto c = test::run_cskv({"capture", "--model", model(), "--tokens", tokens(),
                                   "--num-seqs", "4", "--seq-len", "32", "--holdout-seqs", "2",
                                   "--out", acts(), "--log-level", "warn"});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    const auto t =
        test::run_cskv({"train", "--model", model(), "--acts", acts(), "--ckpt-dir", *dir_ / "ckpt",
                        "--steps", "1", "--batch-tokens", "64", "--log-level", "warn"});
    ASSERT_EQ(t.exit_code, 0) << t.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model() { return *dir_ / "model"; }
  static std::string tokens() { return *dir_ / "tokens.bin"; }
  static std::string acts() { return *dir_ / "acts"; }
  static std::string compressor() { return *dir_ / "ckpt/compressor.safetensors"; }

  // Runs cskv with args; expects `code` and exactly `line` (plus its newline) on stderr, and every
  // file of the suite's directory byte-identical afterwards.
  static void expect_refused(const std::vector<std::string>& args, int code,
                             const std::string& line) {
    const auto before = snapshot(dir_->path());
    const auto r = test::run_cskv(args);
    EXPECT_EQ(r.exit_code, code) << line << "\n" << r.err;
    EXPECT_EQ(r.err, line + "\n");
    EXPECT_TRUE(snapshot(dir_->path()) == before) << "a refused command changed files: " << line;
  }

  static test::TempDir* dir_;
};
test::TempDir* HostileCli::dir_ = nullptr;

TEST_F(HostileCli, OversizedArgumentIsRefusedBeforeParsingByEverySubcommand) {
  const std::string huge(60000, 'a');
  for (const std::string sub : {"toy-model", "toy-tokens", "inspect", "capture", "train", "analyze",
                                "merge", "eval", "run", "comm-check"}) {
    expect_refused({sub, "--model=" + huge}, 2,
                   "cskv " + sub +
                       ": usage error: --model: an argument of 60008 bytes; at most 8192 are "
                       "accepted");
  }
  expect_refused({"capture", "--out", huge}, 2,
                 "cskv capture: usage error: --out: an argument of 60000 bytes; at most 8192 are "
                 "accepted");
  // At the bound the option parser sees it (and the missing model is what is wrong).
  const std::string at_bound = "--model=" + std::string(cli::kMaxArgumentBytes - 8, 'm');
  const auto r = test::run_cskv({"inspect", at_bound});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST_F(HostileCli, FlagGivenTwiceIsRefused) {
  expect_refused({"train", "--model", model(), "--lr", "1e-3", "--lr", "1e-4"}, 2,
                 "cskv train: usage error: --lr is given twice (give each flag once)");
  expect_refused({"run", "--out", *dir_ / "run", "--out", *dir_ / "run2"}, 2,
                 "cskv run: usage error: --out is given twice (give each flag once)");
  expect_refused({"capture", "--log-level=warn", "--log-level", "info"}, 2,
                 "cskv capture: usage error: --log-level is given twice (give each flag once)");
}

// In process (the checks are the tables'): each numeric setting just outside its range.
TEST(SettingRanges, EveryNumericSettingOutOfRangeNamesItsFlagAndRange) {
  struct Case {
    const cli::SettingTable& table;
    std::vector<std::string> flags;
    std::string message;
  };
  const cli::SettingTable& train = cli::train_settings();
  const cli::SettingTable& capture = cli::capture_settings();
  const cli::SettingTable eval = cli::eval_settings("");
  const cli::SettingTable& runtime = cli::runtime_settings();
  const std::vector<Case> cases = {
      {train, {"--lr", "-1"}, "--lr: expected a value in (0, 1], found -1"},
      {train, {"--lr", "0"}, "--lr: expected a value in (0, 1], found 0"},
      {train, {"--lr", "1e308"}, "--lr: expected a value in (0, 1], found 1e+308"},
      {train, {"--warmup", "-1"}, "--warmup: expected an integer in [0, 1000000000], found -1"},
      {train, {"--epochs", "0"}, "--epochs: expected an integer in [1, 100000], found 0"},
      {train, {"--epochs", "-1"}, "--epochs: expected an integer in [1, 100000], found -1"},
      {train, {"--steps", "-1"}, "--steps: expected an integer in [0, 1000000000], found -1"},
      {train, {"--group-size", "-1"}, "--group-size: expected an integer in [0, 65536], found -1"},
      {train,
       {"--rank-multiple", "-1"},
       "--rank-multiple: expected an integer in [0, 65536], found -1"},
      {train, {"--context", "0"}, "--context: expected an integer in [1, 16777216], found 0"},
      {train, {"--context", "-1"}, "--context: expected an integer in [1, 16777216], found -1"},
      {train, {"--keep", "0"}, "--keep: expected an integer in [1, 1000], found 0"},
      {train, {"--dp", "-1"}, "--dp: expected an integer in [0, 65536], found -1"},
      {train,
       {"--save-every", "-1"},
       "--save-every: expected an integer in [0, 1000000000], found -1"},
      {train, {"--asvd-alpha", "-1"}, "--asvd-alpha: expected a value in [0, 4], found -1"},
      {train, {"--k-density", "2"}, "--k-density: expected a value in (0, 1], found 2"},
      {train, {"--window", "-1"}, "--window: expected an integer in [0, 1048576], found -1"},
      {train,
       {"--batch-tokens", "0"},
       "--batch-tokens: expected an integer in [1, 1073741824], found 0"},
      {capture, {"--num-seqs", "0"}, "--num-seqs: expected an integer in [1, 10000000], found 0"},
      {capture,
       {"--num-seqs", "9223372036854775807"},
       "--num-seqs: expected an integer in [1, 10000000], found 9223372036854775807"},
      {capture,
       {"--num-seqs", "1000000000000"},
       "--num-seqs: expected an integer in [1, 10000000], found 1000000000000"},
      {capture, {"--seq-len", "1"}, "--seq-len: expected an integer in [2, 1048576], found 1"},
      {capture,
       {"--seq-len", "200000000"},
       "--seq-len: expected an integer in [2, 1048576], found 200000000"},
      {capture,
       {"--holdout-seqs", "-1"},
       "--holdout-seqs: expected an integer in [0, 10000000], found -1"},
      {capture, {"--batch", "0"}, "--batch: expected an integer in [1, 4096], found 0"},
      {eval, {"--decode", "0"}, "--decode: expected an integer in [1, 1048576], found 0"},
      {eval, {"--context", "-1"}, "--context: expected an integer in [0, 1048576], found -1"},
      {eval, {"--sequences", "-1"}, "--sequences: expected an integer in [0, 10000000], found -1"},
      {eval,
       {"--memory-contexts", "1024,1000000000000"},
       "--memory-contexts: 1000000000000 tokens asked; at most 1048576 per context"},
      {runtime,
       {"--threads", "100000"},
       "--threads: expected an integer in [1, 1024], found 100000"},
      {runtime, {"--threads", "0"}, "--threads: expected an integer in [1, 1024], found 0"},
      {runtime, {"--backend", "tcp"}, "--backend: expected auto|local|mpi|nccl, found 'tcp'"},
  };
  for (const Case& c : cases) {
    auto options = cli::make_options("t", "test");
    cli::add_settings(options, c.table);
    std::vector<std::string> args = {"t"};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    const auto r = cli::parse(options, static_cast<int>(argv.size()), argv.data());
    EXPECT_CSKV_ERROR(cli::check_settings(*r, c.table), c.message);
  }
}

// The same checks through the binary: a usage error (status 2), nothing written.
TEST_F(HostileCli, OutOfRangeSettingsAreUsageErrors) {
  expect_refused({"train", "--model", model(), "--lr", "-1"}, 2,
                 "cskv train: usage error: --lr: expected a value in (0, 1], found -1");
  expect_refused({"capture", "--model", model(), "--tokens", tokens(), "--num-seqs",
                  "9223372036854775807", "--out", *dir_ / "a2"},
                 2,
                 "cskv capture: usage error: --num-seqs: expected an integer in [1, 10000000], "
                 "found 9223372036854775807");
  expect_refused({"eval", "--model", model(), "--acts", acts(), "--compressor", compressor(),
                  "--out", *dir_ / "ev", "--memory-contexts", "1024,1000000000000"},
                 2,
                 "cskv eval: usage error: --memory-contexts: 1000000000000 tokens asked; at most "
                 "1048576 per context");
  expect_refused(
      {"train", "--model", model(), "--acts", acts(), "--ckpt-dir", *dir_ / "ck", "--threads",
       "100000"},
      2, "cskv train: usage error: --threads: expected an integer in [1, 1024], found 100000");
}

// A value of the wrong type names its flag and what the flag takes (cxxopts alone says only
// "Argument 'abc' failed to parse").
TEST_F(HostileCli, ValuesOfTheWrongTypeNameTheFlag) {
  expect_refused({"train", "--model", model(), "--epochs", "abc"}, 2,
                 "cskv train: usage error: --epochs: expected an integer, found 'abc' (see 'cskv "
                 "train --help')");
  expect_refused({"train", "--model", model(), "--lr=fast"}, 2,
                 "cskv train: usage error: --lr: expected a number, found 'fast' (see 'cskv "
                 "train --help')");
  expect_refused({"capture", "--model", model(), "--seed", "-3"}, 2,
                 "cskv capture: usage error: --seed: expected a non-negative integer, found '-3' "
                 "(see 'cskv capture --help')");
  expect_refused({"comm-check", "--iters", "many"}, 2,
                 "cskv comm-check: usage error: --iters: expected a value of its type, found "
                 "'many' (see 'cskv comm-check --help')");
}

TEST_F(HostileCli, CrossFlagChecks) {
  expect_refused({"capture", "--model", model(), "--tokens", tokens(), "--tokenizer", "t.model",
                  "--out", *dir_ / "a2"},
                 2,
                 "cskv capture: usage error: --tokenizer is only used with --text (the token ids "
                 "of --tokens are already tokenized)");
  expect_refused({"train", "--model", model(), "--acts", acts(), "--ckpt-dir", *dir_ / "ck",
                  "--backend", "mpi"},
                 2,
                 "cskv train: usage error: --backend mpi: no MPI launcher started this process "
                 "(mpirun, srun or another PMI/PMIx launcher); start cskv under one, or use "
                 "--backend auto or local");
  expect_refused(
      {"train", "--model", model(), "--acts", acts(), "--ckpt-dir", *dir_ / "ck", "--layers", ""},
      2,
      "cskv train: usage error: --layers: expected all, a range like '0-7' or a list "
      "like '0,2,5', found ''");
  // The auto context is what --decode leaves of the held-out sequences: said in those terms.
  expect_refused({"eval", "--model", model(), "--acts", acts(), "--compressor", compressor(),
                  "--out", *dir_ / "ev", "--decode", "100", "--log-level", "warn"},
                 1,
                 "cskv eval: error: --decode 100 needs at least 102 tokens per held-out sequence "
                 "(1 prompt token + 100 decoded + 1), but the held-out sequences of " +
                     acts() +
                     " have 32 tokens (capture with a larger --seq-len, or lower --decode)");
}

TEST_F(HostileCli, JobFilesAreBoundedBeforeParsingAndCheckedLikeFlags) {
  const std::string job = *dir_ / "job.json";
  const auto refused = [&](const std::string& text, int code, const std::string& message) {
    test::write_file(job, text);
    expect_refused({"run", "--config", job, "--out", *dir_ / "run"}, code, "cskv run: " + message);
    EXPECT_FALSE(fs::exists(*dir_ / "run"));
  };
  refused("{\"a\":" + std::string(1000000, '[') + std::string(1000000, ']') + "}", 1,
          "error: " + job + ": job file is 2000006 bytes, larger than the limit of 1048576 bytes");
  refused("{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}", 1,
          "error: " + job + ": JSON nested deeper than 16 levels (at byte 20)");
  refused("{\"model\": \"" + std::string(100000, 'm') + "\"}", 1,
          "error: " + job + ": a JSON string longer than 8192 bytes (at byte 10)");
  refused("{\"lr\": 0.1, \"lr\": 0.2}", 1, "error: " + job + ": key \"lr\" is given twice");
  const json base = {{"model", model()}, {"tokens", tokens()}, {"num_seqs", 4}, {"seq_len", 32}};
  json j = base;
  j["lr"] = -1;
  refused(j.dump(), 2, "usage error: --lr: expected a value in (0, 1], found -1");
  j = base;
  j["epochs"] = 0;
  refused(j.dump(), 2, "usage error: --epochs: expected an integer in [1, 100000], found 0");
  j = base;
  j["threads"] = 100000;
  refused(j.dump(), 2, "usage error: --threads: expected an integer in [1, 1024], found 100000");
  // A directory as the job file: one line (it was "basic_filebuf::underflow").
  expect_refused(
      {"run", "--config", dir_->path(), "--out", *dir_ / "run"}, 1,
      "cskv run: error: " + dir_->path() + ": expected a regular job file, found a directory");
}

TEST_F(HostileCli, SizesToAllocateAreCheckedFirst) {
  expect_refused({"toy-tokens", "--out", *dir_ / "t2.bin", "--count", "10000000000000"}, 2,
                 "cskv toy-tokens: usage error: toy tokens: --count must be at most 1073741824, "
                 "found 10000000000000");
  expect_refused({"toy-model", "--out", *dir_ / "m2", "--hidden", "1000000"}, 2,
                 "cskv toy-model: usage error: toy model: --hidden must be at most 16384, found "
                 "1000000");
  expect_refused({"toy-model", "--out", *dir_ / "m2", "--hidden", "16384", "--heads", "128",
                  "--intermediate", "65536", "--layers", "64"},
                 2,
                 "cskv toy-model: usage error: toy model: --hidden 16384, --layers 64, "
                 "--intermediate 65536 and --vocab 1024 make about 2.74917e+11 parameters, more "
                 "than the toy generator's limit of 2147483648");
}

// A missing stats.h5: HDF5's error stack (its own printing is off) joined into the one line.
// A forward that cannot fit is refused by name before any work (the free memory in the message
// is the machine's, so only the rest is compared). The attention is blocked past 1024 tokens, so
// what does not fit here is 4096 sequences' hidden states.
TEST_F(HostileCli, ForwardThatCannotFitNamesSeqLen) {
  const auto before = snapshot(dir_->path());
  const auto r = test::run_cskv({"capture", "--model", model(), "--tokens", tokens(), "--num-seqs",
                                 "4096", "--seq-len", "200000", "--batch", "4096", "--out",
                                 *dir_ / "a3", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 2);
  const std::string head = "cskv capture: usage error: --seq-len 200000 with --batch 4096: one "
                           "layer of the forward needs ";
  EXPECT_EQ(r.err.rfind(head, 0), 0u) << r.err;
  EXPECT_NE(r.err.find(" GiB (hidden states of 4096 sequences of 200000 tokens, one sequence's "
                       "MLP, and its attention: "),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(" GiB) and cpu has "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" GiB free; use a shorter --seq-len or a smaller --batch\n"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(snapshot(dir_->path()) == before);
}

TEST_F(HostileCli, LibraryErrorStacksBecomeOneLine) {
  test::TempDir acts2;
  fs::copy(acts(), acts2.path(), fs::copy_options::recursive);
  fs::remove(acts2 / "stats.h5");
  const auto r = test::run_cskv({"train", "--model", model(), "--acts", acts2.path(), "--ckpt-dir",
                                 acts2 / "ck", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("cskv train: error: " + (acts2 / "stats.h5") +
                            ": cannot open HDF5 file: H5Fopen(): unable to open file;",
                        0),
            0u)
      << r.err;
}

// cli::guarded, in process: whatever is thrown, one line and status 1 (2 for usage errors).
TEST(Guarded, AnyExceptionBecomesOneLineOnStderr) {
  const auto line_of = [](const std::function<int()>& body, int expected_status) {
    testing::internal::CaptureStderr();
    const int status = cli::guarded("t", body);
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(status, expected_status) << err;
    return err;
  };
  EXPECT_EQ(line_of([]() -> int { TORCH_CHECK(false, "first line\nsecond line"); }, 1),
            "cskv t: error: first line\n");
  const std::string alloc = line_of(
      [] {
        at::empty({int64_t{1} << 50}, at::kFloat);
        return 0;
      },
      1);
  EXPECT_EQ(std::count(alloc.begin(), alloc.end(), '\n'), 1) << alloc;
  EXPECT_NE(alloc.find("4503599627370496 bytes"), std::string::npos) << alloc;
  EXPECT_EQ(line_of([]() -> int { throw std::bad_alloc(); }, 1),
            "cskv t: error: out of memory (an allocation failed)\n");
  EXPECT_EQ(line_of([]() -> int { throw Error(ErrorKind::kInput, "f.h5: stack\n, name = x"); }, 1),
            "cskv t: error: f.h5: stack , name = x\n");
  EXPECT_EQ(line_of([]() -> int { throw Error(ErrorKind::kUsage, "bad flag"); }, 2),
            "cskv t: usage error: bad flag\n");
  EXPECT_EQ(line_of([]() -> int { throw 5; }, 1), "cskv t: error: unknown exception\n");
}

}  // namespace
}  // namespace cskv
