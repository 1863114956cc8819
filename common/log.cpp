// Logger registry: one stderr sink shared by all components, optional per-rank file sink.
#include "common/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>
#include <vector>

#include "common/error.h"

namespace cskv::log {
namespace {
struct Registry {
  std::mutex mu;
  std::vector<spdlog::sink_ptr> sinks{std::make_shared<spdlog::sinks::stderr_color_sink_mt>()};
  std::string pattern = "[%H:%M:%S.%e] [%n] %^%l%$: %v";
  int rank = 0;
  spdlog::level::level_enum level = spdlog::level::info;
  std::map<std::string, std::shared_ptr<spdlog::logger>> loggers;
};
Registry& registry() {
  static Registry r;
  return r;
}
void apply(Registry& r, spdlog::logger& l) {
  l.sinks() = r.sinks;
  l.set_pattern(r.pattern);
  l.set_level(r.level);
}
}  // namespace

std::shared_ptr<spdlog::logger> get(const std::string& component) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.loggers.find(component);
  if (it != r.loggers.end()) return it->second;
  auto l = std::make_shared<spdlog::logger>(component);
  apply(r, *l);
  r.loggers.emplace(component, l);
  return l;
}

void set_rank(int rank, int world_size) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.rank = rank;
  r.pattern = world_size > 1 ? "[%H:%M:%S.%e] [r" + std::to_string(rank) + "] [%n] %^%l%$: %v"
                             : "[%H:%M:%S.%e] [%n] %^%l%$: %v";
  for (auto& [name, l] : r.loggers) apply(r, *l);
}

int rank() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.rank;
}

void set_level(const std::string& level) {
  const auto lvl = spdlog::level::from_str(level);
  CSKV_CHECK_USAGE(
      lvl != spdlog::level::off || level == "off",
      "--log-level: expected trace|debug|info|warn|error|off, found '" << level << "'");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.level = lvl;
  for (auto& [name, l] : r.loggers) apply(r, *l);
}

void add_file_sink(const std::string& dir, int rank) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(
      dir + "/rank-" + std::to_string(rank) + ".log", /*truncate=*/false));
  for (auto& [name, l] : r.loggers) apply(r, *l);
}

}  // namespace cskv::log
