// Shard checksums: a blocked file reader over common/xxh64 (the XXH64 implementation).
#include "data/checksum.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/error.h"

namespace cskv::data {

uint64_t xxh64_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CSKV_CHECK_INPUT(fd >= 0, path << ": cannot open for checksum: " << std::strerror(errno));
#ifdef POSIX_FADV_SEQUENTIAL
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
  std::vector<unsigned char> buf(8u << 20);
  Xxh64 h;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      CSKV_FAIL_INPUT(path << ": read failed while computing checksum: " << std::strerror(err));
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return h.digest();
}

std::string format_checksum(uint64_t digest) { return format_xxh64(digest); }

}  // namespace cskv::data
