// Deprecated forwarder to common/fs (see data/atomic_file.h); the fsync/rename logic lives only in
// common/fs.cpp.
#include "data/atomic_file.h"

#include "common/fs.h"

namespace cskv::data {

void write_file_atomic(const std::string& path, const std::string& content) {
  files::write_file_atomic(path, content);
}

}  // namespace cskv::data
