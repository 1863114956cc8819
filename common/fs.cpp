// common/fs: the one implementation of atomic file replacement (temp → fsync → rename → fsync of
// the directory), the fsync helpers and the bounded, regular-file-only whole-file read.
#include "common/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace cskv::files {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// fsync + close of a temp file written through fd; throws naming tmp.
void sync_and_close(int fd, const std::string& tmp) {
  CSKV_CHECK(::fsync(fd) == 0, tmp << ": fsync failed: " << errno_text(errno));
  CSKV_CHECK(::close(fd) == 0, tmp << ": close failed: " << errno_text(errno));
}

// Renames tmp over path (removing tmp if that fails) and fsyncs the directory.
void rename_over(const std::string& tmp, const std::string& path) {
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = errno_text(errno);
    ::unlink(tmp.c_str());
    CSKV_FAIL(tmp << ": cannot rename to " << path << ": " << err);
  }
  fsync_directory(parent_directory(path));
}

// Runs write(fd) and sync_and_close on a freshly created temp file; on any failure closes fd,
// removes tmp and rethrows. Then renames tmp over path and fsyncs the directory.
template <typename Write>
void finish_temp_file(int fd, const std::string& tmp, const std::string& path, Write&& write) {
  try {
    write();
    sync_and_close(fd, tmp);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  rename_over(tmp, path);
}

// What a stat mode is, for "expected a regular file, found ..." messages.
const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

// Checks that st describes a regular file of at most max_bytes; throws an input error otherwise.
void check_readable(const std::string& path, const struct stat& st, std::uint64_t max_bytes,
                    const char* what) {
  CSKV_CHECK_INPUT(S_ISREG(st.st_mode),
                   path << ": expected a regular " << what << ", found " << file_kind(st.st_mode));
  const auto size = static_cast<std::uint64_t>(st.st_size);
  CSKV_CHECK_INPUT(size <= max_bytes, path << ": " << what << " is " << size
                                           << " bytes, larger than the limit of " << max_bytes
                                           << " bytes");
}

// Reads the regular file at path (already stat-checked) through a non-blocking descriptor.
std::string read_checked(const std::string& path, std::uint64_t max_bytes, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  CSKV_CHECK_INPUT(fd >= 0, path << ": cannot open " << what << ": " << errno_text(errno));
  std::string out;
  try {
    struct stat st {};
    CSKV_CHECK_INPUT(::fstat(fd, &st) == 0, path << ": cannot stat: " << errno_text(errno));
    check_readable(path, st, max_bytes, what);  // the path may have changed since stat()
    out.resize(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    char extra = 0;
    while (true) {
      char* dst = done < out.size() ? out.data() + done : &extra;
      const std::size_t want = done < out.size() ? out.size() - done : 1;
      const ssize_t n = ::read(fd, dst, want);
      if (n < 0 && errno == EINTR) continue;
      CSKV_CHECK_INPUT(n >= 0, path << ": read failed: " << errno_text(errno));
      if (n == 0) break;
      CSKV_CHECK_INPUT(done < out.size(), path << ": " << what << " grew while being read");
      done += static_cast<std::size_t>(n);
    }
    out.resize(done);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return out;
}

}  // namespace

void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CSKV_CHECK(fd >= 0, path << ": cannot open for fsync: " << errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  CSKV_CHECK(rc == 0, path << ": fsync failed: " << errno_text(err));
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  CSKV_CHECK(fd >= 0, dir << ": cannot open directory for fsync: " << errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  CSKV_CHECK(rc == 0, dir << ": directory fsync failed: " << errno_text(err));
}

std::string parent_directory(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

void commit_temp_file(const std::string& tmp, const std::string& path) {
  fsync_file(tmp);
  rename_over(tmp, path);
}

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<std::size_t>(size, std::size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    CSKV_CHECK(n > 0, path << ": write failed: " << errno_text(errno));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  CSKV_CHECK(fd >= 0, tmp << ": cannot create: " << errno_text(errno));
  finish_temp_file(fd, tmp, path, [&] { write_all(fd, bytes.data(), bytes.size(), tmp); });
}

void write_file_atomic_with(const std::string& path,
                            const std::function<void(int fd, const std::string& tmp)>& fill) {
  const std::filesystem::path target(path);
  const std::string dir = parent_directory(path);
  std::string tmp =
      (std::filesystem::path(dir) / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  const int fd = ::mkstemp(tmp.data());
  CSKV_CHECK(fd >= 0,
             path << ": cannot create a temporary file in " << dir << ": " << errno_text(errno));
  finish_temp_file(fd, tmp, path, [&] {
    fill(fd, tmp);
    CSKV_CHECK(::fchmod(fd, 0644) == 0, tmp << ": fchmod failed: " << errno_text(errno));
  });
}

std::optional<std::string> read_whole_file_if_exists(const std::string& path,
                                                     std::uint64_t max_bytes, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return std::nullopt;
    CSKV_FAIL_INPUT(path << ": cannot open " << what << ": " << errno_text(err));
  }
  check_readable(path, st, max_bytes, what);
  return read_checked(path, max_bytes, what);
}

std::string read_whole_file(const std::string& path, std::uint64_t max_bytes, const char* what) {
  auto text = read_whole_file_if_exists(path, max_bytes, what);
  CSKV_CHECK_INPUT(text.has_value(),
                   path << ": cannot open " << what << ": " << errno_text(ENOENT));
  return std::move(*text);
}

}  // namespace cskv::files
