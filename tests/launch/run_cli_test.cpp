// `cskv run`: job-file validation (exact messages), flags overriding the file, the resolved
// settings, a second run that does nothing and changes nothing, progress lines with rate and
// ETA, an mpirun run stopped by SIGUSR1 that resumes to the uninterrupted 1-process run's bits
// (capture included), and 3 ranks giving those bits too.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "checkpoint/step_manifest.h"
#include "data/checksum.h"
#include "model/toy_model.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using data::capture_testing::has_line;

class RunCli : public ::testing::Test {
 protected:
  void SetUp() override {
    test::allow_mpirun_as_root();
    data::capture_testing::write_tiny_model_and_tokens(dir_.path());
  }

  // A job file with the toy pipeline's settings, plus `extra` (which may replace keys).
  std::string job(const json& extra = json::object(), const std::string& name = "job.json") {
    json j = {{"model", dir_ / "model"},
              {"tokens", dir_ / "tokens.bin"},
              {"num_seqs", 16},
              {"seq_len", 64},
              {"holdout_seqs", 3},
              {"k_bits", 4},
              {"v_bits", 3},
              {"batch_tokens", 128},
              {"steps", 600},
              {"lr", 1e-3},
              {"save_every", 25},
              {"eval_decode", 8},
              {"memory_contexts", "256,1024"}};
    for (const auto& [k, v] : extra.items()) {
      if (v.is_null()) {
        j.erase(k);
      } else {
        j[k] = v;
      }
    }
    const std::string path = dir_ / name;
    test::write_file(path, j.dump(2));
    return path;
  }

  std::vector<std::string> run_argv(int np, const std::vector<std::string>& args) const {
    std::vector<std::string> argv;
    if (np > 1) argv = {CSKV_MPIEXEC, "--oversubscribe", "-np", std::to_string(np)};
    argv.push_back(CSKV_BINARY_FOR_TESTS);
    argv.push_back("run");
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  // xxh64 of every file under dir (summary.json included: a run that does nothing keeps it).
  static std::map<std::string, std::string> checksums(const std::string& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      if (!e.is_regular_file()) continue;
      out[fs::relative(e.path(), dir).string()] =
          data::format_checksum(data::xxh64_file(e.path().string()));
    }
    return out;
  }

  test::TempDir dir_;
};

