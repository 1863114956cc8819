// Tests for model/safetensors*: bitwise round trips, exact errors for hand-crafted bad files,
// lazy loading proven with mincore(), copy-on-write mapping, and interop with a numpy reader.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "tests/support/test_support.h"

namespace cskv::model {
namespace {

using cskv::test::error_message;
using cskv::test::read_file;
using cskv::test::TempDir;
using cskv::test::write_file;

// A safetensors file by hand: u64 LE header length, the header text as given, `data` bytes.
std::string craft(const std::string& header, size_t data_bytes = 0) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

std::string raw_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

// Random tensor of a dtype with every bit pattern class (incl. inf/nan/-0) in the first values.
at::Tensor sample(at::ScalarType dtype, std::vector<int64_t> shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor t = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)).to(dtype);
  if (t.numel() >= 4) {
    auto flat = t.view({-1});
    flat[0] = std::numeric_limits<float>::infinity();
    flat[1] = std::numeric_limits<float>::quiet_NaN();
    flat[2] = -0.0f;
    flat[3] = -std::numeric_limits<float>::infinity();
  }
  return t;
}

std::string parse_error(const std::string& bytes, const std::string& path = "bad.safetensors") {
  return error_message([&] {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                             bytes.size(), path);
  });
}

// Bytes of [begin, end) of `path` that sit in the page cache (mapped separately, never touched).
struct Residency {
  uint64_t inside = 0;   // resident bytes inside [begin, end)
  uint64_t outside = 0;  // resident bytes elsewhere in the file
};
Residency resident_bytes(const std::string& path, uint64_t begin, uint64_t end) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  struct stat st {};
  ::fstat(fd, &st);
  const auto size = static_cast<size_t>(st.st_size);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  EXPECT_NE(map, MAP_FAILED);
  const auto page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  EXPECT_EQ(::mincore(map, size, vec.data()), 0);
  Residency r;
  for (size_t i = 0; i < vec.size(); ++i) {
    if (!(vec[i] & 1)) continue;
    const uint64_t lo = i * page, hi = std::min<uint64_t>(lo + page, size);
    const uint64_t in = hi > begin && lo < end ? std::min(hi, end) - std::max(lo, begin) : 0;
    r.inside += in;
    r.outside += (hi - lo) - in;
  }
  ::munmap(map, size);
  ::close(fd);
  return r;
}

void drop_page_cache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fdatasync(fd), 0);
  ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(SafetensorsRoundTrip, EveryDtypeBitwiseWithMetadata) {
  TempDir dir;
  const std::string path = dir / "t.safetensors";
  NamedTensors tensors;
  uint64_t seed = 1;
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const std::string d = c10::toString(dtype);
    tensors.emplace_back(d + ".matrix", sample(dtype, {7, 5}, seed++));
    tensors.emplace_back(d + ".scalar", sample(dtype, {}, seed++));
    tensors.emplace_back(d + ".empty", sample(dtype, {0, 3}, seed++));
    // Non-contiguous input is written contiguously.
    tensors.emplace_back(d + ".transposed", sample(dtype, {4, 6}, seed++).t());
  }
  const Metadata meta = {{"format", "pt"}, {"config", R"({"a": [1, 2], "b": "x"})"}};
  write_safetensors(path, tensors, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->header().metadata, meta);
  ASSERT_EQ(f->header().tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const at::Tensor got = f->get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type());
    EXPECT_EQ(got.sizes(), t.sizes());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_EQ(raw_bytes(got), raw_bytes(t));
    EXPECT_EQ(f->entry(name).dtype, from_scalar_type(t.scalar_type()));
  }
  EXPECT_STREQ(dtype_name(f->entry("BFloat16.matrix").dtype), "BF16");
  EXPECT_STREQ(dtype_name(f->entry("Half.matrix").dtype), "F16");
  EXPECT_STREQ(dtype_name(f->entry("Float.matrix").dtype), "F32");
}

