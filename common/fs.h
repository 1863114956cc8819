// cskv::files: file durability (atomic replace: temp, fsync, rename, fsync of the directory;
// fsync helpers) and a bounded whole-file read that refuses directories, FIFOs and devices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace cskv::files {

// Default bound for read_whole_file: configs, manifests, JSON headers and small tensor files.
constexpr std::uint64_t kDefaultMaxReadBytes = std::uint64_t{256} << 20;  // 256 MiB

// fsync(path); throws cskv::Error "<path>: cannot open for fsync: ..." / "<path>: fsync failed:
// ...".
void fsync_file(const std::string& path);
// fsync of a directory's entries (after a rename); "" means ".".
void fsync_directory(const std::string& dir);
// The directory holding path ("." when path has no directory part).
std::string parent_directory(const std::string& path);

// For writers that produce a complete temp file themselves (HDF5): fsyncs tmp, renames it over
// path (removing tmp if the rename fails) and fsyncs the directory.
void commit_temp_file(const std::string& tmp, const std::string& path);

// Replaces path with bytes: writes "<path>.tmp", fsyncs it, renames it over path and fsyncs the
// directory, so a reader sees the old file or the new one, never a torn one. Throws cskv::Error
// naming the temp file and the system's message on any failure.
void write_file_atomic(const std::string& path, const std::string& bytes);

// The same sequence for writers that stream into an open file descriptor: fill(fd, tmp_path)
// writes the content (and throws on failure); the temp file is a unique "<path>.tmp.XXXXXX",
// removed again if fill or any later step fails.
void write_file_atomic_with(const std::string& path,
                            const std::function<void(int fd, const std::string& tmp)>& fill);

// Reads a whole regular file. Refuses, with one line naming the path, a missing file, anything
// that is not a regular file (checked with stat before opening, so a FIFO never blocks) and a
// file larger than max_bytes. `what` names the file's role in messages ("config", "manifest").
std::string read_whole_file(const std::string& path, std::uint64_t max_bytes = kDefaultMaxReadBytes,
                            const char* what = "file");
// As read_whole_file, but returns nullopt when nothing exists at path, so a caller can say in its
// own words what a missing file means ("capture has not completed").
std::optional<std::string> read_whole_file_if_exists(const std::string& path,
                                                     std::uint64_t max_bytes = kDefaultMaxReadBytes,
                                                     const char* what = "file");

// Writes all bytes to fd, retrying short writes and EINTR; "<path>: write failed: ..." otherwise.
void write_all(int fd, const void* data, std::size_t size, const std::string& path);

}  // namespace cskv::files
