// Torch-free parsing and validation of a safetensors header (shared by the reader and the fuzzer).
// Every rejection is a cskv::Error (kInput) that starts with "<path>: " and says expected vs found.
#include "model/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "common/error.h"

namespace cskv::model {
namespace {

using json = nlohmann::json;

// A JSON value for an error message, cut short (in length and nesting depth, without recursing
// into deep input) so a hostile header can neither flood the message nor overflow the stack.
void brief_into(const json& v, int depth, std::string* out) {
  constexpr size_t kMax = 80;
  if (out->size() > kMax) return;
  if (v.is_primitive()) {
    *out += v.dump(-1, ' ', true, json::error_handler_t::replace);
  } else if (depth >= 4) {
    *out += v.is_array() ? "[...]" : "{...}";
  } else {
    *out += v.is_array() ? "[" : "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end() && out->size() <= kMax; ++it) {
      if (!first) *out += ",";
      first = false;
      if (v.is_object())
        *out += json(it.key()).dump(-1, ' ', true, json::error_handler_t::replace) + ":";
      brief_into(it.value(), depth + 1, out);
    }
    *out += v.is_array() ? "]" : "}";
  }
}

std::string brief(const json& v) {
  std::string s;
  brief_into(v, 0, &s);
  constexpr size_t kMax = 80;
  if (s.size() > kMax) s = s.substr(0, kMax) + "...";
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

bool parse_dtype(const std::string& s, StDType* out) {
  if (s == "F32") {
    *out = StDType::kF32;
  } else if (s == "F16") {
    *out = StDType::kF16;
  } else if (s == "BF16") {
    *out = StDType::kBF16;
  } else if (s == "U8") {
    *out = StDType::kU8;
  } else {
    return false;
  }
  return true;
}

// Parses the JSON text, rejecting duplicate top-level keys (nlohmann would keep the last one).
json parse_json(const char* begin, const char* end, const std::string& path) {
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, callback, /*allow_exceptions=*/true);
  } catch (const json::parse_error& e) {
    // nlohmann counts an unexpected end as one past the last byte; report a byte of the header.
    const auto size = static_cast<size_t>(end - begin);
    CSKV_FAIL_INPUT(path << ": header is not valid JSON (parse error near byte "
                         << std::min(e.byte, size) << " of " << size << ")");
  } catch (const json::exception& e) {
    CSKV_FAIL_INPUT(path << ": header is not valid JSON (" << e.what() << ")");
  }
  CSKV_CHECK_INPUT(duplicate.empty(),
                   path << ": header lists '" << duplicate << "' more than once");
  return j;
}

void parse_metadata(const json& v, const std::string& path, SafetensorsHeader* header) {
  CSKV_CHECK_INPUT(v.is_object(), path << ": __metadata__ must be an object of string to string, "
                                       << "found " << v.type_name());
  for (auto it = v.begin(); it != v.end(); ++it) {
    CSKV_CHECK_INPUT(it.value().is_string(),
                     path << ": __metadata__ must be an object of string to string, found "
                          << it.value().type_name() << " for key '" << it.key() << "'");
    header->metadata[it.key()] = it.value().get<std::string>();
  }
}

