// Single-process tests of `cskv capture`: statistics vs the stored shards, shards vs the model
// forward, byte-identical reruns, resume after SIGKILL, refusals and bad inputs (exact messages).
#include <sys/stat.h>

#include "comm/local_communicator.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/weights.h"
#include "pipeline/capture.h"
#include "tests/pipeline/capture_test_util.h"
#include "tests/support/flag_overrides.h"

namespace cskv::data {
namespace {

using namespace cskv::pipeline;  // the stage under test

using namespace capture_testing;

// One toy model (odd sizes, so vectorised loops have tails) and token file for the whole suite.
class CaptureTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    make_model_and_tokens(dir_->path(), toy_spec(2, 48, 4, 2, 100, 512), 20000);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model() { return *dir_ / "model"; }
  static std::string tokens() { return *dir_ / "tokens.bin"; }
  // 6 training + 2 held-out sequences of 16 tokens, batches of 4 (so batches of 4 and 2).
  static std::vector<std::string> args(const std::string& out,
                                       const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{"capture",    "--model", model(),     "--tokens", tokens(),
                               "--num-seqs", "6",       "--seq-len", "16",       "--holdout-seqs",
                               "2",          "--batch", "4",         "--out",    out};
    a = test::with_overrides(a, extra);
    return a;
  }
  static test::CommandResult capture(const std::string& out,
                                     const std::vector<std::string>& extra = {}) {
    return test::run_cskv(args(out, extra));
  }

  test::TempDir tmp_;