TEST(SafetensorsRoundTrip, HeaderPaddedToEightBytesInDataOrder) {
  TempDir dir;
  // Names of several lengths so at least one needs padding; data order differs from name order.
  for (const std::string extra : {"", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg"}) {
    SCOPED_TRACE(extra);
    const std::string path = dir / "p.safetensors";
    write_safetensors(
        path, {{"zeta" + extra, at::ones({3}, at::kHalf)}, {"alpha", at::ones({2}, at::kFloat)}},
        {{"k", extra}});
    const std::string bytes = read_file(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
    EXPECT_EQ((8 + n) % 8, 0u);
    const std::string text = bytes.substr(8, n);
    const auto last = text.find_last_not_of(' ');
    EXPECT_EQ(text[last], '}');
    EXPECT_EQ(text.size() - last - 1, (8 - (last + 1) % 8) % 8) << "padding is spaces only";
    EXPECT_EQ(bytes.size(), 8 + n + 3 * 2 + 2 * 4);
    EXPECT_LT(text.find("__metadata__"), text.find("zeta"));
    EXPECT_LT(text.find("zeta"), text.find("alpha"));
    auto f = SafetensorsFile::open(path);
    EXPECT_EQ(f->entry("zeta" + extra).begin, 0u);
    EXPECT_EQ(f->entry("zeta" + extra).end, 6u);
    EXPECT_EQ(f->entry("alpha").begin, 6u);
    EXPECT_EQ(f->entry("alpha").end, 14u);
  }
}

TEST(SafetensorsRoundTrip, ShardedWithIndexBitwise) {
  TempDir dir;
  NamedTensors tensors = {
      {"model.embed_tokens.weight", sample(at::kBFloat16, {16, 8}, 1)},          // 256 B
      {"model.layers.0.self_attn.k_proj.weight", sample(at::kHalf, {8, 8}, 2)},  // 128 B
      {"model.layers.0.self_attn.v_proj.weight", sample(at::kHalf, {8, 8}, 3)},  // 128 B
      {"model.norm.weight", sample(at::kFloat, {8}, 5)},  // 32 B: still fits shard 2 (288 B)
      {"model.layers.0.mlp.up_proj.weight", sample(at::kFloat, {20, 8}, 4)},  // 640 B > limit
  };
  const Metadata meta = {{"format", "pt"}};
  const auto written = write_safetensors_sharded(dir.path(), tensors, meta, 300);
  const std::vector<std::string> expected_files = {
      "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors", "model.safetensors.index.json"};
  EXPECT_EQ(written, expected_files);
  EXPECT_FALSE(std::filesystem::exists(dir / "model.safetensors"));

  const auto index = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 256u + 128 + 128 + 640 + 32);
  const std::map<std::string, std::string> expected_map = {
      {"model.embed_tokens.weight", "model-00001-of-00003.safetensors"},
      {"model.layers.0.self_attn.k_proj.weight", "model-00002-of-00003.safetensors"},
      {"model.layers.0.self_attn.v_proj.weight", "model-00002-of-00003.safetensors"},
      {"model.layers.0.mlp.up_proj.weight", "model-00003-of-00003.safetensors"},
      {"model.norm.weight", "model-00002-of-00003.safetensors"}};
  EXPECT_EQ((index["weight_map"].get<std::map<std::string, std::string>>()), expected_map);

  const auto model = SafetensorsModel::open_dir(dir.path());
  std::vector<std::string> names;
  for (const auto& kv : expected_map) names.push_back(kv.first);
  EXPECT_EQ(model.names(), names);
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    EXPECT_TRUE(model.contains(name));
    EXPECT_EQ(model.file_of(name), dir / expected_map.at(name));
    EXPECT_EQ(model.entry(name).shape, std::vector<int64_t>(t.sizes().begin(), t.sizes().end()));
    const at::Tensor got = model.get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type());
    EXPECT_EQ(raw_bytes(got), raw_bytes(t));
  }
  EXPECT_FALSE(model.contains("lm_head.weight"));
  EXPECT_EQ(SafetensorsFile::open(dir / "model-00002-of-00003.safetensors")->header().metadata,
            meta);
}

