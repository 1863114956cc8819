// XXH64 (xxHash, 64-bit, seed 0) over byte buffers and whole files: the shard checksum that
// acts/manifest.json records ("xxh64:<16 hex digits>").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/xxh64.h"

namespace cskv::data {

// The XXH64 implementation lives in common/ (model/ fingerprints weights with it too).
using ::cskv::Xxh64;
using ::cskv::xxh64;

// Reads the file in large blocks; throws an input error naming the file when it cannot be read.
uint64_t xxh64_file(const std::string& path);

// "xxh64:0123456789abcdef"
std::string format_checksum(uint64_t digest);

}  // namespace cskv::data
