// Benchmark: cold open of a sharded HF-style safetensors model and load of one layer's
// k_proj/v_proj. Reports time, bytes read from storage (/proc/self/io) and page-cache residency
// (mincore).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/safetensors.h"

namespace {

namespace fs = std::filesystem;
using cskv::model::NamedTensors;
using cskv::model::SafetensorsModel;

// A Llama-shaped model: hidden 2048, 16 heads / 4 KV heads of 128, intermediate 5632, untied
// embeddings. Only the number of layers and the vocabulary change between the two sizes.
struct ModelShape {
  std::string name;
  int64_t layers;
  int64_t vocab;
  static constexpr int64_t kHidden = 2048, kKv = 4 * 128, kInter = 5632;
};

uint64_t read_bytes_from_proc() {
  std::ifstream in("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (in >> key >> value) {
    if (key == "read_bytes:") return value;
  }
  CSKV_FAIL("/proc/self/io has no read_bytes line");
}

std::vector<std::string> safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void drop_page_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  CSKV_CHECK(fd >= 0, path << ": cannot open");
  CSKV_CHECK(::fdatasync(fd) == 0 && ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0,
             path << ": cannot drop from the page cache");
  ::close(fd);
}

// Bytes of the file that sit in the page cache (own untouched mapping + mincore).
uint64_t resident_bytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  CSKV_CHECK(fd >= 0, path << ": cannot open");
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  CSKV_CHECK(map != MAP_FAILED, path << ": mmap failed");
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  CSKV_CHECK(::mincore(map, size, vec.data()) == 0, path << ": mincore failed");
  uint64_t bytes = 0;
  for (size_t i = 0; i < vec.size(); ++i) {
    if (vec[i] & 1) bytes += std::min(page, size - i * page);
  }
  ::munmap(map, size);
  ::close(fd);
  return bytes;
}

uint64_t dir_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& f : safetensors_files(dir)) total += fs::file_size(f);
  return total;
}

void write_model(const ModelShape& s, const std::string& dir) {
  constexpr int64_t H = ModelShape::kHidden, K = ModelShape::kKv, I = ModelShape::kInter;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  auto rnd = [&](std::vector<int64_t> shape) {
    return (at::rand(shape, gen, at::kFloat) - 0.5).mul_(0.04).to(at::kHalf);
  };
  NamedTensors t;
  t.emplace_back("model.embed_tokens.weight", rnd({s.vocab, H}));
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", at::ones({H}, at::kHalf));
    t.emplace_back(p + "self_attn.q_proj.weight", rnd({H, H}));
    t.emplace_back(p + "self_attn.k_proj.weight", rnd({K, H}));
    t.emplace_back(p + "self_attn.v_proj.weight", rnd({K, H}));
    t.emplace_back(p + "self_attn.o_proj.weight", rnd({H, H}));
    t.emplace_back(p + "post_attention_layernorm.weight", at::ones({H}, at::kHalf));
    t.emplace_back(p + "mlp.gate_proj.weight", rnd({I, H}));
    t.emplace_back(p + "mlp.up_proj.weight", rnd({I, H}));
    t.emplace_back(p + "mlp.down_proj.weight", rnd({H, I}));
  }
  t.emplace_back("model.norm.weight", at::ones({H}, at::kHalf));
  t.emplace_back("lm_head.weight", rnd({s.vocab, H}));
  fs::remove_all(dir);
  cskv::model::write_safetensors_sharded(dir, t, {{"format", "pt"}}, 200ull << 20);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void bench(const ModelShape& s, const std::string& root, int reps) {
  const std::string dir = root + "/" + s.name;
  if (!fs::exists(dir + "/model.safetensors.index.json") &&
      !fs::exists(dir + "/model.safetensors")) {
    const auto t0 = std::chrono::steady_clock::now();
    write_model(s, dir);
    std::printf("# wrote %s (%.1f MB) in %.1f s\n", dir.c_str(), dir_bytes(dir) / 1e6,
                ms_since(t0) / 1e3);
  }
  const auto files = safetensors_files(dir);
  const int64_t layer = s.layers / 2;
  const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
  for (int rep = 0; rep < reps; ++rep) {
    uint64_t before = 0;
    for (const auto& f : files) {
      drop_page_cache(f);
      before += resident_bytes(f);
    }
    const uint64_t io0 = read_bytes_from_proc();
    const auto t0 = std::chrono::steady_clock::now();
    const auto model = SafetensorsModel::open_dir(dir);
    const double open_ms = ms_since(t0);
    const at::Tensor k = model.get(p + "k_proj.weight");
    const at::Tensor v = model.get(p + "v_proj.weight");
    // Summing reads every byte, so the pages are really brought in.
    const double sum = k.sum(at::kFloat).item<double>() + v.sum(at::kFloat).item<double>();
    const double load_ms = ms_since(t0);
    const uint64_t io = read_bytes_from_proc() - io0;
    uint64_t resident = 0;
    for (const auto& f : files) resident += resident_bytes(f);
    const uint64_t wanted = k.nbytes() + v.nbytes();
    std::printf("| %s | %.1f MB | %zu | %d | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f | %.3g |\n",
                s.name.c_str(), dir_bytes(dir) / 1e6, files.size(), rep, open_ms, load_ms,
                wanted / 1e6, io / 1e6, resident / 1e6, before / 1e6, sum);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string root = "cskv-bench-model-io";
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      root = argv[++i];
    } else if (a == "--reps" && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: cskv_bench_model_io [--dir DIR (default cskv-bench-model-io)] "
                   "[--reps N (default 5)]\n"
                   "Writes (once) a ~1 GB and a ~250 MB f16 Llama-shaped model under DIR, then "
                   "per repetition drops them from the page cache and times open + loading one "
                   "layer's k_proj/v_proj.\n");
      return 2;
    }
  }
  try {
    at::set_num_threads(1);
    std::printf(
        "| model | size | files | rep | open ms | open+load k,v ms | k+v MB | "
        "read_bytes MB | resident after MB | resident before MB | checksum |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    bench({"llama-1g", 9, 32000}, root, reps);
    bench({"llama-250m", 2, 8000}, root, reps);
  } catch (const cskv::Error& e) {
    std::fprintf(stderr, "cskv_bench_model_io: %s\n", e.message().c_str());
    return 1;
  }
  return 0;
}
