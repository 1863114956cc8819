// Step manifests (atomic JSON), the complete-step search with fallback and warnings, loading the
// union of a step's rank files, and pruning of old steps.
#include "checkpoint/step_manifest.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/fs.h"
#include "common/log.h"
#include "data/checksum.h"

namespace cskv::checkpoint {

namespace fs = std::filesystem;
using trainer::JobState;

std::string step_manifest_path(const std::string& ckpt_dir, int64_t step) {
  return step_dir(ckpt_dir, step) + "/manifest.json";
}

void write_step_manifest(const std::string& ckpt_dir, int64_t step, int world_size,
                         const std::vector<RankFileEntry>& files,
                         const std::string& resolved_config_json) {
  const std::string path = step_manifest_path(ckpt_dir, step);
  CSKV_CHECK_INPUT(world_size >= 1, path << ": world size must be >= 1, found " << world_size);
  CSKV_CHECK_INPUT(
      static_cast<int>(files.size()) == world_size,
      path << ": " << files.size() << " rank file(s) given for world size " << world_size);
  std::vector<RankFileEntry> sorted = files;
  std::sort(sorted.begin(), sorted.end(),
            [](const RankFileEntry& a, const RankFileEntry& b) { return a.rank < b.rank; });
  for (int r = 0; r < world_size; ++r) {
    CSKV_CHECK_INPUT(sorted[r].rank == r && sorted[r].file == rank_file_name(r),
                     path << ": expected one entry per rank 0.." << world_size - 1 << "; entry "
                          << r << " is rank " << sorted[r].rank << " (" << sorted[r].file << ")");
  }
  const nlohmann::json config =
      nlohmann::json::parse(resolved_config_json, nullptr, /*allow_exceptions=*/false);
  CSKV_CHECK_INPUT(!config.is_discarded(),
                   path << ": the resolved config is not valid JSON: " << resolved_config_json);
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& e : sorted) {
    list.push_back(
        {{"rank", e.rank}, {"file", e.file}, {"bytes", e.bytes}, {"checksum", e.checksum}});
  }
  nlohmann::ordered_json doc;
  doc["format_version"] = kStepManifestFormatVersion;
  doc["step"] = step;
  doc["world_size"] = world_size;
  doc["files"] = list;
  doc["config"] = config;
  files::write_file_atomic(path, doc.dump(2) + "\n");
}

StepManifest read_step_manifest(const std::string& ckpt_dir, int64_t step) {
  const std::string path = step_manifest_path(ckpt_dir, step);
  const auto text = files::read_whole_file_if_exists(path, files::kDefaultMaxReadBytes, "manifest");
  CSKV_CHECK_INPUT(text, step_dir(ckpt_dir, step)
                             << ": no manifest.json (the save did not complete)");
  return parse_step_manifest(*text, path, step);
}

std::vector<int64_t> list_steps(const std::string& ckpt_dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::is_directory(ckpt_dir, ec)) return steps;
  for (const auto& entry : fs::directory_iterator(ckpt_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= 5 || name.compare(0, 5, "step-") != 0) continue;
    const std::string digits = name.substr(5);
    if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    if (!entry.is_directory(ec)) continue;
    steps.push_back(std::stoll(digits));
  }
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
  return steps;
}

std::optional<std::string> check_step(const std::string& ckpt_dir, int64_t step,
                                      bool verify_checksums) {
  StepManifest m;
  try {
    m = read_step_manifest(ckpt_dir, step);
  } catch (const Error& e) {
    return e.message();
  }
  for (const auto& e : m.files) {
    const std::string path = step_dir(ckpt_dir, step) + "/" + e.file;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return path + ": missing (the manifest lists it)";
    const uint64_t bytes = fs::file_size(path, ec);
    if (ec) return path + ": cannot read its size: " + ec.message();
    if (bytes != e.bytes) {
      return path + ": " + std::to_string(bytes) + " bytes, the manifest records " +
             std::to_string(e.bytes) + " (truncated or rewritten)";
    }
    if (verify_checksums) {
      std::string sum;
      try {
        sum = data::format_checksum(data::xxh64_file(path));
      } catch (const Error& err) {
        return err.message();
      }
      if (sum != e.checksum) {
        return path + ": checksum " + sum + " does not match the manifest (" + e.checksum + ")";
      }
    }
  }
  return std::nullopt;
}

