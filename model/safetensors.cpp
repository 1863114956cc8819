// Safetensors reader (lazy, copy-on-write mmap; single file or sharded with an index) and writer
// (temp file + fsync + rename, header padded to 8 bytes, optional sharding with index.json).
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"

namespace cskv::model {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string errno_str() { return std::strerror(errno); }

std::string dtype_list() { return "float32, float16, bfloat16, uint8"; }

// The checked contiguous CPU bytes of one tensor to write.
struct PreparedTensor {
  std::string name;
  StDType dtype;
  at::Tensor data;  // contiguous
  uint64_t nbytes;
};

std::vector<PreparedTensor> prepare(const NamedTensors& tensors, const std::string& path) {
  std::vector<PreparedTensor> out;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    CSKV_CHECK_INPUT(!name.empty(), path << ": a tensor has an empty name");
    CSKV_CHECK_INPUT(name != "__metadata__",
                     path << ": '__metadata__' is reserved and cannot name a tensor");
    CSKV_CHECK_INPUT(names.insert(name).second,
                     path << ": tensor '" << name << "' is given more than once");
    CSKV_CHECK_INPUT(t.defined(), path << ": tensor '" << name << "' is undefined");
    CSKV_CHECK_INPUT(t.device().is_cpu(), path << ": tensor '" << name << "' is on " << t.device()
                                               << ", expected a CPU tensor");
    const auto st = t.scalar_type();
    CSKV_CHECK_INPUT(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kByte,
                     path << ": tensor '" << name << "' has dtype " << st << ", expected one of "
                          << dtype_list());
    at::Tensor c = t.contiguous();
    out.push_back({name, from_scalar_type(st), c, static_cast<uint64_t>(c.nbytes())});
  }
  return out;
}

void write_prepared(const std::string& path, const std::vector<PreparedTensor>& tensors,
                    const Metadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = dtype_name(t.dtype);
    std::vector<int64_t> shape(t.data.sizes().begin(), t.data.sizes().end());
    e["shape"] = shape;
    e["data_offsets"] = {offset, offset + t.nbytes};
    header[t.name] = e;
    offset += t.nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // 8 + N is a multiple of 8
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));

  files::write_file_atomic_with(path, [&](int fd, const std::string& tmp) {
    files::write_all(fd, len, sizeof len, tmp);
    files::write_all(fd, text.data(), text.size(), tmp);
    for (const auto& t : tensors) files::write_all(fd, t.data.data_ptr(), t.nbytes, tmp);
  });
}

std::string shard_name(size_t k, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", k, n);
  return buf;
}

}  // namespace

at::ScalarType to_scalar_type(StDType d) {
  switch (d) {
    case StDType::kF32:
      return at::kFloat;
    case StDType::kF16:
      return at::kHalf;
    case StDType::kBF16:
      return at::kBFloat16;
    case StDType::kU8:
      return at::kByte;
  }
  CSKV_FAIL("unknown safetensors dtype " << static_cast<int>(d));
}

StDType from_scalar_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return StDType::kF32;
    case at::kHalf:
      return StDType::kF16;
    case at::kBFloat16:
      return StDType::kBF16;
    case at::kByte:
      return StDType::kU8;
    default:
      CSKV_FAIL_INPUT("unsupported dtype " << t << " for safetensors (supported: " << dtype_list()
                                           << ")");
  }
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  // O_NONBLOCK: opening a FIFO for reading must not wait for a writer (fstat refuses it next).
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  CSKV_CHECK_INPUT(f->fd_ >= 0, path << ": cannot open: " << errno_str());
  struct stat st {};
  CSKV_CHECK_INPUT(::fstat(f->fd_, &st) == 0, path << ": cannot stat: " << errno_str());
  CSKV_CHECK_INPUT(S_ISREG(st.st_mode), path << ": not a regular file");
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    // Too small to map meaningfully; the parser produces the error.
    uint8_t small[8] = {};
    parse_safetensors_header(small, sizeof small, size, path);
  }
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f->fd_, 0);
  CSKV_CHECK(map != MAP_FAILED, path << ": mmap of " << size << " bytes failed: " << errno_str());
  f->map_ = static_cast<uint8_t*>(map);
  f->map_size_ = size;
  // No read-ahead: a page fault in one tensor must not pull in its neighbours.
  ::madvise(f->map_, f->map_size_, MADV_RANDOM);
  f->header_ = parse_safetensors_header(f->map_, f->map_size_, size, path);
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
  if (fd_ >= 0) ::close(fd_);
}

bool SafetensorsFile::contains(const std::string& name) const {
  return header_.tensors.count(name) > 0;
}

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = header_.tensors.find(name);
  CSKV_CHECK_INPUT(it != header_.tensors.end(), path_ << ": no tensor named '" << name
                                                      << "' (the file has "
                                                      << header_.tensors.size() << " tensors)");
  return it->second;
}