// Real indexes carry more than total_size (total_parameters, a format, a tool's version) and
// sometimes keys beside weight_map: only weight_map decides where a tensor is.
TEST(SafetensorsRoundTrip, IndexWithExtraMetadataLoads) {
  TempDir dir;
  const NamedTensors tensors = {{"a.weight", sample(at::kBFloat16, {16, 8}, 1)},
                                {"b.weight", sample(at::kFloat, {20, 8}, 2)}};
  write_safetensors_sharded(dir.path(), tensors, {}, 300);
  auto index = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
  index["metadata"]["total_parameters"] = 288;
  index["metadata"]["format"] = "pt";
  index["metadata"]["mergekit_version"] = "0.0.4.2";
  index["metadata"]["nested"] = {{"x", {1, 2}}};
  index["generated_by"] = "convert_llama_weights_to_hf.py";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
  const auto model = SafetensorsModel::open_dir(dir.path());
  EXPECT_EQ(model.names(), (std::vector<std::string>{"a.weight", "b.weight"}));
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(model.file_of(name), dir / index["weight_map"][name].get<std::string>()) << name;
    EXPECT_EQ(raw_bytes(model.get(name)), raw_bytes(t)) << name;
  }
}

TEST(SafetensorsRoundTrip, SingleShardWritesPlainFileOnly) {
  TempDir dir;
  const NamedTensors tensors = {{"a", sample(at::kHalf, {4, 4}, 1)},
                                {"b", sample(at::kFloat, {3}, 2)}};
  // A previous sharded model in the same directory: its index must not shadow the new file.
  write_safetensors_sharded(dir / "m", {{"old1", at::zeros({8})}, {"old2", at::zeros({8})}}, {},
                            32);
  ASSERT_TRUE(std::filesystem::exists(dir / "m/model.safetensors.index.json"));
  const auto written = write_safetensors_sharded(dir / "m", tensors, {}, 1 << 20);
  EXPECT_EQ(written, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(std::filesystem::exists(dir / "m/model.safetensors.index.json"));
  const auto model = SafetensorsModel::open_dir(dir / "m");
  EXPECT_EQ(model.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(raw_bytes(model.get("a")), raw_bytes(tensors[0].second));
  EXPECT_EQ(raw_bytes(model.get("b")), raw_bytes(tensors[1].second));
  EXPECT_EQ(model.file_of("b"), dir / "m/model.safetensors");
  EXPECT_TRUE(SafetensorsFile::open(dir / "m/model.safetensors")->header().metadata.empty());
}

// ---------------------------------------------------------------------------------------------
// Mapping behaviour

TEST(SafetensorsFileTest, ZeroCopyViewOutlivesFileAndInPlaceOpsLeaveFileUntouched) {
  TempDir dir;
  const std::string path = dir / "t.safetensors";
  const at::Tensor w = sample(at::kFloat, {64, 32}, 3);
  write_safetensors(path, {{"w", w}});
  const std::string before = read_file(path);

  auto f = SafetensorsFile::open(path);
  at::Tensor a = f->get("w");
  const at::Tensor b = f->get("w");
  EXPECT_EQ(a.data_ptr(), b.data_ptr()) << "aligned data must be a view of the mapping";
  f.reset();  // the tensors keep the mapping alive
  a.mul_(2.0).add_(1.0);
  EXPECT_EQ(raw_bytes(b), raw_bytes(a)) << "both views share the private mapping";
  EXPECT_EQ(read_file(path), before) << "in-place ops must not reach the file";
  EXPECT_EQ(raw_bytes(SafetensorsFile::open(path)->get("w")), raw_bytes(w));
}

TEST(SafetensorsFileTest, UnalignedDataIsCopied) {
  TempDir dir;
  const std::string path = dir / "u.safetensors";
  // An odd header length: the data section starts at an odd offset, so F32 data is unaligned.
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string padded = header;
  while ((8 + padded.size()) % 2 == 0) padded += ' ';
  std::string bytes = craft(padded);
  ASSERT_NE(bytes.size() % 4, 0u);
  const float values[2] = {1.5f, -2.25f};
  bytes.append(reinterpret_cast<const char*>(values), sizeof values);
  write_file(path, bytes);
  auto f = SafetensorsFile::open(path);
  const at::Tensor a = f->get("w");
  const at::Tensor b = f->get("w");
  EXPECT_NE(a.data_ptr(), b.data_ptr());
  EXPECT_EQ(a.data_ptr<float>()[0], 1.5f);
  EXPECT_EQ(a.data_ptr<float>()[1], -2.25f);
}

// Reading one tensor of a large file brings only that tensor's pages (+ header) into memory.
TEST(SafetensorsFileTest, LazyLoadingTouchesOnlyTheRequestedTensor) {
  TempDir dir;
  const std::string path = dir / "big.safetensors";
  constexpr int64_t kFloats = 4 * 1024 * 1024;  // 16 MB each
  NamedTensors tensors;
  for (const char* name : {"a", "b", "c"}) {
    tensors.emplace_back(name, at::rand({kFloats}, at::kFloat));
  }
  const double expected_sum = tensors[1].second.sum(at::kDouble).item<double>();
  write_safetensors(path, tensors);
  tensors.clear();
  drop_page_cache(path);

  auto f = SafetensorsFile::open(path);
  const TensorEntry& e = f->entry("b");
  const uint64_t begin = f->header().data_offset + e.begin;
  const uint64_t end = f->header().data_offset + e.end;
  const Residency cold = resident_bytes(path, begin, end);
  EXPECT_LT(cold.inside + cold.outside, 256u * 1024) << "page cache was not dropped";

  EXPECT_EQ(f->get("b").sum(at::kDouble).item<double>(), expected_sum);
  const Residency warm = resident_bytes(path, begin, end);
  EXPECT_EQ(warm.inside, end - begin);
  EXPECT_LT(warm.outside, 256u * 1024) << "pages of other tensors were read";
}

// ---------------------------------------------------------------------------------------------
// Bad headers: each rejection, with its exact message

TEST(SafetensorsHeaderErrors, FileSizeAndHeaderLength) {
  EXPECT_EQ(parse_error("12345"),
            "bad.safetensors: file is 5 bytes, too small for a safetensors file (expected at "
            "least 8 bytes: the header length)");
  std::string big = craft("{}");
  big[0] = '\x00';
  big[1] = '\xc2';
  big[2] = '\xeb';
  big[3] = '\x0b';  // 200,000,000
  EXPECT_EQ(parse_error(big),
            "bad.safetensors: header length 200000000 exceeds the limit of 100000000 bytes");
  std::string beyond = craft("{}");
  beyond[0] = 11;
  EXPECT_EQ(parse_error(beyond),
            "bad.safetensors: header length 11 exceeds the file (10 bytes, so at most 2 header "
            "bytes)");
  std::string huge(8, '\xff');  // 2^64 - 1
  EXPECT_EQ(parse_error(huge),
            "bad.safetensors: header length 18446744073709551615 exceeds the limit of 100000000 "
            "bytes");
}

TEST(SafetensorsHeaderErrors, JsonShape) {
  EXPECT_EQ(parse_error(craft(R"({"a": )")),
            "bad.safetensors: header is not valid JSON (parse error near byte 6 of 6)");
  EXPECT_EQ(parse_error(craft("{} x")),
            "bad.safetensors: header is not valid JSON (parse error near byte 4 of 4)");
  EXPECT_EQ(parse_error(craft("[1, 2]")),
            "bad.safetensors: header must be a JSON object, found array");
  EXPECT_EQ(parse_error(craft(R"({"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},)"
                              R"( "a": {"dtype": "F32", "shape": [], "data_offsets": [4, 8]}})",
                              8)),
            "bad.safetensors: header lists 'a' more than once");
}