 private:
  static test::TempDir* dir_;
};
test::TempDir* CaptureTest::dir_ = nullptr;

int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

std::map<std::string, int64_t> dir_mtimes(const std::string& dir) {
  std::map<std::string, int64_t> out;
  for (const auto& e : fs::directory_iterator(dir)) out[e.path().filename()] = mtime_ns(e.path());
  return out;
}

TEST_F(CaptureTest, StatisticsEqualGramOfStoredTrainingRows) {
  const std::string out = tmp_ / "acts";
  const auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Held-out rows are stored but excluded: 6 x 16 training tokens only.
  expect_stats_match_shards(out, 6 * 16);
  const SplitContents hold = read_split(out, "holdout");
  EXPECT_EQ(hold.x.size(), 2u);
  EXPECT_EQ(hold.x.begin()->first, 6);  // held-out ids follow the training ids
}

// The tokens of the stream from `start`, as a sequence of the shards stores them.
at::Tensor stream_tokens(const std::vector<uint32_t>& stream, int64_t start, int64_t len) {
  at::Tensor t = at::empty({len}, at::kLong);
  for (int64_t i = 0; i < len; ++i) t[i] = static_cast<int64_t>(stream[start + i]);
  return t;
}

// Held-out sequences are the last 2 x 16 tokens of the stream; the training windows are drawn
// from the tokens before them, so no held-out token was trained on.
TEST_F(CaptureTest, HeldOutSequencesAreTheStreamsEndNoTrainingWindowReaches) {
  const std::string out = tmp_ / "acts";
  const auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<uint32_t> stream = model::toy_tokens(512, 20000, 0);
  const SplitContents hold = read_split(out, "holdout");
  EXPECT_TRUE(at::equal(hold.tokens.at(6), stream_tokens(stream, 20000 - 32, 16)));
  EXPECT_TRUE(at::equal(hold.tokens.at(7), stream_tokens(stream, 20000 - 16, 16)));
  const auto starts = sample_sequences(20000 - 32, 6, 16, 0, Sampling::kRandom);
  const SplitContents train = read_split(out, "train");
  for (int64_t id = 0; id < 6; ++id) {
    EXPECT_TRUE(at::equal(train.tokens.at(id), stream_tokens(stream, starts[id], 16))) << id;
    EXPECT_LE(starts[id] + 16, 20000 - 32) << id;
  }
}

// --holdout-tokens: the held-out sequences are that corpus's first chunks; training windows
// are drawn from all of --tokens; the held-out corpus is part of the capture's identity.
TEST_F(CaptureTest, HoldoutTokensFileGivesTheHeldOutSequences) {
  const std::vector<uint32_t> held = model::toy_tokens(512, 40, 5);
  model::write_tokens(tmp_ / "held.bin", held, 512, model::TokenDType::kU16);
  const std::string out = tmp_ / "acts";
  auto r = capture(out, {"--holdout-tokens", tmp_ / "held.bin"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const SplitContents hold = read_split(out, "holdout");
  EXPECT_TRUE(at::equal(hold.tokens.at(6), stream_tokens(held, 0, 16)));
  EXPECT_TRUE(at::equal(hold.tokens.at(7), stream_tokens(held, 16, 16)));
  const std::vector<uint32_t> stream = model::toy_tokens(512, 20000, 0);
  const auto starts = sample_sequences(20000, 6, 16, 0, Sampling::kRandom);
  const SplitContents train = read_split(out, "train");
  for (int64_t id = 0; id < 6; ++id) {
    EXPECT_TRUE(at::equal(train.tokens.at(id), stream_tokens(stream, starts[id], 16))) << id;
  }
  const auto identity = nlohmann::json::parse(test::read_file(out + "/capture.json"));
  EXPECT_EQ(identity.at("holdout_tokens"), fs::absolute(tmp_ / "held.bin").string());
  EXPECT_EQ(identity.at("holdout_stream_size"), 40);
  r = capture(out);  // the held-out corpus differs: refused by name
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("holdout_tokens"), std::string::npos) << r.err;

  r = capture(tmp_ / "x", {"--holdout-tokens", tmp_ / "held.bin", "--holdout-seqs", "3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv capture: error: " + tmp_ / "held.bin" +
                                  ": 40 tokens hold only 2 held-out sequences of 16 tokens, 3 "
                                  "requested"))
      << r.err;
  r = capture(tmp_ / "x", {"--holdout-tokens", tmp_ / "held.bin", "--holdout-seqs", "0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(has_line(
      r.err,
      "cskv capture: usage error: --holdout-tokens is only used with --holdout-seqs > 0 (found 0)"))
      << r.err;
  r = capture(tmp_ / "x", {"--holdout-tokens", tmp_ / "held.bin", "--holdout-text", tmp_ / "t"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(has_line(
      r.err, "cskv capture: usage error: give at most one of --holdout-tokens or --holdout-text"))
      << r.err;
}

TEST_F(CaptureTest, StoredActivationsEqualForwardRoundedToFloat16) {
  const std::string out = tmp_ / "acts";
  const auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto config = model::load_config(model());
  auto weights =
      std::make_shared<model::SafetensorsModel>(model::SafetensorsModel::open_dir(model()));
  const model::LlamaModel llama(config, weights);
  for (const std::string split : {"train", "holdout"}) {
    const SplitContents got = read_split(out, split);
    ASSERT_EQ(got.x.size(), split == "train" ? 6u : 2u);
    std::vector<at::Tensor> all_tokens;
    for (const auto& [id, layers] : got.x) {
      const at::Tensor tok = got.tokens.at(id).unsqueeze(0);
      all_tokens.push_back(tok);
      int calls = 0;
      llama.forward(tok, [&](int64_t layer, const at::Tensor& x) {
        ++calls;
        const at::Tensor expected = x.to(at::kHalf).to(at::kFloat);
        EXPECT_TRUE(at::equal(layers.at(layer), expected))
            << split << " sequence " << id << " layer " << layer << " max |diff| "
            << (layers.at(layer) - expected).abs().max().item<float>();
      });
      EXPECT_EQ(calls, 2);
    }
    // One batch of every sequence of the split gives the same rows (batch independence).
    const at::Tensor batch = at::cat(all_tokens, 0);
    llama.forward(batch, [&](int64_t layer, const at::Tensor& x) {
      int64_t i = 0;
      for (const auto& [id, layers] : got.x) {
        const at::Tensor rows = x.narrow(0, i++ * 16, 16).to(at::kHalf).to(at::kFloat);
        EXPECT_TRUE(at::equal(layers.at(layer), rows)) << "batched: sequence " << id;
      }
    });
  }
}

TEST_F(CaptureTest, IdenticalRunsWriteIdenticalBytesAndBatchDoesNotMatter) {
  const std::string a = tmp_ / "a", b = tmp_ / "b", c = tmp_ / "c";
  auto r = capture(a);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // HDF5 times have 1 s steps
  r = capture(b);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_bytes(a, b);  // shards, holdout, stats.h5, manifest.json (checksums), capture.json
  r = capture(c, {"--batch", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_sequences(read_split(a, "train"), read_split(c, "train"), "batch 4 vs 1 train");
  expect_same_sequences(read_split(a, "holdout"), read_split(c, "holdout"), "batch 4 vs 1 hold");
  expect_stats_match_shards(c, 6 * 16);
}

TEST_F(CaptureTest, RerunWithSameSettingsDoesNothing) {
  const std::string out = tmp_ / "acts";
  auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto bytes = dir_bytes(out);
  const auto mtimes = dir_mtimes(out);
  r = capture(out);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has_line(r.out, "capture: " + out + " is complete; nothing to do")) << r.out;
  EXPECT_TRUE(bytes == dir_bytes(out));
  EXPECT_EQ(mtimes, dir_mtimes(out));
}

TEST_F(CaptureTest, RerunWithOtherSettingsIsRefusedNamingTheKeys) {
  const std::string out = tmp_ / "acts";
  auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto bytes = dir_bytes(out);
  const auto mtimes = dir_mtimes(out);
  const std::string tail = "); use another --out or --overwrite";
  const std::string head = "cskv capture: error: " + out + " holds a capture with other settings (";

  r = capture(out, {"--seed", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, head + "seed: 0 -> 1" + tail)) << r.err;

  r = capture(out, {"--layers", "1", "--seed", "3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, head + "layers: [0,1] -> [1]; seed: 0 -> 3" + tail)) << r.err;

  const std::string other = tmp_ / "other-model";
  model::write_toy_model(toy_spec(2, 48, 4, 2, 112, 512), other);
  auto a = args(out);
  a[2] = other;
  r = test::run_cskv(a);
  EXPECT_EQ(r.exit_code, 1);
  const std::string old_hash = model::load_config(model()).hash();
  const std::string new_hash = model::load_config(other).hash();
  ASSERT_NE(old_hash, new_hash);
  const auto fingerprint = [](const std::string& dir) {
    return model::weights_fingerprint(model::load_config(dir),
                                      model::SafetensorsModel::open_dir(dir));
  };
  EXPECT_TRUE(has_line(r.err, head + "model_config_hash: \"" + old_hash + "\" -> \"" + new_hash +
                                  "\"; model_weights_fingerprint: \"" + fingerprint(model()) +
                                  "\" -> \"" + fingerprint(other) + "\"" + tail))
      << r.err;
  EXPECT_TRUE(bytes == dir_bytes(out));  // nothing was touched by the refusals
  EXPECT_EQ(mtimes, dir_mtimes(out));

  // --overwrite replaces the capture: the result equals a fresh capture with those settings.
  r = capture(out, {"--seed", "1", "--overwrite"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string fresh = tmp_ / "fresh";
  r = capture(fresh, {"--seed", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_bytes(out, fresh);
  EXPECT_FALSE(bytes.at("shard-00000-of-00001.h5") == dir_bytes(out).at("shard-00000-of-00001.h5"));
}

// Kills a single-process capture after its training shard is listed but before the held-out one
// is, reruns it, and expects exactly the bytes of an uninterrupted run.
TEST_F(CaptureTest, ResumeAfterSigkillEqualsUninterruptedRun) {
  // 2 training sequences, then 12 held-out ones of 512 tokens: a wide window to kill in.
  const std::vector<std::string> sizes{"--num-seqs",     "2",  "--seq-len", "512",
                                       "--holdout-seqs", "12", "--batch",   "1"};
  auto make = [&](const std::string& out) {
    std::vector<std::string> a{"capture", "--model", model(), "--tokens", tokens(), "--out", out};
    a.insert(a.end(), sizes.begin(), sizes.end());
    return a;
  };
  const std::string killed = tmp_ / "killed", whole = tmp_ / "whole";
  {
    auto argv = make(killed);
    argv.insert(argv.begin(), cskv_binary());
    Child child(argv, tmp_ / "killed.log");
    const bool ready = wait_for(
        child,
        [&] {
          const auto files = listed_files(killed);
          return files == std::vector<std::string>{"shard-00000-of-00001.h5"};
        },
        60);
    ASSERT_TRUE(ready) << "the training shard was never listed alone; log:\n" << child.log();
    child.kill_all();
    // Killed mid-way: the held-out shard is not listed and there are no statistics.
    ASSERT_EQ(listed_files(killed), std::vector<std::string>{"shard-00000-of-00001.h5"})
        << "the capture finished before it could be killed; make the held-out split bigger";
    ASSERT_FALSE(fs::exists(killed + "/stats.h5"));
  }
  auto r = test::run_cskv(make(killed));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("1 shard(s) written and 1 reused by rank 0"), std::string::npos) << r.out;
  r = test::run_cskv(make(whole));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("2 shard(s) written and 0 reused by rank 0"), std::string::npos) << r.out;
  expect_same_bytes(killed, whole);
}

TEST_F(CaptureTest, BadTokenFilesModelAndLayersGiveExactMessages) {
  struct Case {
    std::string name;
    std::vector<std::string> args;
    int exit_code;
    std::string line;
  };
  const std::string out = tmp_ / "acts";
  // Token id 600 >= vocab 512 at position 3.
  std::string bad_ids(20000 * 2, '\0');
  bad_ids[6] = static_cast<char>(600 & 0xff);
  bad_ids[7] = static_cast<char>(600 >> 8);
  test::write_file(tmp_ / "bad-ids.bin", bad_ids);
  test::write_file(tmp_ / "short.bin", std::string(10 * 2, '\0'));
  test::write_file(tmp_ / "odd.bin", std::string(2001, '\0'));
  auto with = [&](const std::string& flag, const std::string& value) {
    auto a = args(out);
    for (size_t i = 0; i + 1 < a.size(); ++i) {
      if (a[i] == flag) {
        a[i + 1] = value;
        return a;
      }
    }
    a.push_back(flag);
    a.push_back(value);
    return a;
  };
  const std::vector<Case> cases = {
      {"id >= vocab", with("--tokens", tmp_ / "bad-ids.bin"), 1,
       "cskv capture: error: " + (tmp_ / "bad-ids.bin") +
           ": token id 600 at position 3 is out of range for vocab_size 512"},
      {"short file", with("--tokens", tmp_ / "short.bin"), 1,
       "cskv capture: error: " + (tmp_ / "short.bin") +
           ": 10 tokens cannot hold 2 held-out sequences of 16 tokens at its end and a training "
           "window before them (at least 48 tokens are needed; or give a separate held-out "
           "corpus)"},
      {"short file, no held-out",
       test::with_overrides(args(out), {"--tokens", tmp_ / "short.bin", "--holdout-seqs", "0"}), 1,
       "cskv capture: error: " + (tmp_ / "short.bin") +
           ": 10 tokens is shorter than one sequence of 16 tokens"},
      {"odd length", with("--tokens", tmp_ / "odd.bin"), 1,
       "cskv capture: error: " + (tmp_ / "odd.bin") +
           ": 2001 bytes is not a multiple of 2 (u16 tokens)"},
      {"missing model", with("--model", tmp_ / "no-such-model"), 1,
       "cskv capture: error: " + (tmp_ / "no-such-model") +
           "/config.json: cannot open file (expected a Hugging Face config.json)"},
      {"layers out of range", with("--layers", "0-2"), 2,
       "cskv capture: usage error: --layers: layer 2 does not exist (the model has 2 layers)"},
  };
  for (const auto& c : cases) {
    const auto r = test::run_cskv(c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.name;
    EXPECT_TRUE(has_line(r.err, c.line)) << c.name << ": expected line\n"
                                         << c.line << "\nstderr:\n"
                                         << r.err;
    EXPECT_FALSE(fs::exists(out + "/manifest.json")) << c.name;
  }
}

TEST_F(CaptureTest, TruncatedOrMissingListedShardIsAnErrorAndNothingIsOverwritten) {
  const std::string out = tmp_ / "acts";
  auto r = capture(out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string shard = out + "/shard-00000-of-00001.h5";
  const std::string bytes = test::read_file(shard);
  // Truncated: the file keeps its first half.
  test::write_file(shard, bytes.substr(0, bytes.size() / 2));
  fs::remove(out + "/stats.h5");  // so the capture is not complete and would write
  auto before = dir_bytes(out);
  auto mtimes = dir_mtimes(out);
  r = capture(out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv capture: error: " + shard + ": " +
                                  std::to_string(bytes.size() / 2) +
                                  " bytes, manifest.json records " + std::to_string(bytes.size()) +
                                  " bytes (truncated or rewritten)"))
      << r.err;
  EXPECT_TRUE(before == dir_bytes(out));
  EXPECT_EQ(mtimes, dir_mtimes(out));

  // Missing: the manifest names a file that is not there.
  fs::remove(shard);
  before = dir_bytes(out);
  mtimes = dir_mtimes(out);
  r = capture(out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has_line(r.err, "cskv capture: error: " + out +
                                  "/manifest.json lists shard-00000-of-00001.h5, but " + shard +
                                  " does not exist"))
      << r.err;
  EXPECT_TRUE(before == dir_bytes(out));
  EXPECT_EQ(mtimes, dir_mtimes(out));
}

TEST_F(CaptureTest, LocalCommunicatorRunReportsTimesAndCounts) {
  CaptureOptions o;
  o.model_dir = model();
  o.tokens_path = tokens();
  o.token_dtype = TokenDtype::kU16;
  o.num_seqs = 3;
  o.seq_len = 16;
  o.holdout_seqs = 1;
  o.batch = 2;
  o.out_dir = tmp_ / "acts";
  comm::LocalCommunicator comm;
  const CaptureResult r = run_capture(o, comm);
  EXPECT_FALSE(r.already_complete);
  EXPECT_EQ(r.tokens_captured, 4 * 16);
  EXPECT_EQ(r.shards_written,
            (std::vector<std::string>{"shard-00000-of-00001.h5", "holdout-00000-of-00001.h5"}));
  EXPECT_GT(r.seconds_forward, 0);
  EXPECT_GT(r.seconds_write, 0);
  EXPECT_GT(r.seconds_stats, 0);
  EXPECT_LE(r.seconds_forward + r.seconds_write + r.seconds_stats, r.seconds);
  expect_stats_match_shards(o.out_dir, 3 * 16);
  const CaptureResult again = run_capture(o, comm);
  EXPECT_TRUE(again.already_complete);
  EXPECT_EQ(again.tokens_captured, 0);
}

}  // namespace
}  // namespace cskv::data
