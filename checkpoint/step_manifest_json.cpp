// Step-manifest JSON and rank-file entries: parsing with every field type-checked.
#include "checkpoint/step_manifest_json.h"

#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json_bounds.h"
#include "common/json_integer.h"

namespace cskv::checkpoint {

std::string rank_file_name(int rank) { return "rank-" + std::to_string(rank) + ".safetensors"; }

void to_json(nlohmann::json& j, const RankFileEntry& e) {
  j = {{"rank", e.rank}, {"file", e.file}, {"bytes", e.bytes}, {"checksum", e.checksum}};
}

namespace {
template <typename T>
void integer_to(const nlohmann::json& j, const char* key, T& out) {
  if (!json_integer_fits<T>(j.at(key))) {
    throw nlohmann::json::type_error::create(
        302, std::string(key) + " must be an integer that fits, found " + j.at(key).dump(), &j);
  }
  out = j.at(key).get<T>();
}
}  // namespace

void from_json(const nlohmann::json& j, RankFileEntry& e) {
  integer_to(j, "rank", e.rank);
  j.at("file").get_to(e.file);
  integer_to(j, "bytes", e.bytes);
  j.at("checksum").get_to(e.checksum);
}

namespace {
template <typename T>
T manifest_field(const nlohmann::json& obj, const char* key, const std::string& path,
                 const std::string& where) {
  CSKV_CHECK_INPUT(obj.is_object() && obj.contains(key),
                   path << ": " << where << " has no '" << key << "'");
  // A float where an integer belongs is the wrong type (converting it may overflow).
  if constexpr (std::is_integral_v<T>) {
    CSKV_CHECK_INPUT(json_integer_fits<T>(obj.at(key)),
                     path << ": " << where << " field '" << key
                          << "' has the wrong type: " << obj.at(key).dump());
  }
  try {
    return obj.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    CSKV_FAIL_INPUT(path << ": " << where << " field '" << key
                         << "' has the wrong type: " << obj.at(key).dump());
  }
}
}  // namespace

StepManifest parse_step_manifest(const std::string& text, const std::string& path, int64_t step) {
  check_json_bounds(text, path);
  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!doc.is_discarded() && doc.is_object(), path << ": not a valid JSON object");
  const auto version = manifest_field<int64_t>(doc, "format_version", path, "the manifest");
  CSKV_CHECK_INPUT(version == kStepManifestFormatVersion, path << ": format_version is " << version
                                                               << ", this build reads version "
                                                               << kStepManifestFormatVersion);
  StepManifest m;
  m.step = manifest_field<int64_t>(doc, "step", path, "the manifest");
  CSKV_CHECK_INPUT(m.step == step, path << ": records step " << m.step << ", expected " << step);
  m.world_size = manifest_field<int>(doc, "world_size", path, "the manifest");
  CSKV_CHECK_INPUT(doc.contains("files") && doc["files"].is_array(),
                   path << ": missing array 'files'");
  CSKV_CHECK_INPUT(
      m.world_size >= 1 && static_cast<int>(doc["files"].size()) == m.world_size,
      path << ": lists " << doc["files"].size() << " rank file(s) for world size " << m.world_size);
  for (const auto& f : doc["files"]) {
    const std::string where = "files entry " + std::to_string(m.files.size());
    RankFileEntry e;
    e.rank = manifest_field<int>(f, "rank", path, where);
    e.file = manifest_field<std::string>(f, "file", path, where);
    e.bytes = manifest_field<uint64_t>(f, "bytes", path, where);
    e.checksum = manifest_field<std::string>(f, "checksum", path, where);
    CSKV_CHECK_INPUT(e.rank == static_cast<int>(m.files.size()) && e.file == rank_file_name(e.rank),
                     path << ": " << where << " is rank " << e.rank << " (" << e.file
                          << "), expected rank " << m.files.size() << " ("
                          << rank_file_name(static_cast<int>(m.files.size())) << ")");
    m.files.push_back(std::move(e));
  }
  CSKV_CHECK_INPUT(doc.contains("config"), path << ": missing 'config'");
  m.config_json = doc["config"].dump();
  return m;
}

}  // namespace cskv::checkpoint