TEST(SafetensorsHeaderErrors, DeepNestingNeitherCrashesNorFloodsTheMessage) {
  const std::string open(200000, '['), close(200000, ']');
  EXPECT_EQ(parse_error(craft(R"({"t": {"dtype": "F32", "shape": [1, )" + open + close +
                              R"(], "data_offsets": [0, 4]}})")),
            "bad.safetensors: tensor 't': 'shape' must be an array of non-negative integers, "
            "found [1,[[[[...]]]]]");
  EXPECT_EQ(parse_error(craft(R"({"a": )" + open)),
            "bad.safetensors: header is not valid JSON (parse error near byte 200006 of 200006)");
}

TEST(SafetensorsHeaderErrors, EntryFields) {
  const std::string t = "bad.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight'";
  auto entry = [](const std::string& body, size_t data = 128) {
    return craft(R"({"model.layers.0.self_attn.k_proj.weight": )" + body + "}", data);
  };
  EXPECT_EQ(parse_error(entry("\"F16\"")),
            t + ": expected an object with dtype, shape and data_offsets, found string");
  EXPECT_EQ(parse_error(entry(R"({"shape": [8, 8], "data_offsets": [0, 128]})")),
            t + ": missing 'dtype'");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "data_offsets": [0, 128]})")),
            t + ": missing 'shape'");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": [8, 8]})")),
            t + ": missing 'data_offsets'");
  EXPECT_EQ(parse_error(entry(R"({"dtype": 16, "shape": [8, 8], "data_offsets": [0, 128]})")),
            t + ": 'dtype' must be a string, found number");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "I64", "shape": [8, 8], "data_offsets": [0, 128]})")),
            t + ": unsupported dtype 'I64' (supported: F32, F16, BF16, U8)");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": "8x8", "data_offsets": [0, 128]})")),
            t + ": 'shape' must be an array of non-negative integers, found \"8x8\"");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": [8, 8.0], "data_offsets": [0, 128]})")),
            t + ": 'shape' must be an array of non-negative integers, found [8,8.0]");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": [8, -8], "data_offsets": [0, 128]})")),
            t + ": negative dimension -8 in shape [8,-8]");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": [8, 8], "data_offsets": [0]})")),
            t + ": 'data_offsets' must be an array of two non-negative integers, found [0]");
  EXPECT_EQ(parse_error(entry(R"({"dtype": "F16", "shape": [8, 8], "data_offsets": [-1, 127]})")),
            t + ": 'data_offsets' must be an array of two non-negative integers, found [-1,127]");
  EXPECT_EQ(
      parse_error(entry(
          R"({"dtype": "F16", "shape": [4294967296, 4294967296], "data_offsets": [0, 128]})")),
      t + ": shape [4294967296, 4294967296] of F16 is too large (byte size overflows 64 bits)");
  EXPECT_EQ(parse_error(entry(
                R"({"dtype": "F16", "shape": [9223372036854775808], "data_offsets": [0, 2]})")),
            t + ": dimension 9223372036854775808 in shape [9223372036854775808] is too large");
}

