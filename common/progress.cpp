// ProgressMeter: the bar for terminals, plain periodic log lines otherwise.
#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "common/log.h"

namespace cskv {

ProgressMeter::ProgressMeter(std::string stage, std::string unit, int64_t total, bool enabled)
    : stage_(std::move(stage)), unit_(std::move(unit)), total_(total), enabled_(enabled) {
  tty_ = enabled_ && isatty(STDERR_FILENO);
  if (const char* env = std::getenv("CSKV_PROGRESS_INTERVAL_S")) {
    char* end = nullptr;
    const double v = std::strtod(env, &end);
    if (end != env && v > 0) interval_s_ = v;
  }
}

ProgressMeter::~ProgressMeter() {
  if (tty_ && bar_drawn_ && !finished_) std::cerr << std::endl;  // leave the bar's line
}

void ProgressMeter::set_start(int64_t start) {
  start_ = start;
  done_ = std::max(done_, start);
}

std::string ProgressMeter::plain_line(const std::string& stage, const std::string& unit,
                                      int64_t done, int64_t total, double rate) {
  char buf[256];
  const double pct =
      100.0 * static_cast<double>(done) / static_cast<double>(std::max<int64_t>(1, total));
  if (rate > 0) {
    std::snprintf(buf, sizeof buf, "%s: %lld/%lld %s (%.1f%%), %.1f %s/s, ETA %.0f s",
                  stage.c_str(), static_cast<long long>(done), static_cast<long long>(total),
                  unit.c_str(), pct, rate, unit.c_str(), static_cast<double>(total - done) / rate);
  } else {
    std::snprintf(buf, sizeof buf, "%s: %lld/%lld %s (%.1f%%), ETA unknown", stage.c_str(),
                  static_cast<long long>(done), static_cast<long long>(total), unit.c_str(), pct);
  }
  return buf;
}

void ProgressMeter::update(int64_t done) {
  done_ = done;
  if (!enabled_ || finished_) return;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  if (since < (tty_ ? 0.2 : interval_s_)) return;
  last_ = now;
  draw(false);
}

void ProgressMeter::finish() {
  if (!enabled_ || finished_) return;
  draw(true);
  finished_ = true;
}

void ProgressMeter::draw(bool final_line) {
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_ - start_) / elapsed : 0;
  if (final_line) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: %lld %s in %.1f s (%.1f %s/s)", stage_.c_str(),
                  static_cast<long long>(done_ - start_), unit_.c_str(), elapsed, rate,
                  unit_.c_str());
    if (tty_ && bar_drawn_) std::cerr << "\r\033[K" << std::flush;
    log::get("progress")->info("{}", buf);
    return;
  }
  const std::string line = plain_line(stage_, unit_, done_, total_, rate);
  if (!tty_) {
    log::get("progress")->info("{}", line);
    return;
  }
  constexpr int kWidth = 30;
  const double frac = std::clamp(
      static_cast<double>(done_) / static_cast<double>(std::max<int64_t>(1, total_)), 0.0, 1.0);
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>';
  bar.resize(kWidth, ' ');
  std::cerr << "\r\033[K[" << bar << "] " << line << std::flush;
  bar_drawn_ = true;
}

}  // namespace cskv
