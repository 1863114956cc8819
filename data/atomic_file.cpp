// write_file_atomic: temp file → fsync → rename → fsync(directory), for manifests, configs,
// metrics and exports (the safetensors and HDF5 writers follow the same sequence themselves).
#include "data/atomic_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "data/activation_shard.h"

namespace cskv::data {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CSKV_CHECK(out.good(), tmp << ": cannot create: " << std::strerror(errno));
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    CSKV_CHECK(out.good(), tmp << ": write failed: " << std::strerror(errno));
  }
  fsync_file(tmp);
  CSKV_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
             tmp << ": cannot rename to " << path << ": " << std::strerror(errno));
  const auto parent = std::filesystem::path(path).parent_path().string();
  fsync_directory(parent.empty() ? "." : parent);
}

}  // namespace cskv::data