TEST(SafetensorsHeaderErrors, DataOffsets) {
  const std::string t = "bad.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight'";
  auto entry = [](const std::string& offsets, size_t data) {
    return craft(R"({"model.layers.0.self_attn.k_proj.weight": {"dtype": "F16", "shape": [8, 8], )"
                 R"("data_offsets": )" +
                     offsets + "}}",
                 data);
  };
  EXPECT_EQ(parse_error(entry("[100, 0]", 128)), t + ": data_offsets [100, 0] have begin > end");
  EXPECT_EQ(parse_error(entry("[0, 128]", 120)),
            t + ": data_offsets [0, 128] end beyond the data section (120 bytes)");
  EXPECT_EQ(parse_error(entry("[0, 100]", 128)),
            t + ": data_offsets [0, 100] span 100 bytes, expected 128 (F16 [8, 8])");
  // A zero dimension means zero bytes, even when the other dimensions would overflow.
  EXPECT_EQ(parse_error(craft(R"({"e": {"dtype": "BF16", "shape": [4294967296, 4294967296, 0],)"
                              R"( "data_offsets": [0, 2]}})",
                              2)),
            "bad.safetensors: tensor 'e': data_offsets [0, 2] span 2 bytes, expected 0 (BF16 "
            "[4294967296, 4294967296, 0])");
  EXPECT_EQ(
      parse_error(craft(R"({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 2]}})", 2)),
      "bad.safetensors: tensor 's': data_offsets [0, 2] span 2 bytes, expected 4 (F32 [])");
  EXPECT_EQ(parse_error(craft(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                              R"( "b": {"dtype": "F16", "shape": [4], "data_offsets": [12, 20]}})",
                              20)),
            "bad.safetensors: tensors 'a' [0, 16] and 'b' [12, 20] overlap");
  EXPECT_EQ(parse_error(craft(R"({"z": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                              R"( "y": {"dtype": "F32", "shape": [1], "data_offsets": [20, 24]},)"
                              R"( "x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                              24)),
            "bad.safetensors: tensors 'z' [0, 16] and 'x' [8, 16] overlap");
}