StepSearch search_latest_complete_step(const std::string& ckpt_dir) {
  StepSearch out;
  const auto steps = list_steps(ckpt_dir);
  auto log = log::get("checkpoint");
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const auto problem = check_step(ckpt_dir, *it);
    if (!problem) {
      out.step = *it;
      return out;
    }
    log->warn("{}; falling back to an earlier step", *problem);
    out.skipped.push_back(*problem);
  }
  return out;
}

std::optional<int64_t> find_latest_complete_step(const std::string& ckpt_dir) {
  return search_latest_complete_step(ckpt_dir).step;
}

std::string no_complete_checkpoint_message(const std::string& ckpt_dir) {
  return "no complete checkpoint in " + ckpt_dir;
}

int64_t require_latest_complete_step(const std::string& ckpt_dir) {
  const auto step = find_latest_complete_step(ckpt_dir);
  CSKV_CHECK_INPUT(step.has_value(), no_complete_checkpoint_message(ckpt_dir));
  return *step;
}

namespace {
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.to(at::kCPU).contiguous(), cb = b.to(at::kCPU).contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

bool same_state(const JobState& a, const JobState& b) {
  return a.job.rank == b.job.rank && a.step == b.step && a.total_steps == b.total_steps &&
         a.data_position == b.data_position &&
         std::memcmp(&a.floor, &b.floor, sizeof(double)) == 0 &&
         std::memcmp(&a.last_loss, &b.last_loss, sizeof(double)) == 0 &&
         std::memcmp(&a.holdout_error, &b.holdout_error, sizeof(double)) == 0 &&
         same_bits(a.A, b.A) && same_bits(a.B, b.B) && same_bits(a.m_A, b.m_A) &&
         same_bits(a.v_A, b.v_A) && same_bits(a.m_B, b.m_B) && same_bits(a.v_B, b.v_B) &&
         same_bits(a.eigenvalues, b.eigenvalues);
}
}  // namespace

std::map<JobKey, JobState> load_step(const std::string& ckpt_dir, int64_t step) {
  const StepManifest m = read_step_manifest(ckpt_dir, step);
  std::map<JobKey, JobState> jobs;
  std::map<JobKey, std::string> source;
  for (const auto& e : m.files) {
    const std::string path = step_dir(ckpt_dir, step) + "/" + e.file;
    for (auto& s : read_rank_checkpoint(path)) {
      const JobKey key{s.job.layer, s.job.kind};
      const auto it = jobs.find(key);
      if (it == jobs.end()) {
        source[key] = path;
        jobs.emplace(key, std::move(s));
        continue;
      }
      CSKV_CHECK_INPUT(same_state(it->second, s), s.job.name() << " is saved in both "
                                                               << source[key] << " and " << path
                                                               << " with different states");
    }
  }
  return jobs;
}

std::vector<int64_t> prune_steps(const std::string& ckpt_dir, int64_t keep, bool verify_checksums) {
  CSKV_CHECK_USAGE(keep >= 1, "--keep: expected at least 1 checkpoint to keep, found " << keep);
  const auto steps = list_steps(ckpt_dir);
  std::optional<int64_t> newest_complete;
  int64_t kept = 0;
  std::vector<int64_t> remove;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (kept == keep) {
      remove.push_back(*it);
      continue;
    }
    const bool complete = !check_step(ckpt_dir, *it, verify_checksums).has_value();
    if (complete) {
      if (!newest_complete) newest_complete = *it;
      ++kept;
    } else if (newest_complete) {
      remove.push_back(*it);  // an incomplete step older than a complete one
    }
  }
  std::sort(remove.begin(), remove.end());
  auto log = log::get("checkpoint");
  for (const int64_t s : remove) {
    const std::string dir = step_dir(ckpt_dir, s);
    std::error_code ec;
    // The manifest first: a prune cut short leaves a step that reads as an unfinished save, never
    // one that reads as a damaged complete step (which a later run would refuse to delete).
    if (fs::remove(step_manifest_path(ckpt_dir, s), ec)) files::fsync_directory(dir);
    fs::remove_all(dir, ec);
    CSKV_CHECK(!ec, dir << ": cannot remove an old checkpoint: " << ec.message());
    log->debug("removed old checkpoint {}", dir);
  }
  if (!remove.empty()) files::fsync_directory(ckpt_dir);
  return remove;
}

}  // namespace cskv::checkpoint
