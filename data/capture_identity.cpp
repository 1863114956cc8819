// Capture identity from capture.json (the settings that decide the stored activations).
#include "data/capture_identity.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs.h"
#include "common/json_bounds.h"
#include "data/checksum.h"

namespace cskv::data {

std::string capture_json_path(const std::string& acts_dir) { return acts_dir + "/capture.json"; }

std::string capture_identity(const std::string& capture_json_text, const std::string& path) {
  check_json_bounds(capture_json_text, path);
  nlohmann::json doc =
      nlohmann::json::parse(capture_json_text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(doc.is_object(), path << ": not a JSON object (expected the capture settings)");
  // The same capture made on another number of ranks or with another --batch stores bitwise the
  // same activations and statistics, so these keys are not part of its identity.
  doc.erase("world_size");
  doc.erase("batch");
  const std::string text = doc.dump();
  return format_checksum(xxh64(text.data(), text.size()));
}

EarlierCapture compare_capture_settings(const std::string& earlier_text,
                                        const std::string& current_text, const std::string& path) {
  check_json_bounds(earlier_text, path);
  const nlohmann::json earlier = nlohmann::json::parse(earlier_text, nullptr, false);
  CSKV_CHECK_INPUT(earlier.is_object(),
                   path << ": not a JSON object (expected the settings of the "
                           "capture in this directory; --overwrite starts over)");
  const nlohmann::json current = nlohmann::json::parse(current_text, nullptr, false);
  CSKV_CHECK(current.is_object(), "the current capture settings are not a JSON object");
  EarlierCapture out;
  out.differences =
      config_differences(earlier, current, ConfigKeys::kTopLevel, ConfigEquality::kJsonText);
  const auto it = earlier.find("world_size");
  if (it != earlier.end() && it->is_number_integer() && it->get<int64_t>() >= 1 &&
      it->get<int64_t>() <= (1 << 24)) {
    out.world_size = static_cast<int>(it->get<int64_t>());
  }
  return out;
}

std::optional<std::string> read_capture_identity(const std::string& acts_dir) {
  const std::string path = capture_json_path(acts_dir);
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "capture");
  if (!text) return std::nullopt;
  return capture_identity(*text, path);
}

}  // namespace cskv::data
