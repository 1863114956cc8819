// DirectoryLock: flock(2) on <dir>/.cskv.lock. The holder writes "pid host" into the file and
// unlinks it when done; a taker checks that the file it locked is still the one at the path (the
// holder may have unlinked it in between), so at most one process ever holds a directory.
#include "common/output_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include "common/error.h"
#include "common/fs.h"

namespace cskv::files {

namespace {

// The holder's "pid host" text (trimmed), or "" when it has not written it yet.
std::string read_holder(int fd) {
  char buf[512];
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string text(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

std::string describe_holder(const std::string& text, const std::string& path) {
  const auto space = text.find(' ');
  if (text.empty() || space == std::string::npos) return "lock file " + path;
  return "pid " + text.substr(0, space) + " on host " + text.substr(space + 1);
}

// Whether fd is still the file at path (not unlinked or replaced by its last holder).
bool still_at_path(int fd, const std::string& path) {
  struct stat by_fd {};
  struct stat by_path {};
  if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_path) != 0) return false;
  return by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

}  // namespace

std::string lock_holder_text() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  return std::to_string(::getpid()) + " " + host;
}

DirectoryLock DirectoryLock::acquire(const std::string& dir, const std::string& flag) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  CSKV_CHECK_INPUT(!ec, dir << ": cannot create the directory: " << ec.message());
  const std::string path = dir + "/" + kLockFileName;
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    CSKV_CHECK_INPUT(fd >= 0, path << ": cannot open the lock file: " << std::strerror(errno));
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = read_holder(fd);
      ::close(fd);
      CSKV_CHECK_INPUT(err == EWOULDBLOCK, path << ": cannot lock: " << std::strerror(err));
      CSKV_FAIL_INPUT(dir << ": in use by another cskv run (" << describe_holder(holder, path)
                          << "); wait for it to finish, or use another " << flag);
    }
    if (!still_at_path(fd, path)) {  // its holder unlinked it meanwhile: take the new one
      ::close(fd);
      continue;
    }
    const std::string text = lock_holder_text() + "\n";
    if (::ftruncate(fd, 0) != 0) {
      const int err = errno;
      ::close(fd);
      CSKV_FAIL(path << ": cannot write the lock file: " << std::strerror(err));
    }
    try {
      write_all(fd, text.data(), text.size(), path);
    } catch (...) {
      ::close(fd);
      throw;
    }
    return DirectoryLock(fd, path);
  }
  CSKV_FAIL(path << ": the lock file keeps being replaced; is another cskv run starting?");
}

DirectoryLock::DirectoryLock(DirectoryLock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

DirectoryLock::~DirectoryLock() { release(); }

void DirectoryLock::release() noexcept {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // still holding the lock: nobody else can be using this file
  ::close(fd_);
  fd_ = -1;
}

void refuse_foreign_file(const std::string& path, const std::string& why, const std::string& flag) {
  ::cskv::detail::throw_error(ErrorKind::kInput, __FILE__, __LINE__, "foreign output file",
                              path + ": exists and is not known to be an output of cskv (" + why +
                                  "); move it away, use another " + flag +
                                  ", or pass --overwrite to replace it");
}

}  // namespace cskv::files