TensorEntry parse_entry(const std::string& name, const json& v, uint64_t data_size,
                        const std::string& path) {
  const std::string where = path + ": tensor '" + name + "'";
  CSKV_CHECK_INPUT(v.is_object(), where << ": expected an object with dtype, shape and "
                                        << "data_offsets, found " << v.type_name());
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    CSKV_CHECK_INPUT(v.contains(key), where << ": missing '" << key << "'");
  }
  TensorEntry e;
  e.name = name;

  const json& dtype = v["dtype"];
  CSKV_CHECK_INPUT(dtype.is_string(),
                   where << ": 'dtype' must be a string, found " << dtype.type_name());
  CSKV_CHECK_INPUT(parse_dtype(dtype.get<std::string>(), &e.dtype),
                   where << ": unsupported dtype '" << dtype.get<std::string>()
                         << "' (supported: F32, F16, BF16, U8)");

  const json& shape = v["shape"];
  CSKV_CHECK_INPUT(shape.is_array(), where << ": 'shape' must be an array of non-negative "
                                           << "integers, found " << brief(shape));
  for (const json& d : shape) {
    CSKV_CHECK_INPUT(d.is_number_integer(), where << ": 'shape' must be an array of non-negative "
                                                  << "integers, found " << brief(shape));
    if (d.is_number_unsigned()) {
      const uint64_t u = d.get<uint64_t>();
      CSKV_CHECK_INPUT(
          u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
          where << ": dimension " << u << " in shape " << brief(shape) << " is too large");
      e.shape.push_back(static_cast<int64_t>(u));
    } else {
      const int64_t s = d.get<int64_t>();
      CSKV_CHECK_INPUT(s >= 0,
                       where << ": negative dimension " << s << " in shape " << brief(shape));
      e.shape.push_back(s);
    }
  }

  // Byte size = numel * dtype size, guarded against 64-bit overflow (a zero dim makes it 0).
  const bool empty = std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end();
  uint64_t nbytes = dtype_size(e.dtype);
  if (empty) {
    nbytes = 0;
  } else {
    for (int64_t d : e.shape) {
      const auto ud = static_cast<uint64_t>(d);
      CSKV_CHECK_INPUT(nbytes <= std::numeric_limits<uint64_t>::max() / ud,
                       where << ": shape " << shape_str(e.shape) << " of " << dtype_name(e.dtype)
                             << " is too large (byte size overflows 64 bits)");
      nbytes *= ud;
    }
  }

  const json& offsets = v["data_offsets"];
  const bool offsets_ok = offsets.is_array() && offsets.size() == 2 &&
                          offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned();
  CSKV_CHECK_INPUT(offsets_ok, where << ": 'data_offsets' must be an array of two non-negative "
                                     << "integers, found " << brief(offsets));
  e.begin = offsets[0].get<uint64_t>();
  e.end = offsets[1].get<uint64_t>();
  const std::string range = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  CSKV_CHECK_INPUT(e.begin <= e.end, where << ": data_offsets " << range << " have begin > end");
  CSKV_CHECK_INPUT(e.end <= data_size, where << ": data_offsets " << range
                                             << " end beyond the data section (" << data_size
                                             << " bytes)");
  CSKV_CHECK_INPUT(e.end - e.begin == nbytes, where << ": data_offsets " << range << " span "
                                                    << (e.end - e.begin) << " bytes, expected "
                                                    << nbytes << " (" << dtype_name(e.dtype) << " "
                                                    << shape_str(e.shape) << ")");
  return e;
}

}  // namespace

const char* dtype_name(StDType d) {
  switch (d) {
    case StDType::kF32:
      return "F32";
    case StDType::kF16:
      return "F16";
    case StDType::kBF16:
      return "BF16";
    case StDType::kU8:
      return "U8";
  }
  return "?";
}

size_t dtype_size(StDType d) {
  switch (d) {
    case StDType::kF32:
      return 4;
    case StDType::kF16:
    case StDType::kBF16:
      return 2;
    case StDType::kU8:
      return 1;
  }
  return 0;
}

uint64_t TensorEntry::numel() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* prefix, size_t prefix_size,
                                           uint64_t file_size, const std::string& path) {
  CSKV_CHECK_INPUT(file_size >= 8, path << ": file is " << file_size
                                        << " bytes, too small for a safetensors file (expected "
                                        << "at least 8 bytes: the header length)");
  CSKV_CHECK(prefix_size >= 8,
             path << ": parse_safetensors_header needs the first 8 bytes, got " << prefix_size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  CSKV_CHECK_INPUT(n <= kMaxHeaderBytes, path << ": header length " << n << " exceeds the limit of "
                                              << kMaxHeaderBytes << " bytes");
  CSKV_CHECK_INPUT(n <= file_size - 8, path << ": header length " << n << " exceeds the file ("
                                            << file_size << " bytes, so at most " << (file_size - 8)
                                            << " header bytes)");
  CSKV_CHECK(prefix_size >= 8 + n, path << ": parse_safetensors_header needs " << (8 + n)
                                        << " bytes of the file, got " << prefix_size);

  SafetensorsHeader header;
  header.header_size = n;
  header.data_offset = 8 + n;
  const uint64_t data_size = file_size - 8 - n;

  const char* text = reinterpret_cast<const char*>(prefix + 8);
  const json j = parse_json(text, text + n, path);
  CSKV_CHECK_INPUT(j.is_object(),
                   path << ": header must be a JSON object, found " << j.type_name());

  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      parse_metadata(it.value(), path, &header);
    } else {
      header.tensors.emplace(it.key(), parse_entry(it.key(), it.value(), data_size, path));
    }
  }

  // Overlaps: sort by (begin, end) and compare each range with the furthest end seen so far.
  std::vector<const TensorEntry*> by_offset;
  by_offset.reserve(header.tensors.size());
  for (const auto& kv : header.tensors) by_offset.push_back(&kv.second);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorEntry* furthest = nullptr;
  for (const TensorEntry* e : by_offset) {
    if (furthest) {
      CSKV_CHECK_INPUT(e->begin >= furthest->end, path << ": tensors '" << furthest->name << "' ["
                                                       << furthest->begin << ", " << furthest->end
                                                       << "] and '" << e->name << "' [" << e->begin
                                                       << ", " << e->end << "] overlap");
    }
    if (!furthest || e->end > furthest->end) furthest = e;
  }
  return header;
}

}  // namespace cskv::model