TEST_F(RunCli, BadJobFilesGiveExactMessages) {
  auto expect = [&](const json& extra, int code, const std::string& message) {
    const std::string path = job(extra, "bad.json");
    const auto r = test::run_command(run_argv(1, {"--config", path, "--out", dir_ / "bad"}));
    EXPECT_EQ(r.exit_code, code) << r.err;
    const std::string line = message.rfind("usage", 0) == 0
                                 ? "cskv run: " + message
                                 : "cskv run: error: " + path + ": " + message;
    EXPECT_TRUE(has_line(r.err, line)) << "expected: " << line << "\n" << r.err;
  };
  expect({{"k_densty", 0.5}}, 1,
         "unknown key \"k_densty\" (the keys are the flags of 'cskv run --help' with '_' for "
         "'-')");
  expect({{"k-density", 0.5}}, 1,
         "unknown key \"k-density\" (the keys are the flags of 'cskv run --help' with '_' for "
         "'-')");
  expect({{"seq_len", 0.5}}, 1, "\"seq_len\" must be an integer, found 0.5");
  expect({{"k_density", "0.5"}}, 1, "\"k_density\" must be a number, found \"0.5\"");
  expect({{"tokens", 5}}, 1, "\"tokens\" must be a string, found 5");
  expect({{"export_cskv", 1}}, 1, "\"export_cskv\" must be true or false, found 1");
  expect({{"seed", -1}}, 1, "\"seed\" must be a non-negative integer, found -1");
  expect({{"export_cskv", true}, {"budget", 0.25}}, 2,
         "usage error: --export-cskv with --budget 0.25: the reference code has one K and one V "
         "rank for all layers, --budget chooses them per layer; give --k-density/--v-density, or "
         "turn --export-cskv off");
  expect({{"model", nullptr}}, 2,
         "usage error: missing required setting \"model\" (give --model, or \"model\" in the "
         "--config file)");
  test::write_file(dir_ / "array.json", "[1, 2]");
  auto r = test::run_command(run_argv(1, {"--config", dir_ / "array.json", "--out", dir_ / "x"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv run: error: " + (dir_ / "array.json") +
                                  ": expected a JSON object of settings, found array"))
      << r.err;
  r = test::run_command(run_argv(1, {"--config", job(), "--seq-len", "abc", "--out", dir_ / "x"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "bad")) << "a refused job must not start";
}

TEST_F(RunCli, SecondRunDoesNothingAndFlagsOverrideTheFile) {
  const std::string out = dir_ / "out";
  const auto first =
      test::run_command(run_argv(1, {"--config", job({{"steps", 40}, {"export_cskv", true}}),
                                     "--out", out, "--k-density", "0.25"}));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  // The flag won over the file; the resolved settings keep their JSON types.
  std::ifstream f(out + "/run.json");
  const json resolved = json::parse(f);
  EXPECT_EQ(resolved.at("k_density"), 0.25);
  EXPECT_EQ(resolved.at("v_density"), 0.5);  // default
  EXPECT_EQ(resolved.at("steps"), 40);       // from the file
  EXPECT_TRUE(resolved.at("k_bits").is_number_integer());
  EXPECT_EQ(resolved.at("export_cskv"), true);
  EXPECT_EQ(resolved.at("model"), dir_ / "model");
  for (const char* file :
       {"compressor.safetensors", "export/density_k_0.25_v_0.5_quant_k_4_v_3_window_32__k.ckpt",
        "eval/report.json", "eval/report.md", "ckpt/metrics.json", "summary.json"}) {
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;
  }
  EXPECT_NE(first.out.find("summary (" + out + "):"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("  eval     compression "), std::string::npos) << first.out;
  const auto before = checksums(out);

  const auto second =
      test::run_command(run_argv(1, {"--config", job({{"steps", 40}, {"export_cskv", true}}),
                                     "--out", out, "--k-density", "0.25"}));
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_TRUE(has_line(second.out, "nothing to do: every stage of " + out + " is complete"))
      << second.out;
  for (const char* stage : {"capture", "train", "merge", "eval"}) {
    EXPECT_TRUE(has_line(second.out, "  " + std::string(stage) +
                                         std::string(9 - std::strlen(stage), ' ') +
                                         "-  complete, skipped"))
        << stage << "\n"
        << second.out;
  }
  EXPECT_EQ(second.err.find("steps/s"), std::string::npos) << "no training may run:\n"
                                                           << second.err;
  EXPECT_EQ(checksums(out), before);
}

// Other capture settings in the same --out: refused with what differs, naming the way out that
// `cskv run` has; with --overwrite every stage replaces what it refused and the run completes.
TEST_F(RunCli, OtherSettingsAreRefusedAndOverwriteStartsOver) {
  const std::string out = dir_ / "out";
  const std::string file = job({{"steps", 20}, {"eval", false}});
  ASSERT_EQ(test::run_command(run_argv(1, {"--config", file, "--out", out})).exit_code, 0);
  const auto before = checksums(out);
  const auto refused = test::run_command(
      run_argv(1, {"--config", file, "--out", out, "--num-seqs", "12", "--log-level", "warn"}));
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(refused.err, "cskv run: error: " + out +
                             "/acts holds a capture with other settings (num_seqs: 16 -> 12); "
                             "use another --out or --overwrite\n");
  EXPECT_EQ(checksums(out), before);
  const auto again = test::run_command(
      run_argv(1, {"--config", file, "--out", out, "--num-seqs", "12", "--overwrite"}));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const json capture = json::parse(test::read_file(out + "/acts/capture.json"));
  EXPECT_EQ(capture.at("num_seqs"), 12);
  EXPECT_TRUE(has_line(again.out, "  tokens   " + std::to_string((12 + 3) * 64) +
                                      " captured (calibration + held-out)"))
      << again.out;
}

TEST_F(RunCli, MpirunStoppedBySigusrOneResumesToTheUninterruptedBits) {
  // Reference: 1 process, uninterrupted; plain progress lines (stderr is a pipe, not a TTY).
  setenv("CSKV_PROGRESS_INTERVAL_S", "0.05", 1);
  const std::string ref = dir_ / "ref";
  const auto r = test::run_command(run_argv(1, {"--config", job(), "--out", ref}));
  unsetenv("CSKV_PROGRESS_INTERVAL_S");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::regex_search(
      r.err, std::regex(R"(\[progress\] info: train: \d+/2400 steps \(\d+\.\d%\), \d+\.\d )"
                        R"(steps/s, ETA \d+ s\n)")))
      << r.err;
  EXPECT_TRUE(std::regex_search(
      r.err,
      std::regex(R"(\[progress\] info: train: 2400 steps in \d+\.\d s \(\d+\.\d steps/s\))")))
      << r.err;

  // The job, from scratch on 2 ranks (capture included): SIGUSR1 to mpirun (which forwards it)
  // once training has checkpointed.
  const std::string out = dir_ / "job";
  const auto stopped = test::run_command(
      run_argv(2, {"--config", job(), "--out", out}), [&](int pid, const std::atomic<bool>& e) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!e && std::chrono::steady_clock::now() < deadline) {
          if (checkpoint::list_steps(out + "/ckpt").size() >= 2) {
            ::kill(pid, SIGUSR1);
            return;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      });
  ASSERT_EQ(stopped.exit_code, 75) << stopped.err;
  EXPECT_NE(stopped.err.find("stopping on SIGUSR1: checkpoint"), std::string::npos) << stopped.err;
  EXPECT_FALSE(fs::exists(out + "/compressor.safetensors"));
  const auto resumed = test::run_command(run_argv(2, {"--config", job(), "--out", out}));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming from " + out + "/ckpt/step-"), std::string::npos)
      << resumed.err;
  EXPECT_NE(resumed.out.find("  capture  -  complete, skipped"), std::string::npos) << resumed.out;
  EXPECT_TRUE(test::read_file(out + "/acts/stats.h5") == test::read_file(ref + "/acts/stats.h5"))
      << "the statistics depend on the number of capturing ranks";
  EXPECT_TRUE(test::read_file(out + "/ckpt/compressor.safetensors") ==
              test::read_file(ref + "/ckpt/compressor.safetensors"))
      << "the resumed factors differ from the uninterrupted run";
  // The evaluation of the same factors gives the same numbers.
  std::ifstream a(ref + "/eval/report.json"), b(out + "/eval/report.json");
  const json ja = json::parse(a), jb = json::parse(b);
  EXPECT_EQ(ja.at("headline"), jb.at("headline"));
  // 3 ranks, uninterrupted, from scratch: the same bits again.
  const std::string three = dir_ / "three";
  const auto r3 =
      test::run_command(run_argv(3, {"--config", job(), "--out", three, "--eval=false"}));
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  EXPECT_TRUE(test::read_file(three + "/ckpt/compressor.safetensors") ==
              test::read_file(ref + "/ckpt/compressor.safetensors"));
}

}  // namespace
}  // namespace cskv
