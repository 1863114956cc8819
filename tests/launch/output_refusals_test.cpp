// Nothing of the user's is overwritten or lost, through the CLI: a directory another run holds,
// checkpoint steps that cannot be read, files cskv did not write (train, merge, eval, toy-model,
// toy-tokens), and `cskv run` (a refused run leaves run.json, settings are checked before any
// stage works). Each case: the exact message, the exit status, every earlier file byte-identical.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "checkpoint/step_manifest.h"
#include "common/output_dir.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/flag_overrides.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using data::capture_testing::has_line;

// Every regular file under dir (relative path → bytes).
std::map<std::string, std::string> tree_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = test::read_file(e.path());
  }
  return out;
}

std::string holder_text() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return "pid " + std::to_string(::getpid()) + " on host " + host;
}

std::string foreign(const std::string& path, const std::string& why, const std::string& flag) {
  return path + ": exists and is not known to be an output of cskv (" + why +
         "); move it away, use another " + flag + ", or pass --overwrite to replace it";
}

class OutputRefusals : public ::testing::Test {
 protected:
  void SetUp() override {
    test::allow_mpirun_as_root();
    data::capture_testing::write_tiny_model_and_tokens(dir_.path());
  }

  test::CommandResult capture(const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> args = {
        "capture",    "--model", dir_ / "model", "--tokens",    dir_ / "tokens.bin",
        "--num-seqs", "8",       "--seq-len",    "64",          "--holdout-seqs",
        "2",          "--out",   dir_ / "acts",  "--log-level", "warn"};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_cskv(args);
  }

  test::CommandResult train(const std::string& ckpt,
                            const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> args = {
        "train",   "--model",     dir_ / "model",   "--acts",     dir_ / "acts",
        "--steps", "40",          "--batch-tokens", "64",         "--save-every",
        "10",      "--log-level", "warn",           "--ckpt-dir", ckpt};
    return test::run_cskv(test::with_overrides(args, extra));
  }

  void captured() const {
    const auto r = capture();
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  test::TempDir dir_;
};

TEST_F(OutputRefusals, ADirectoryAnotherRunHoldsIsRefusedNamingTheHolder) {
  {
    const auto lock = files::DirectoryLock::acquire(dir_ / "acts", "--out");
    const auto r = capture();
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, "cskv capture: error: " + (dir_ / "acts") + ": in use by another cskv run (" +
                         holder_text() + "); wait for it to finish, or use another --out\n");
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    EXPECT_EQ(tree_bytes(dir_ / "acts"),
              (std::map<std::string, std::string>{
                  {".cskv.lock", std::to_string(::getpid()) + " " + host + "\n"}}))
        << "nothing but the holder's lock file";
  }
  captured();
  const std::string ckpt = dir_ / "ckpt";
  const auto lock = files::DirectoryLock::acquire(ckpt, "--ckpt-dir");
  const auto r = train(ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv train: error: " + ckpt + ": in use by another cskv run (" +
                                  holder_text() +
                                  "); wait for it to finish, or use another --ckpt-dir"))
      << r.err;
  EXPECT_FALSE(fs::exists(ckpt + "/step-00000010"));
  // Under mpirun every rank refuses (a collective verdict), and the line is printed once.
  const auto m = test::run_command(
      {CSKV_MPIEXEC, "--oversubscribe", "-np", "2", CSKV_BINARY_FOR_TESTS, "train", "--model",
       dir_ / "model", "--acts", dir_ / "acts", "--log-level", "warn", "--ckpt-dir", ckpt});
  EXPECT_EQ(m.exit_code, 1) << m.err;
  const std::string line = "cskv train: error: " + ckpt + ": in use by another cskv run (" +
                           holder_text() + "); wait for it to finish, or use another --ckpt-dir";
  EXPECT_TRUE(has_line(m.err, line)) << m.err;
  EXPECT_EQ(m.err.find(line), m.err.rfind(line)) << "printed once, by rank 0:\n" << m.err;
}

