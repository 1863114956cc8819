// Progress of a long stage with rate and ETA, shown by rank 0: a live bar redrawn in place when
// stderr is a terminal, else one plain log line every few seconds (batch logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cskv {

class ProgressMeter {
 public:
  // stage: "train"; unit: "steps". A disabled meter (ranks other than 0) prints nothing.
  // Plain lines come every $CSKV_PROGRESS_INTERVAL_S seconds (default 5).
  ProgressMeter(std::string stage, std::string unit, int64_t total, bool enabled);
  ~ProgressMeter();
  ProgressMeter(const ProgressMeter&) = delete;
  ProgressMeter& operator=(const ProgressMeter&) = delete;

  // `done` units so far (absolute; `start` of them were done before this run, e.g. a resume:
  // they count for the bar but not for the rate).
  void update(int64_t done);
  void set_start(int64_t start);
  // The last line: "<stage>: <total> <unit> in <s> s (<rate> <unit>/s)"; idempotent.
  void finish();

  // "<stage>: 120/400 steps (30.0%), 55.2 steps/s, ETA 5 s" for these numbers.
  static std::string plain_line(const std::string& stage, const std::string& unit, int64_t done,
                                int64_t total, double rate);

 private:
  using Clock = std::chrono::steady_clock;
  void draw(bool final_line);

  std::string stage_, unit_;
  int64_t total_ = 0, done_ = 0, start_ = 0;
  bool enabled_ = false, tty_ = false, finished_ = false, bar_drawn_ = false;
  double interval_s_ = 5.0;
  Clock::time_point t0_ = Clock::now(), last_ = Clock::now();
};

}  // namespace cskv