TEST(SafetensorsHeaderErrors, Metadata) {
  EXPECT_EQ(parse_error(craft(R"({"__metadata__": ["pt"]})")),
            "bad.safetensors: __metadata__ must be an object of string to string, found array");
  EXPECT_EQ(parse_error(craft(R"({"__metadata__": {"format": "pt", "step": 3}})")),
            "bad.safetensors: __metadata__ must be an object of string to string, found number "
            "for key 'step'");
  const std::string ok =
      craft(R"({"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [2, 0],)"
            R"( "data_offsets": [0, 0]}})");
  const auto h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(),
                                          ok.size(), "ok");
  EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(h.tensors.at("w").numel(), 0u);
  EXPECT_EQ(h.data_offset, ok.size());
}

TEST(SafetensorsHeaderErrors, ThroughFileOpen) {
  TempDir dir;
  write_file(dir / "short.safetensors", "abc");
  EXPECT_CSKV_ERROR(SafetensorsFile::open(dir / "short.safetensors"),
                    (dir / "short.safetensors") +
                        ": file is 3 bytes, too small for a safetensors file (expected at least 8 "
                        "bytes: the header length)");
  write_file(dir / "empty.safetensors", "");
  EXPECT_CSKV_ERROR(SafetensorsFile::open(dir / "empty.safetensors"),
                    (dir / "empty.safetensors") +
                        ": file is 0 bytes, too small for a safetensors file (expected at least 8 "
                        "bytes: the header length)");
  write_file(dir / "i64.safetensors",
             craft(R"({"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", 8));
  EXPECT_CSKV_ERROR(SafetensorsFile::open(dir / "i64.safetensors"),
                    (dir / "i64.safetensors") +
                        ": tensor 'ids': unsupported dtype 'I64' (supported: F32, F16, BF16, U8)");
  EXPECT_CSKV_ERROR(SafetensorsFile::open(dir / "none.safetensors"),
                    (dir / "none.safetensors") + ": cannot open: No such file or directory");

  // A full valid file cut short: the last tensor now ends beyond the data section.
  write_safetensors(dir / "full.safetensors", {{"w", at::ones({16}, at::kFloat)}});
  std::string bytes = read_file(dir / "full.safetensors");
  bytes.resize(bytes.size() - 10);
  write_file(dir / "cut.safetensors", bytes);
  EXPECT_CSKV_ERROR(SafetensorsFile::open(dir / "cut.safetensors"),
                    (dir / "cut.safetensors") +
                        ": tensor 'w': data_offsets [0, 64] end beyond the data section (54 "
                        "bytes)");

  auto f = SafetensorsFile::open(dir / "full.safetensors");
  EXPECT_CSKV_ERROR(f->get("v"),
                    (dir / "full.safetensors") + ": no tensor named 'v' (the file has 1 tensors)");
}

TEST(SafetensorsWriterErrors, RejectsBadTensors) {
  TempDir dir;
  const std::string path = dir / "w.safetensors";
  EXPECT_CSKV_ERROR(write_safetensors(path, {{"ids", at::zeros({2}, at::kLong)}}),
                    path +
                        ": tensor 'ids' has dtype Long, expected one of float32, float16, "
                        "bfloat16, uint8");
  EXPECT_CSKV_ERROR(
      write_safetensors(path, {{"m", at::empty({2}, at::TensorOptions().device(at::kMeta))}}),
      path + ": tensor 'm' is on meta, expected a CPU tensor");
  EXPECT_CSKV_ERROR(write_safetensors(path, {{"a", at::zeros({1})}, {"a", at::zeros({1})}}),
                    path + ": tensor 'a' is given more than once");
  EXPECT_CSKV_ERROR(write_safetensors(path, {{"__metadata__", at::zeros({1})}}),
                    path + ": '__metadata__' is reserved and cannot name a tensor");
  EXPECT_CSKV_ERROR(write_safetensors(path, {{"u", at::Tensor()}}),
                    path + ": tensor 'u' is undefined");
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "no temporary file left behind";
  EXPECT_CSKV_ERROR(from_scalar_type(at::kInt),
                    "unsupported dtype Int for safetensors (supported: float32, float16, "
                    "bfloat16, uint8)");
}

// ---------------------------------------------------------------------------------------------
// Model directories

TEST(SafetensorsModelErrors, MissingFilesAndTensors) {
  TempDir dir;
  EXPECT_CSKV_ERROR(
      SafetensorsModel::open_dir(dir.path()),
      dir.path() + ": found neither model.safetensors.index.json nor model.safetensors");

  write_safetensors_sharded(dir.path(), {{"a", at::zeros({100})}, {"b", at::zeros({100})}}, {},
                            400);
  const std::string index = dir / "model.safetensors.index.json";
  const std::string good_index = read_file(index);

  // A tensor the index does not know.
  EXPECT_CSKV_ERROR(SafetensorsModel::open_dir(dir.path()).get("c"),
                    dir.path() + ": the model has no tensor named 'c' (2 tensors)");

  // The index lists a tensor that its shard lacks.
  auto j = nlohmann::json::parse(good_index);
  j["weight_map"]["ghost"] = "model-00002-of-00002.safetensors";
  write_file(index, j.dump());
  const auto model = SafetensorsModel::open_dir(dir.path());
  EXPECT_EQ(model.names(), (std::vector<std::string>{"a", "b", "ghost"}));
  EXPECT_CSKV_ERROR(model.get("ghost"),
                    (dir / "model-00002-of-00002.safetensors") +
                        ": no tensor named 'ghost', but model.safetensors.index.json lists it in "
                        "this file");

  // The index names a shard that does not exist.
  j["weight_map"]["ghost"] = "model-00003-of-00003.safetensors";
  write_file(index, j.dump());
  EXPECT_CSKV_ERROR(SafetensorsModel::open_dir(dir.path()),
                    index +
                        ": weight_map names shard 'model-00003-of-00003.safetensors' (for "
                        "tensor 'ghost') but " +
                        (dir / "model-00003-of-00003.safetensors") + " does not exist");

  write_file(index, "{\"weight_map\": [");
  EXPECT_CSKV_ERROR(SafetensorsModel::open_dir(dir.path()), index + ": not valid JSON");
  write_file(index, R"({"metadata": {}})");
  EXPECT_CSKV_ERROR(SafetensorsModel::open_dir(dir.path()),
                    index +
                        ": expected an object with a 'weight_map' object (tensor name -> "
                        "shard file)");
  write_file(index, R"({"weight_map": {"a": 3}})");
  EXPECT_CSKV_ERROR(SafetensorsModel::open_dir(dir.path()),
                    index + ": weight_map['a'] must be a file name, found 3");
}

TEST(SafetensorsModelTest, ShardsOpenLazily) {
  TempDir dir;
  write_safetensors_sharded(dir.path(), {{"a", at::zeros({100})}, {"b", at::ones({100})}}, {}, 400);
  const auto model = SafetensorsModel::open_dir(dir.path());
  // Corrupt the shard of 'b' after opening: reading 'a' still works, 'b' fails on first use.
  write_file(dir / "model-00002-of-00002.safetensors", "xyz");
  EXPECT_EQ(model.get("a").sum().item<float>(), 0.0f);
  EXPECT_CSKV_ERROR(model.get("b"),
                    (dir / "model-00002-of-00002.safetensors") +
                        ": file is 3 bytes, too small for a safetensors file (expected at least 8 "
                        "bytes: the header length)");
}

// ---------------------------------------------------------------------------------------------
// Interoperability with an independent numpy reader/writer

std::string script() { return std::string(CSKV_SOURCE_DIR) + "/tests/python/check_safetensors.py"; }

TEST(SafetensorsPythonInterop, NumpyReadsOurFile) {
  TempDir dir;
  const std::string path = dir / "ours.safetensors";
  NamedTensors tensors = {
      {"model.layers.0.self_attn.k_proj.weight", sample(at::kHalf, {6, 4}, 11)},
      {"model.layers.0.self_attn.v_proj.weight", sample(at::kBFloat16, {6, 4}, 12)},
      {"model.norm.weight", sample(at::kFloat, {5}, 13)},
      {"scalar", at::full({}, 0.1, at::kFloat)},
      {"transposed", sample(at::kFloat, {3, 2}, 14).t()},
  };
  nlohmann::json expected;
  expected["metadata"] = {{"format", "pt"}, {"writer", "cskv"}};
  for (auto& [name, t] : tensors) {
    t = at::nan_to_num(t, 0.0, 1e4, -1e4);  // JSON has no inf/nan
    const at::Tensor d = t.to(at::kDouble).contiguous().view({-1});
    expected["tensors"][name] = {
        {"dtype", dtype_name(from_scalar_type(t.scalar_type()))},
        {"shape", std::vector<int64_t>(t.sizes().begin(), t.sizes().end())},
        {"values", std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel())}};
  }
  write_safetensors(path, tensors, {{"format", "pt"}, {"writer", "cskv"}});
  write_file(dir / "expected.json", expected.dump());
  const auto r = cskv::test::run_command(
      {cskv::test::python3(), script(), "check", path, dir / "expected.json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "OK 5 tensors\n");
}

TEST(SafetensorsPythonInterop, WeReadNumpyFile) {
  TempDir dir;
  const std::string path = dir / "numpy.safetensors";
  const auto r = cskv::test::run_command(
      {cskv::test::python3(), script(), "write", path, dir / "expected.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto expected = nlohmann::json::parse(read_file(dir / "expected.json"));
  auto f = SafetensorsFile::open(path);
  EXPECT_NE(f->header().data_offset % 4, 0u) << "the python file is meant to be unaligned";
  EXPECT_EQ(f->header().metadata, expected["metadata"].get<Metadata>());
  ASSERT_EQ(f->header().tensors.size(), expected["tensors"].size());
  for (const auto& [name, want] : expected["tensors"].items()) {
    SCOPED_TRACE(name);
    const at::Tensor t = f->get(name);
    EXPECT_STREQ(dtype_name(from_scalar_type(t.scalar_type())),
                 want["dtype"].get<std::string>().c_str());
    EXPECT_EQ(std::vector<int64_t>(t.sizes().begin(), t.sizes().end()),
              want["shape"].get<std::vector<int64_t>>());
    const at::Tensor d = t.to(at::kDouble).contiguous().view({-1});
    EXPECT_EQ(std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel()),
              want["values"].get<std::vector<double>>());
  }
}

}  // namespace
}  // namespace cskv::model
