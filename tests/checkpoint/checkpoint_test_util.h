// Hand-made JobStates for the checkpoint tests (small seeded random tensors, awkward doubles) and
// bitwise comparison helpers; no training involved.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "trainer/layer_trainer.h"

namespace cskv::checkpoint::test_util {

inline trainer::JobState make_state(int64_t layer, trainer::KvKind kind, int64_t H, int64_t r,
                                    int64_t D, int64_t step, int64_t total_steps, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  trainer::JobState s;
  s.job = {layer, kind, r};
  s.A = at::randn({H, r}, gen, f32);
  s.B = at::randn({r, D}, gen, f32);
  s.m_A = at::randn({H, r}, gen, f32);
  s.v_A = at::rand({H, r}, gen, f32);
  s.m_B = at::randn({r, D}, gen, f32);
  s.v_B = at::rand({r, D}, gen, f32);
  // Values a text round trip could lose: -0, a subnormal, a NaN with a payload, infinity.
  s.A[0][0] = -0.0f;
  s.m_A[0][0] = std::numeric_limits<float>::denorm_min();
  uint32_t nan_bits = 0x7fc01234u;
  float nan_value;
  std::memcpy(&nan_value, &nan_bits, sizeof nan_value);
  s.v_B.view({-1})[0] = nan_value;
  s.m_B.view({-1})[0] = std::numeric_limits<float>::infinity();
  s.step = step;
  s.total_steps = total_steps;
  s.data_position = 4096 * step + static_cast<int64_t>(seed);
  s.floor = 0.1 + 1e-17 * static_cast<double>(seed);  // not a short decimal
  s.last_loss = std::nextafter(1.0 / 3.0, 1.0) + static_cast<double>(layer);
  s.train_error_init = 0.25 + 1e-17 * static_cast<double>(seed);
  s.holdout_error_init_q = std::nextafter(0.3, 1.0);
  if (step == total_steps) {  // a finished job carries its final errors; others keep NaN
    s.train_error = 1.0 / 7.0;
    s.holdout_error_q = std::nextafter(1.0 / 9.0, 0.0);
    s.holdout_error = 1.0 / 11.0;
  }
  s.seconds = 12.5 + 1.0 / 3.0;
  s.eigenvalues = std::get<0>(at::sort(
      at::rand({D}, gen, at::TensorOptions().dtype(at::kDouble)) * 100.0, 0, /*descending=*/true));
  s.eigenvalues = s.eigenvalues.contiguous();
  s.eigenvalues[D - 1] = 4.9406564584124654e-324;  // the smallest subnormal double
  return s;
}

inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

inline bool same_double_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline void expect_same_state(const trainer::JobState& a, const trainer::JobState& b) {
  const std::string job = a.job.name();
  EXPECT_EQ(a.job.layer, b.job.layer) << job;
  EXPECT_EQ(a.job.kind, b.job.kind) << job;
  EXPECT_EQ(a.job.rank, b.job.rank) << job;
  EXPECT_TRUE(same_bits(a.A, b.A)) << job;
  EXPECT_TRUE(same_bits(a.B, b.B)) << job;
  EXPECT_TRUE(same_bits(a.m_A, b.m_A)) << job;
  EXPECT_TRUE(same_bits(a.v_A, b.v_A)) << job;
  EXPECT_TRUE(same_bits(a.m_B, b.m_B)) << job;
  EXPECT_TRUE(same_bits(a.v_B, b.v_B)) << job;
  EXPECT_TRUE(same_bits(a.eigenvalues, b.eigenvalues)) << job;
  EXPECT_EQ(a.step, b.step) << job;
  EXPECT_EQ(a.total_steps, b.total_steps) << job;
  EXPECT_EQ(a.data_position, b.data_position) << job;
  EXPECT_TRUE(same_double_bits(a.floor, b.floor)) << job << " " << a.floor << " " << b.floor;
  EXPECT_TRUE(same_double_bits(a.last_loss, b.last_loss)) << job;
  EXPECT_TRUE(same_double_bits(a.train_error_init, b.train_error_init)) << job;
  EXPECT_TRUE(same_double_bits(a.holdout_error_init_q, b.holdout_error_init_q)) << job;
  EXPECT_TRUE(same_double_bits(a.train_error, b.train_error)) << job;
  EXPECT_TRUE(same_double_bits(a.holdout_error_q, b.holdout_error_q)) << job;
  EXPECT_TRUE(same_double_bits(a.holdout_error, b.holdout_error)) << job;
  EXPECT_TRUE(same_double_bits(a.seconds, b.seconds)) << job;
}

}  // namespace cskv::checkpoint::test_util
