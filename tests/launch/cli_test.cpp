// End-to-end tests of the `cskv` binary: help texts, exit codes and exact one-line errors of
// toy-model / toy-tokens / inspect, and the summary numbers of a generated model.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <sstream>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

using test::run_cskv;

// "key   value" summary lines -> {key: value}.
std::map<std::string, std::string> summary(const std::string& out) {
  std::map<std::string, std::string> m;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > 17) {
      std::string key = line.substr(0, 17);
      key.erase(key.find_last_not_of(' ') + 1);
      m[key] = line.substr(17);
    }
  }
  return m;
}

TEST(Cli, TopLevelHelpListsSubcommands) {
  const auto r = run_cskv({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* sub : {"toy-model", "toy-tokens", "inspect"}) {
    EXPECT_NE(r.out.find(std::string("\n  ") + sub + " "), std::string::npos) << sub << r.out;
  }
  const auto none = run_cskv({});
  EXPECT_EQ(none.exit_code, 2);
  const auto bad = run_cskv({"frobnicate"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_EQ(bad.err, "cskv: usage error: unknown subcommand 'frobnicate' (see 'cskv --help')\n");
}

// --version against the project venv's own torch (an independent report of the same libraries).
TEST(Cli, VersionNamesLibTorchCudaAndNccl) {
  const auto r = run_cskv({"--version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto py = test::run_command(
      {test::python3(), "-c",
       "import re, torch\n"
       "blas = re.search(r'BLAS_INFO=([^,\\s]+)', torch.__config__.show()).group(1)\n"
       "print('LibTorch', torch.__version__.split('+')[0], f'(BLAS: {blas})')\n"
       "print('CUDA runtime', torch.version.cuda or 'none')\n"
       "v = torch.cuda.nccl.version() if torch.version.cuda else None\n"
       "print('NCCL', '.'.join(map(str, v)) if v else 'not built')\n"});
  ASSERT_EQ(py.exit_code, 0) << py.err;
  std::istringstream ours(r.out), theirs(py.out);
  std::string line, ref;
  std::getline(ours, line);
  EXPECT_EQ(line, "cskv 0.1.0");
  while (std::getline(theirs, ref)) {  // each of ours starts with the reference's line
    ASSERT_TRUE(std::getline(ours, line)) << r.out;
    EXPECT_EQ(line.rfind(ref, 0), 0u) << "cskv: " << line << "\ntorch: " << ref;
  }
}

// Help text with every whitespace run collapsed to one space (cxxopts wraps long lines).
std::string flat(const std::string& text) {
  std::string out;
  for (char c : text) {
    const bool space = c == ' ' || c == '\n';
    if (!space)
      out += c;
    else if (!out.empty() && out.back() != ' ')
      out += ' ';
  }
  return out;
}

TEST(Cli, SubcommandHelpShowsEveryFlagWithItsDefault) {
  const auto r = run_cskv({"toy-model", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.err.empty()) << r.err;
  const std::string help = flat(r.out);
  for (const char* entry :
       {"--arch arg Architecture: llama|mistral|qwen2 (qwen2 has q/k/v biases) (default: llama)",
        "--hidden arg Hidden size (default: 256)",
        "--layers arg Number of decoder layers (default: 4)",
        "--heads arg Attention heads (must divide --hidden) (default: 8)",
        "--kv-heads arg Key/value heads (GQA; must divide --heads) (default: 2)",
        "--intermediate arg MLP intermediate size (default: 688)",
        "--vocab arg Vocabulary size (default: 1024)",
        "--tie-embeddings Tie lm_head to embed_tokens (no lm_head.weight is written)",
        "--dtype arg Weight dtype: f32|f16|bf16 (default: f16)",
        "--seed arg Random seed (default: 0)",
        "--shards arg Number of .safetensors files (>1 adds model.safetensors.index.json) "
        "(default: 1)",
        "--out arg Output directory (required; created if missing)",
        "--log-level arg Log verbosity: trace|debug|info|warn|error|off (default: info)"}) {
    EXPECT_NE(help.find(entry), std::string::npos) << entry << "\n" << r.out;
  }
  const auto t = run_cskv({"toy-tokens", "--help"});
  EXPECT_EQ(t.exit_code, 0);
  const std::string tokens_help = flat(t.out);
  for (const char* entry :
       {"--vocab arg Vocabulary size (ids are in [0, vocab)) (default: 1024)",
        "--count arg Number of tokens (default: 1048576)", "--seed arg Random seed (default: 0)",
        "--dtype arg Token width: u16|u32 (u16 needs vocab <= 65536) "
        "(default: u16)",
        "--out arg Output file (required)"}) {
    EXPECT_NE(tokens_help.find(entry), std::string::npos) << entry << "\n" << t.out;
  }
  const auto i = run_cskv({"inspect", "--help"});
  EXPECT_EQ(i.exit_code, 0);
  EXPECT_NE(flat(i.out).find("--model arg Model directory (required)"), std::string::npos) << i.out;
}

TEST(Cli, UsageErrorsAreOneLineWithExitTwo) {
  test::TempDir dir;
  auto r = run_cskv({"toy-model", "--bogus", "3", "--out", dir / "m"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: Option \u2018bogus\u2019 does not exist (see 'cskv "
            "toy-model --help')\n");
  r = run_cskv({"toy-model", "--arch", "gpt2", "--out", dir / "m"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: --arch: expected llama|mistral|qwen2, found 'gpt2'\n");
  r = run_cskv({"toy-model", "--dtype", "f64", "--out", dir / "m"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv toy-model: usage error: --dtype: expected f32|f16|bf16, found 'f64'\n");
  r = run_cskv({"toy-model", "--kv-heads", "3", "--out", dir / "m"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-model: usage error: toy model: --heads (8) is not divisible by --kv-heads "
            "(3)\n");
  r = run_cskv({"toy-model"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv toy-model: usage error: missing required option --out\n");
  EXPECT_FALSE(std::ifstream(dir / "m/config.json").good());  // nothing was written
  r = run_cskv({"toy-tokens", "--vocab", "70000", "--out", dir / "t.bin"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "cskv toy-tokens: usage error: --vocab 70000 does not fit in u16 (at most 65536); use "
            "--dtype u32\n");
  r = run_cskv({"inspect"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cskv inspect: usage error: missing required option --model\n");
}

TEST(Cli, ToyModelThenInspectPrintsTheSameCorrectSummary) {
  test::TempDir dir;
  const std::string m = dir / "toy";
  const auto made = run_cskv({"toy-model", "--out", m, "--log-level", "warn"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  EXPECT_TRUE(made.err.empty()) << made.err;
  const auto r = run_cskv({"inspect", "--model", m});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, made.out);
  const auto s = summary(r.out);
  EXPECT_EQ(s.at("model"), m);
  EXPECT_EQ(s.at("architecture"), "LlamaForCausalLM");
  EXPECT_EQ(s.at("layers"), "4");
  EXPECT_EQ(s.at("hidden"), "256");
  EXPECT_EQ(s.at("heads"), "8 (kv heads 2, head_dim 32)");
  EXPECT_EQ(s.at("kv dim (D)"), "64");
  EXPECT_EQ(s.at("intermediate"), "688");
  EXPECT_EQ(s.at("vocab"), "1024");
  EXPECT_EQ(s.at("tied embeddings"), "no");
  EXPECT_EQ(s.at("attention bias"), "no");
  EXPECT_EQ(s.at("dtype"), "float16 (tensors: F16)");
  // 2·V·H + L·(2H + 2·H·H + 2·D·H + 3·I·H) + H
  EXPECT_EQ(s.at("params"), "3295488");
  EXPECT_EQ(s.at("bytes"), "6590976");
  EXPECT_EQ(s.at("files"), "1 (model.safetensors)");
  EXPECT_EQ(s.at("config hash").size(), 16u);
  EXPECT_EQ(s.at("kv cache/token"), "1024 bytes (fp16 K+V, 4 layers)");
}

TEST(Cli, ShardedQwen2ToyModelInspects) {
  test::TempDir dir;
  const std::string m = dir / "q";
  const auto made =
      run_cskv({"toy-model", "--arch",           "qwen2",  "--hidden",   "128",   "--layers",
                "2",         "--heads",          "4",      "--kv-heads", "1",     "--intermediate",
                "256",       "--vocab",          "300",    "--dtype",    "bf16",  "--shards",
                "2",         "--tie-embeddings", "--seed", "5",          "--out", m});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const auto s = summary(made.out);
  EXPECT_EQ(s.at("architecture"), "Qwen2ForCausalLM");
  EXPECT_EQ(s.at("heads"), "4 (kv heads 1, head_dim 32)");
  EXPECT_EQ(s.at("attention bias"), "yes");
  EXPECT_EQ(s.at("tied embeddings"), "yes");
  EXPECT_EQ(s.at("dtype"), "bfloat16 (tensors: BF16)");
  // V·H + L·(2H + 2·H·H + 2·D·H + (H + 2D) + 3·I·H) + H with D = 32
  EXPECT_EQ(s.at("params"),
            std::to_string(300 * 128 +
                           2 * (256 + 2 * 128 * 128 + 2 * 32 * 128 + 192 + 3 * 256 * 128) + 128));
  EXPECT_EQ(s.at("files"),
            "2 (model-00001-of-00002.safetensors, model-00002-of-00002.safetensors)");
  const auto r = run_cskv({"inspect", "--model", m});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, made.out);
}

TEST(Cli, InspectRejectsTamperedConfigWithTheShapeMismatch) {
  test::TempDir dir;
  const std::string m = dir / "toy";
  ASSERT_EQ(run_cskv({"toy-model", "--out", m, "--log-level", "warn"}).exit_code, 0);
  auto config = nlohmann::json::parse(test::read_file(m + "/config.json"));
  config["num_key_value_heads"] = 4;
  test::write_file(m + "/config.json", config.dump(2));
  const auto r = run_cskv({"inspect", "--model", m});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err, "cskv inspect: error: " + m +
                       "/model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' has "
                       "shape [64, 256], expected [128, 256] from config.json\n");

  const auto missing = run_cskv({"inspect", "--model", dir / "nope"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err, "cskv inspect: error: " + dir / "nope" +
                             "/config.json: cannot open file (expected a Hugging Face "
                             "config.json)\n");
}

TEST(Cli, ToyTokensIsDeterministic) {
  test::TempDir dir;
  const std::vector<std::string> args = {"toy-tokens", "--vocab", "500",     "--count", "1000",
                                         "--seed",     "9",       "--dtype", "u32",     "--out"};
  auto a = args, b = args;
  a.push_back(dir / "a.bin");
  b.push_back(dir / "b.bin");
  const auto ra = run_cskv(a);
  ASSERT_EQ(ra.exit_code, 0) << ra.err;
  ASSERT_EQ(run_cskv(b).exit_code, 0);
  const std::string bytes = test::read_file(dir / "a.bin");
  EXPECT_EQ(bytes.size(), 4000u);
  EXPECT_EQ(bytes, test::read_file(dir / "b.bin"));
  EXPECT_NE(ra.out.find("tokens           1000\n"), std::string::npos) << ra.out;
}

}  // namespace
}  // namespace cskv
