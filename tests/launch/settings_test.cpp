// The setting tables (launch/settings.h): a job.json key and its flag resolve to the same value,
// every dtype spelling resolves to one canonical dtype, and job-file errors are exact.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "launch/cli.h"
#include "launch/run_config.h"
#include "launch/settings.h"
#include "tests/support/test_support.h"

namespace cskv::cli {
namespace {

using json = nlohmann::json;

// The options of `cskv run` as the command declares them: --config, then every run setting.
cxxopts::Options run_like_options() {
  auto options = make_options("run", "test");
  options.add_options("job")("config", "job file", cxxopts::value<std::string>());
  SettingTable rest = run_settings();
  rest.erase(rest.begin(), rest.begin() + static_cast<long>(general_settings().size()));
  add_settings(options, rest);
  return options;
}

cxxopts::ParseResult parse_args(cxxopts::Options& options, std::vector<std::string> args) {
  args.insert(args.begin(), "cskv run");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return *parse(options, static_cast<int>(argv.size()), argv.data());
}

json resolved_from_file(const json& job, test::TempDir& dir) {
  const std::string path = dir / "job.json";
  test::write_file(path, job.dump());
  auto options = run_like_options();
  return resolved_settings(run_settings(),
                           parse_args(options, config_file_arguments(run_settings(), path)));
}

TEST(Settings, JobFileKeyAndFlagResolveToTheSameValue) {
  test::TempDir dir;
  const json from_file = resolved_from_file({{"k_density", 0.25},
                                             {"seq_len", 128},
                                             {"dtype", "fp32"},
                                             {"seed", 7},
                                             {"export_cskv", true},
                                             {"eval_decode", 8}},
                                            dir);
  auto options = run_like_options();
  const json from_flags = resolved_settings(
      run_settings(),
      parse_args(options, {"--k-density", "0.25", "--seq-len", "128", "--dtype", "fp32", "--seed",
                           "7", "--export-cskv=true", "--eval-decode", "8"}));
  EXPECT_EQ(from_file.dump(), from_flags.dump());
  EXPECT_EQ(from_file.at("k_density"), 0.25);
  EXPECT_EQ(from_file.at("seq_len"), 128);
  EXPECT_EQ(from_file.at("v_density"), 0.5);  // default
  EXPECT_EQ(from_file.at("dtype"), "fp32");   // as given (run.json records the input)
  EXPECT_TRUE(from_file.at("seed").is_number_unsigned());
  EXPECT_FALSE(from_file.contains("out"));  // no default, not given
  EXPECT_FALSE(from_file.contains("config"));
  EXPECT_FALSE(from_file.contains("help"));
}

TEST(Settings, EveryFlagIsDeclaredOnceAndCaptureIdentityIsTheRecordedKeys) {
  std::set<std::string> flags;
  for (const Setting& s : run_settings()) {
    EXPECT_TRUE(flags.insert(s.flag).second) << s.flag;
  }
  std::set<std::string> identity;
  const json recorded = capture_identity(run_settings(), json::object());
  for (const auto& [key, value] : recorded.items()) {
    identity.insert(key);
    EXPECT_TRUE(value.is_null()) << key;
  }
  EXPECT_EQ(identity,
            (std::set<std::string>{"tokens", "token_dtype", "text", "text_docs", "tokenizer",
                                   "holdout_tokens", "holdout_text", "num_seqs", "seq_len",
                                   "holdout_seqs", "sampling", "seed", "dtype", "layers"}));
}

TEST(Settings, EveryDtypeSpellingResolvesToTheCanonicalOne) {
  const std::vector<std::pair<std::string, std::string>> spellings = {
      {"f32", "f32"},   {"fp32", "f32"},     {"float32", "f32"}, {"float", "f32"},
      {"f16", "f16"},   {"fp16", "f16"},     {"float16", "f16"}, {"half", "f16"},
      {"bf16", "bf16"}, {"bfloat16", "bf16"}};
  const std::vector<FloatDtype> all = {FloatDtype::kF32, FloatDtype::kF16, FloatDtype::kBF16};
  for (const auto& [text, canonical] : spellings) {
    const auto d = parse_float_dtype(text);
    ASSERT_TRUE(d.has_value()) << text;
    EXPECT_EQ(float_dtype_name(*d), canonical) << text;
    EXPECT_EQ(float_dtype_name(float_dtype_setting("dtype", text, all)), canonical) << text;
  }
  EXPECT_FALSE(parse_float_dtype("f64").has_value());
  // The capture table's check accepts every spelling of f32 and f16, and names the allowed ones.
  for (const auto& [text, canonical] : spellings) {
    auto options = run_like_options();
    const auto r = parse_args(options, {"--dtype", text});
    if (canonical == "bf16") {
      try {
        check_settings(r, capture_settings());
        ADD_FAILURE() << text << " was accepted";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kUsage);
        EXPECT_EQ(e.message(), "--dtype: expected f32|f16, found '" + text + "'");
      }
    } else {
      EXPECT_NO_THROW(check_settings(r, capture_settings())) << text;
    }
  }
}

TEST(Settings, UnknownKeyAndWrongTypeGiveExactErrors) {
  test::TempDir dir;
  const std::string path = dir / "job.json";
  auto message = [&](const json& job) -> std::string {
    test::write_file(path, job.dump());
    try {
      config_file_arguments(run_settings(), path);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInput);
      return e.message();
    }
    return "(accepted)";
  };
  EXPECT_EQ(message({{"k_densty", 0.5}}),
            path +
                ": unknown key \"k_densty\" (the keys are the flags of 'cskv run --help' with "
                "'_' for '-')");
  EXPECT_EQ(message({{"config", "x.json"}}),
            path +
                ": unknown key \"config\" (the keys are the flags of 'cskv run --help' with "
                "'_' for '-')");
  EXPECT_EQ(message({{"threads", 1.5}}), path + ": \"threads\" must be an integer, found 1.5");
  EXPECT_EQ(message({{"log_level", "debug"}, {"k_bits", 4}}), "(accepted)");
}

TEST(Settings, CaptureDtypeErrorNamesTheCanonicalDtypes) {
  test::TempDir dir;
  const auto r = test::run_cskv(
      {"capture", "--model", dir / "model", "--dtype", "f64", "--out", dir / "acts"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv capture: usage error: --dtype: expected f32|f16, found 'f64'\n");
}

}  // namespace
}  // namespace cskv::cli
