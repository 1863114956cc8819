// Bounds on JSON text checked before a parser sees it: nesting depth, string length and total
// size, so a hostile file is refused with one line naming it instead of exhausting the stack or
// the memory of a recursive parser. For every JSON file a user can hand to cskv.
#pragma once

#include <cstdint>
#include <string>

namespace cskv {

struct JsonBounds {
  std::uint64_t max_bytes = std::uint64_t{64} << 20;  // the whole text
  std::uint64_t max_string_bytes = 1 << 20;           // one string (key or value), quotes excluded
  int max_depth = 64;                                 // nested arrays/objects
};

// Scans `text` (one pass, no allocation) and throws an input cskv::Error naming `path` when it
// exceeds a bound: "<path>: 70000000 bytes of JSON; at most 67108864 are read",
// "<path>: JSON nested deeper than 64 levels (at byte 64)",
// "<path>: a JSON string longer than 8192 bytes (at byte 12)". Says nothing about validity.
void check_json_bounds(const std::string& text, const std::string& path,
                       const JsonBounds& bounds = {});

}  // namespace cskv
