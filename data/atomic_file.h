// Crash-safe small-file writes: the content goes to "<path>.tmp", is fsynced, renamed over path
// and the directory entry fsynced, so a reader sees the old file or the new one, never a torn one.
#pragma once

#include <string>

namespace cskv::data {

// Throws cskv::Error naming the temp file and the system's message on any failure.
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace cskv::data
