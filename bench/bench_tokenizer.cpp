// tokenizer.json throughput: cskv's HfTokenizer vs the `tokenizers` package on one thread, on the
// same ~100 MB text and the same Llama-3-style tokenizer (trained on the text by the test's
// Python reference), with a check that both produce the same ids.
//   cskv_bench_tokenizer --work DIR [--text FILE | --source DIR] [--mb 100] [--vocab 16000]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "data/hf_tokenizer.h"

namespace fs = std::filesystem;
using cskv::data::HfTokenizer;

namespace {

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return argv[i + 1];
  }
  return fallback;
}

// The *.txt files of dir (sorted), concatenated and repeated up to mb megabytes.
std::string repeated_corpus(const std::string& dir, double mb) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".txt") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string one;
  for (const auto& f : files) one += cskv::files::read_whole_file(f.string()) + "\n\n";
  std::string text;
  while (static_cast<double>(text.size()) < mb * 1e6) text += one;
  return text;
}

// As Python's str.split("\n\n").
std::vector<std::string> documents(const std::string& text) {
  std::vector<std::string> docs;
  size_t pos = 0;
  for (size_t at = text.find("\n\n"); at != std::string::npos; at = text.find("\n\n", pos)) {
    docs.push_back(text.substr(pos, at - pos));
    pos = at + 2;
  }
  docs.push_back(text.substr(pos));
  return docs;
}

std::string run(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) throw std::runtime_error("cannot run: " + command);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (pclose(p) != 0) throw std::runtime_error("failed: " + command + "\n" + out);
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string work = arg(argc, argv, "--work", "bench-tokenizer");
  const std::string script = std::string(CSKV_SOURCE_DIR) + "/tests/python/data_hf_tokenizers.py";
  const std::string python = CSKV_BENCH_PYTHON;
  fs::create_directories(work);
  std::string text_path = arg(argc, argv, "--text", "");
  if (text_path.empty()) {
    text_path = work + "/corpus.txt";
    const std::string source =
        arg(argc, argv, "--source", CSKV_SOURCE_DIR "/../shared/data/tinystories");
    cskv::files::write_file_atomic(
        text_path, repeated_corpus(source, std::stod(arg(argc, argv, "--mb", "100"))));
  }
  const std::string tok_path = work + "/tokenizer.json";
  run(python + " " + script + " --train-bench " + text_path + " " + tok_path + " " +
      arg(argc, argv, "--vocab", "16000"));
  const std::string text = cskv::files::read_whole_file(text_path, uint64_t{1} << 34, "text");
  const double mb = static_cast<double>(text.size()) / 1e6;
  const HfTokenizer tok = HfTokenizer::load(tok_path);

  auto t0 = std::chrono::steady_clock::now();
  const size_t whole_ids = tok.encode(text, false).size();
  const double whole_s = seconds_since(t0);

  const auto docs = documents(text);
  size_t doc_ids = 0;
  uint64_t id_sum = 0;
  t0 = std::chrono::steady_clock::now();
  for (const auto& d : docs) {
    for (const uint32_t id : tok.encode(d, false)) {
      ++doc_ids;
      id_sum += id;
    }
  }
  const double docs_s = seconds_since(t0);

  const auto ref =
      nlohmann::json::parse(run("RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false " + python + " " +
                                script + " --bench " + tok_path + " " + text_path));
  const double ref_s = ref.at("seconds").get<double>();
  std::printf("text %s: %.1f MB, %zu documents; tokenizer %s\n", text_path.c_str(), mb, docs.size(),
              tok_path.c_str());
  std::printf("| encoder | input | ids | seconds | MB/s |\n|---|---|---|---|---|\n");
  std::printf("| cskv HfTokenizer | whole text, one encode | %zu | %.2f | %.2f |\n", whole_ids,
              whole_s, mb / whole_s);
  std::printf("| cskv HfTokenizer | per document | %zu | %.2f | %.2f |\n", doc_ids, docs_s,
              mb / docs_s);
  std::printf("| tokenizers %s, 1 thread | encode_batch of the documents | %zu | %.2f | %.2f |\n",
              "(python)", ref.at("ids").get<size_t>(), ref_s, mb / ref_s);
  const bool same =
      ref.at("ids").get<size_t>() == doc_ids && ref.at("id_sum").get<uint64_t>() == id_sum;
  std::printf("per-document ids equal to tokenizers' (count and sum): %s\n", same ? "yes" : "NO");
  std::printf("cskv / tokenizers single-thread rate: %.2fx (per document), %.2fx (whole text)\n",
              ref_s / docs_s, ref_s / whole_s);
  return same ? 0 : 1;
}
