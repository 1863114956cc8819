// `cskv comm-check`: verifies broadcast, allreduce (fp32/fp64) and byte gathers on the chosen
// backend against values computed from the rank (nccl-tests style) and prints their bandwidth.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "comm/communicator.h"
#include "common/error.h"
#include "launch/cli.h"
#include "launch/subcommands.h"

namespace cskv::cli {

namespace {

using Clock = std::chrono::steady_clock;

std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CSKV_CHECK_USAGE(
        used == part.size() && v > 0,
        "--sizes: expected comma-separated element counts > 0, found '" << text << "'");
    sizes.push_back(v);
  }
  CSKV_CHECK_USAGE(!sizes.empty(), "--sizes: expected at least one element count");
  return sizes;
}

struct Result {
  std::string op;
  int64_t elements = 0;
  int64_t bytes = 0;
  double seconds = 0;       // mean per call
  double bus_factor = 1.0;  // nccl-tests bus bandwidth factor
  int64_t wrong = 0;        // elements that differ from the expected value
};

// Pattern values are small integers (exact in fp32 and their sums too), different per element.
at::Tensor pattern(int64_t n, at::ScalarType dtype, at::Device device, double scale) {
  return (at::arange(n, at::TensorOptions().dtype(at::kLong)).remainder(251) + 1)
      .to(dtype)
      .mul_(scale)
      .to(device);
}

// Broadcast from the last rank: every rank must end with its pattern.
Result check_broadcast(comm::Communicator& world, int64_t n, const at::Device& device, int iters) {
  const int root = world.size() - 1;
  const at::Tensor expected = pattern(n, at::kFloat, device, 1.0);
  at::Tensor t = world.rank() == root ? expected.clone() : at::zeros_like(expected);
  world.broadcast(t, root);
  Result res{"broadcast f32", n, n * 4, 0, 1.0, t.ne(expected).sum().item<int64_t>()};
  world.barrier();
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) world.broadcast(t, root);
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
  return res;
}

// Rank r contributes (r + 1) * pattern; the sum is W(W+1)/2 * pattern, exactly.
Result check_allreduce(comm::Communicator& world, int64_t n, at::ScalarType dtype,
                       const at::Device& device, int iters) {
  const double w = static_cast<double>(world.size());
  at::Tensor t = pattern(n, dtype, device, world.rank() + 1.0);
  world.allreduce_sum(t);
  const at::Tensor expected = pattern(n, dtype, device, w * (w + 1) / 2);
  const int64_t esize = dtype == at::kFloat ? 4 : 8;
  Result res{dtype == at::kFloat ? "allreduce f32" : "allreduce f64",
             n,
             n * esize,
             0,
             2.0 * (w - 1) / w,
             t.ne(expected).sum().item<int64_t>()};
  world.barrier();
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) world.allreduce_sum(t);  // values grow; timing only
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
  return res;
}

// Byte blobs of rank-dependent lengths.
Result check_allgather_bytes(comm::Communicator& world) {
  const int rank = world.rank(), size = world.size();
  const std::string mine(static_cast<size_t>(rank + 1) * 3, static_cast<char>('a' + rank % 26));
  const auto all = world.allgather_bytes(mine);
  int64_t wrong = static_cast<int64_t>(all.size()) == size ? 0 : 1;
  for (int q = 0; q < static_cast<int>(all.size()); ++q) {
    wrong += all[q] != std::string(static_cast<size_t>(q + 1) * 3, static_cast<char>('a' + q % 26));
  }
  return {"allgather bytes", size, 0, 0, 1.0, wrong};
}

// Every rank's count of wrong elements per check, summed over the ranks.
std::vector<int64_t> wrong_over_ranks(comm::Communicator& world,
                                      const std::vector<Result>& results) {
  at::Tensor wrong_total = at::zeros({static_cast<int64_t>(results.size())}, at::kDouble);
  for (size_t i = 0; i < results.size(); ++i)
    wrong_total[i] = static_cast<double>(results[i].wrong);
  world.allreduce_sum(wrong_total);
  std::vector<int64_t> wrong;
  for (size_t i = 0; i < results.size(); ++i)
    wrong.push_back(static_cast<int64_t>(wrong_total[i].item<double>()));
  return wrong;
}

void print_table(const comm::Communicator& world, int iters, const std::vector<Result>& results,
                 const std::vector<int64_t>& wrong) {
  std::printf("comm-check: backend %s, %d rank(s), %d iteration(s)\n", world.backend_name().c_str(),
              world.size(), iters);
  std::printf("%-16s %12s %12s %10s %12s %12s %8s\n", "op", "elements", "bytes", "time us",
              "algbw GB/s", "busbw GB/s", "check");
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& x = results[i];
    const int64_t bad = wrong[i];
    const double algbw = x.seconds > 0 ? x.bytes / x.seconds / 1e9 : 0.0;
    std::printf("%-16s %12lld %12lld %10.1f %12.3f %12.3f %8s\n", x.op.c_str(),
                static_cast<long long>(x.elements), static_cast<long long>(x.bytes),
                x.seconds * 1e6, algbw, algbw * x.bus_factor,
                bad == 0 ? "ok" : (std::to_string(bad) + " wrong").c_str());
  }
  std::fflush(stdout);
}

cxxopts::Options comm_check_options() {
  auto options = make_options(
      "comm-check",
      "Check the communicator: broadcast, allreduce-sum of float32/float64 and byte gathers "
      "against values computed from the rank, and print time and bandwidth per size "
      "(bus bandwidth as nccl-tests reports it). Exit 1 when a value is wrong.");
  options.add_options("check")("sizes", "Element counts to test, comma-separated",
                               cxxopts::value<std::string>()->default_value("1024,1048576"))(
      "iters", "Timed repetitions per size", cxxopts::value<int>()->default_value("5"));
  add_runtime_options(options);
  return options;
}

}  // namespace

int run_comm_check(int argc, char** argv) {
  return guarded("comm-check", [&] {
    auto options = comm_check_options();
    const auto r = parse(options, argc, argv);
    if (!r) return kExitOk;
    const auto sizes = parse_sizes((*r)["sizes"].as<std::string>());
    const int iters = (*r)["iters"].as<int>();
    CSKV_CHECK_USAGE(iters >= 1, "--iters: expected >= 1, found " << iters);
    auto world = start_runtime(*r);
    const at::Device device =
        world->backend_name() == "nccl"
            ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(world->local_rank()))
            : at::Device(at::kCPU);
    std::vector<Result> results;
    for (const int64_t n : sizes) {
      results.push_back(check_broadcast(*world, n, device, iters));
      for (const auto dtype : {at::kFloat, at::kDouble})
        results.push_back(check_allreduce(*world, n, dtype, device, iters));
    }
    results.push_back(check_allgather_bytes(*world));
    // Every rank's verdict reaches rank 0, which reports.
    const std::vector<int64_t> wrong = wrong_over_ranks(*world, results);
    if (world->rank() == 0) print_table(*world, iters, results, wrong);
    int64_t total_wrong = 0;
    for (const int64_t bad : wrong) total_wrong += bad;
    CSKV_CHECK(total_wrong == 0, "comm-check: " << total_wrong
                                                << " element(s) differ from the expected values "
                                                   "(see the table on rank 0)");
    return kExitOk;
  });
}

}  // namespace cskv::cli