TEST_F(OutputRefusals, UnreadableCheckpointStepsAreNeverPrunedWithoutOverwrite) {
  captured();
  const std::string ckpt = dir_ / "ckpt";
  auto r = train(ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto steps = checkpoint::list_steps(ckpt);
  ASSERT_EQ(steps.size(), 2u);
  // Every step damaged: one byte of each rank file flipped.
  for (const int64_t step : steps) {
    const std::string f = checkpoint::rank_file_path(ckpt, step, 0);
    std::string bytes = test::read_file(f);
    bytes[bytes.size() - 3] ^= 0x10;
    test::write_file(f, bytes);
  }
  std::string reasons;
  for (const int64_t step : steps) {
    reasons += (reasons.empty() ? "" : "; ") +
               ("step " + std::to_string(step) + ": " + *checkpoint::check_step(ckpt, step));
  }
  const auto before = tree_bytes(ckpt);
  r = train(ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv train: error: " + ckpt + ": no checkpoint step can be read (" +
                                  reasons +
                                  "); starting from step 0 would delete them, and cskv never "
                                  "deletes a step it could not read: move them away to keep "
                                  "them, or pass --overwrite to delete them and train from step 0"))
      << r.err;
  EXPECT_EQ(tree_bytes(ckpt), before);
  // Told to start over: the damaged steps go and training runs from step 0.
  r = train(ckpt, {"--overwrite"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const int64_t step : checkpoint::list_steps(ckpt)) {
    EXPECT_FALSE(checkpoint::check_step(ckpt, step).has_value()) << step;
  }
  r = train(ckpt, {"--overwrite", "--resume"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv train: usage error: --resume requires a checkpoint to continue from and "
            "--overwrite may delete them: give one of the two\n");
}

TEST_F(OutputRefusals, TrainNeverReplacesAUsersCompressorOrMetrics) {
  captured();
  const std::string ckpt = dir_ / "ckpt";
  fs::create_directories(ckpt);
  test::write_file(ckpt + "/compressor.safetensors", "the user's compressor");
  test::write_file(ckpt + "/metrics.md", "# my notes\n");
  const auto before = tree_bytes(ckpt);
  auto r = train(ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(
      r.err, "cskv train: error: " + foreign(ckpt + "/compressor.safetensors",
                                             "expected a cskv compressor file", "--ckpt-dir")))
      << r.err;
  EXPECT_EQ(tree_bytes(ckpt), before);
  fs::remove(ckpt + "/compressor.safetensors");
  r = train(ckpt);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv train: error: " +
                                  foreign(ckpt + "/metrics.md",
                                          "expected the metrics table cskv writes", "--ckpt-dir")))
      << r.err;
  EXPECT_EQ(test::read_file(ckpt + "/metrics.md"), "# my notes\n");
  r = train(ckpt, {"--overwrite"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Its own outputs it recognises: a rerun replaces them without --overwrite.
  r = train(ckpt);
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(OutputRefusals, MergeEvalAndToyCommandsNeverReplaceFilesCskvDidNotWrite) {
  captured();
  const std::string ckpt = dir_ / "ckpt";
  auto r = train(ckpt, {"--steps", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // merge --out onto the model's weights.
  const std::string weights = dir_ / "model/model.safetensors";
  const auto model_before = tree_bytes(dir_ / "model");
  r = test::run_cskv({"merge", "--ckpt-dir", ckpt, "--out", weights});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv merge: error: " +
                       foreign(weights, "expected a cskv compressor file to replace", "--out") +
                       "\n");
  EXPECT_EQ(tree_bytes(dir_ / "model"), model_before);
  const std::string merged = dir_ / "merged.safetensors";
  for (int i = 0; i < 2; ++i) {  // its own output it replaces
    r = test::run_cskv({"merge", "--ckpt-dir", ckpt, "--out", merged});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // eval --out over a user's report.md.
  const std::string report = dir_ / "report";
  fs::create_directories(report);
  test::write_file(report + "/report.md", "my report\n");
  r = test::run_cskv({"eval", "--model", dir_ / "model", "--acts", dir_ / "acts", "--compressor",
                      merged, "--decode", "8", "--memory-contexts", "128", "--no-plots", "--out",
                      report, "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv eval: error: " +
                       foreign(report + "/report.md", "expected a cskv eval report", "--out") +
                       "\n");
  EXPECT_EQ(tree_bytes(report), (std::map<std::string, std::string>{{"report.md", "my report\n"}}));
  // toy-model --out onto a model it did not write (this one's weights carry no toy marker).
  const std::string hf = dir_ / "hf";
  fs::create_directories(hf);
  test::write_file(hf + "/config.json", "{}");
  test::write_file(hf + "/model.safetensors", "weights");
  r = test::run_cskv({"toy-model", "--out", hf});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv toy-model: error: " +
                       foreign(hf + "/model.safetensors",
                               "expected a model written by cskv toy-model", "--out") +
                       "\n");
  EXPECT_EQ(tree_bytes(hf), (std::map<std::string, std::string>{{"config.json", "{}"},
                                                                {"model.safetensors", "weights"}}));
  for (int i = 0; i < 2; ++i) {  // its own model it replaces
    r = test::run_cskv({"toy-model", "--out", dir_ / "toy", "--layers", "1", "--hidden", "32",
                        "--heads", "2", "--kv-heads", "1", "--intermediate", "64"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // toy-tokens --out onto any file.
  const std::string tokens = dir_ / "tokens.bin";
  const std::string tokens_before = test::read_file(tokens);
  r = test::run_cskv({"toy-tokens", "--count", "100", "--out", tokens});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "cskv toy-tokens: error: " +
                foreign(tokens, "a flat token file carries no mark of who wrote it", "--out") +
                "\n");
  EXPECT_EQ(test::read_file(tokens), tokens_before);
  r = test::run_cskv({"toy-tokens", "--count", "100", "--out", dir_ / "t.bin", "--overwrite"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

// merge --export-cskv: a user's file with an export's name is refused before the merge writes
// anything; its own export (a pickled list of ({"weight"}, {"weight"}) tuples) it replaces.
TEST_F(OutputRefusals, MergeExportNeverReplacesFilesCskvDidNotWrite) {
  captured();
  const std::string ckpt = dir_ / "ckpt";
  auto r = train(ckpt, {"--steps", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string exp = dir_ / "export";
  fs::create_directories(exp);
  test::write_file(exp + "/mine_v.ckpt", "my checkpoint\n");
  const std::string merged = dir_ / "m.safetensors";
  const std::string model = dir_ / "model";
  r = test::run_cskv({"merge", "--ckpt-dir", ckpt, "--out", merged, "--export-cskv", exp, "--name",
                      "mine", "--model", model});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv merge: error: " +
                       foreign(exp + "/mine_v.ckpt", "expected a cskv --export-cskv file",
                               "--export-cskv") +
                       "\n");
  EXPECT_FALSE(fs::exists(merged));
  EXPECT_EQ(tree_bytes(exp),
            (std::map<std::string, std::string>{{"mine_v.ckpt", "my checkpoint\n"}}));
  for (int i = 0; i < 2; ++i) {  // another name, then its own files again
    r = test::run_cskv(
        {"merge", "--ckpt-dir", ckpt, "--out", merged, "--export-cskv", exp, "--model", model});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  r = test::run_cskv({"merge", "--ckpt-dir", ckpt, "--out", merged, "--export-cskv", exp, "--name",
                      "mine", "--overwrite", "--model", model});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(test::read_file(exp + "/mine_v.ckpt"), "my checkpoint\n");
  EXPECT_FALSE(fs::exists(exp + "/.cskv.lock"));
}

// analyze --out: a user's file with one of its names is refused before any work; its own
// outputs it replaces; --overwrite replaces the user's.
TEST_F(OutputRefusals, AnalyzeNeverReplacesFilesCskvDidNotWrite) {
  captured();
  const std::string out = dir_ / "spectra";
  fs::create_directories(out);
  test::write_file(out + "/ranks.csv", "my ranks\n");
  const std::vector<std::string> args = {
      "analyze", "--model", dir_ / "model", "--acts",      dir_ / "acts",
      "--out",   out,       "--no-plots",   "--log-level", "warn"};
  auto r = test::run_cskv(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cskv analyze: error: " +
                       foreign(out + "/ranks.csv", "expected a cskv analyze rank table", "--out") +
                       "\n");
  EXPECT_EQ(tree_bytes(out), (std::map<std::string, std::string>{{"ranks.csv", "my ranks\n"}}));
  std::vector<std::string> overwrite = args;
  overwrite.push_back("--overwrite");
  r = test::run_cskv(overwrite);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int i = 0; i < 2; ++i) {  // its own outputs it replaces
    r = test::run_cskv(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  EXPECT_EQ(test::read_file(out + "/ranks.csv").rfind("layer,kind,D,r90,r95,r99\n", 0), 0u);
}

TEST_F(OutputRefusals, RunChecksEveryStageFirstAndARefusedRunLeavesRunJson) {
  const std::string job = dir_ / "job.json";
  test::write_file(job, nlohmann::json({{"model", dir_ / "model"},
                                        {"tokens", dir_ / "tokens.bin"},
                                        {"num_seqs", 8},
                                        {"seq_len", 64},
                                        {"holdout_seqs", 2},
                                        {"k_bits", 4},
                                        {"batch_tokens", 64},
                                        {"steps", 10},
                                        {"eval", false}})
                            .dump());
  const std::string out = dir_ / "run";
  // A cross-stage setting that only training would notice: refused before the capture.
  auto r = test::run_cskv(
      {"run", "--config", job, "--out", out, "--seq-len", "48", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv run: usage error: the captured seq_len 48 is not a multiple of --window "
            "32\n");
  EXPECT_FALSE(fs::exists(out)) << "no stage may work";
  r = test::run_cskv({"run", "--config", job, "--out", out, "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto before = tree_bytes(out);
  // Training settings changed: the train stage refuses its checkpoints; run.json stays.
  r = test::run_cskv(
      {"run", "--config", job, "--out", out, "--k-density", "0.25", "--log-level", "warn"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv run: error: " + out +
                                  "/ckpt holds a run with other settings (k_density: 0.5 -> "
                                  "0.25); use another --ckpt-dir"))
      << r.err;
  EXPECT_EQ(tree_bytes(out), before);
  // The same settings again: nothing to do, and not a byte changes (summary.json included).
  r = test::run_cskv({"run", "--config", job, "--out", out, "--log-level", "warn"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has_line(r.out, "nothing to do: every stage of " + out + " is complete")) << r.out;
  EXPECT_EQ(tree_bytes(out), before);
}

}  // namespace
}  // namespace cskv