at::Tensor SafetensorsFile::get(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const auto options = at::TensorOptions().dtype(to_scalar_type(e.dtype));
  const size_t nbytes = e.end - e.begin;
  if (nbytes == 0) return at::empty(e.shape, options);
  uint8_t* data = map_ + header_.data_offset + e.begin;

  // Ask the kernel to read exactly this tensor's pages in one go (the mapping is MADV_RANDOM).
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(data) + nbytes;
  ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_WILLNEED);

  if (reinterpret_cast<uintptr_t>(data) % dtype_size(e.dtype) == 0) {
    std::shared_ptr<const SafetensorsFile> keep_alive = shared_from_this();
    return at::from_blob(
        data, e.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  }
  at::Tensor t = at::empty(e.shape, options);
  std::memcpy(t.data_ptr(), data, nbytes);
  return t;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsModel

SafetensorsModel SafetensorsModel::open_dir(const std::string& model_dir) {
  SafetensorsModel m;
  m.dir_ = model_dir;
  const fs::path dir(model_dir);
  const fs::path index_path = dir / kIndexFile;
  const fs::path single_path = dir / kSingleFile;
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    const std::string text =
        files::read_whole_file(ip, files::kDefaultMaxReadBytes, "safetensors index");
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    CSKV_CHECK_INPUT(!j.is_discarded(), ip << ": not valid JSON");
    CSKV_CHECK_INPUT(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                     ip << ": expected an object with a 'weight_map' object (tensor name -> "
                        << "shard file)");
    std::set<std::string> checked;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      CSKV_CHECK_INPUT(
          it.value().is_string() && !it.value().get<std::string>().empty(),
          ip << ": weight_map['" << it.key() << "'] must be a file name, found "
             << (it.value().is_primitive() ? it.value().dump() : it.value().type_name()));
      const std::string file = it.value().get<std::string>();
      if (checked.insert(file).second) {
        CSKV_CHECK_INPUT(fs::is_regular_file(dir / file, ec),
                         ip << ": weight_map names shard '" << file << "' (for tensor '" << it.key()
                            << "') but " << (dir / file).string() << " does not exist");
      }
      m.weight_map_[it.key()] = file;
    }
  } else if (fs::exists(single_path, ec)) {
    auto f = SafetensorsFile::open(single_path.string());
    for (const auto& kv : f->header().tensors) m.weight_map_[kv.first] = kSingleFile;
    m.files_[kSingleFile] = std::move(f);
  } else {
    CSKV_FAIL_INPUT(model_dir << ": found neither " << kIndexFile << " nor " << kSingleFile);
  }
  return m;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  out.reserve(weight_map_.size());
  for (const auto& kv : weight_map_) out.push_back(kv.first);
  return out;
}

bool SafetensorsModel::contains(const std::string& name) const {
  return weight_map_.count(name) > 0;
}

std::string SafetensorsModel::file_of(const std::string& name) const {
  const auto it = weight_map_.find(name);
  CSKV_CHECK_INPUT(it != weight_map_.end(), dir_ << ": the model has no tensor named '" << name
                                                 << "' (" << weight_map_.size() << " tensors)");
  return (fs::path(dir_) / it->second).string();
}

std::shared_ptr<SafetensorsFile> SafetensorsModel::file(const std::string& file_name) const {
  std::lock_guard<std::mutex> lock(*files_mutex_);
  auto it = files_.find(file_name);
  if (it == files_.end()) {
    it = files_.emplace(file_name, SafetensorsFile::open((fs::path(dir_) / file_name).string()))
             .first;
  }
  return it->second;
}

const TensorEntry& SafetensorsModel::entry(const std::string& name) const {
  const std::string path = file_of(name);
  const auto f = file(weight_map_.at(name));
  CSKV_CHECK_INPUT(f->contains(name), path << ": no tensor named '" << name << "', but "
                                           << kIndexFile << " lists it in this file");
  return f->entry(name);
}

at::Tensor SafetensorsModel::get(const std::string& name) const {
  entry(name);  // validates that the shard holds it
  return file(weight_map_.at(name))->get(name);
}

// ---------------------------------------------------------------------------------------------
// Writers

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const Metadata& metadata) {
  write_prepared(path, prepare(tensors, path), metadata);
}

std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const NamedTensors& tensors,
                                                   const Metadata& metadata,
                                                   uint64_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  CSKV_CHECK(!ec, dir << ": cannot create the directory: " << ec.message());
  const std::vector<PreparedTensor> all = prepare(tensors, dir);

  // Greedy in the given order; a tensor larger than the limit gets its own shard.
  std::vector<std::vector<PreparedTensor>> shards;
  uint64_t current = 0;
  uint64_t total = 0;
  for (const auto& t : all) {
    if (shards.empty() || (!shards.back().empty() && current + t.nbytes > max_shard_bytes)) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += t.nbytes;
    total += t.nbytes;
  }
  if (shards.empty()) shards.emplace_back();  // no tensors: one empty file

  const fs::path d(dir);
  if (shards.size() == 1) {
    // A stale index would take precedence over the new single file when reading.
    fs::remove(d / kIndexFile, ec);
    write_prepared((d / kSingleFile).string(), shards[0], metadata);
    return {kSingleFile};
  }

  std::vector<std::string> written;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string name = shard_name(k + 1, shards.size());
    write_prepared((d / name).string(), shards[k], metadata);
    for (const auto& t : shards[k]) weight_map[t.name] = name;
    written.push_back(name);
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = weight_map;
  const std::string text = index.dump(2) + "\n";
  const std::string index_path = (d / kIndexFile).string();
  files::write_file_atomic_with(index_path, [&](int fd, const std::string& tmp) {
    files::write_all(fd, text.data(), text.size(), tmp);
  });
  written.push_back(kIndexFile);
  return written;
}

}  // namespace cskv::model
