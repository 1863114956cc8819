// Output locations: an exclusive lock on an output directory for a run's lifetime (flock(2) on
// <dir>/.cskv.lock, naming the holder as "pid host"), and the refusal of files cskv did not write.
#pragma once

#include <string>
#include <utility>

namespace cskv::files {

// The lock file's name inside the locked directory; it exists only while a run holds the lock
// (or after a run was killed: a lock file whose flock is free is simply retaken).
inline constexpr const char* kLockFileName = ".cskv.lock";

class DirectoryLock {
 public:
  // Creates dir if needed and locks it. When another process (or another open of the lock in
  // this one) holds it: input error "<dir>: in use by another cskv run (pid 123 on host node1);
  // wait for it to finish, or use another <flag>".
  static DirectoryLock acquire(const std::string& dir, const std::string& flag);

  DirectoryLock(DirectoryLock&& other) noexcept;
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  // Removes the lock file and releases the lock.
  ~DirectoryLock();

  const std::string& path() const { return path_; }

 private:
  DirectoryLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void release() noexcept;
  int fd_ = -1;
  std::string path_;
};

// "pid host" of this process, as a lock file records it.
std::string lock_holder_text();

// The refusal of an existing file in an output location that cskv did not write (it cannot
// recognise it as its own output): input error "<path>: exists and is not known to be an output
// of cskv (<why>); move it away, use another <flag>, or pass --overwrite to replace it".
[[noreturn]] void refuse_foreign_file(const std::string& path, const std::string& why,
                                      const std::string& flag);

}  // namespace cskv::files
