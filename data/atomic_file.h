// Deprecated forwarder: cskv::data::write_file_atomic now lives in common/fs.h as
// cskv::fs::write_file_atomic (kept until every branch has switched; the integrator removes it).
#pragma once

#include <string>

namespace cskv::data {

// Forwards to cskv::fs::write_file_atomic (temp → fsync → rename → fsync of the directory).
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace cskv::data
