// The single-process Communicator: size 1, every collective is the identity (or a copy).
// Used when cskv runs without mpirun, and by unit tests that need a communicator.
#pragma once

#include "comm/communicator.h"

namespace cskv::comm {

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(double timeout_s = kDefaultTimeoutS);

  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  std::string backend_name() const override { return "local"; }
  double timeout_s() const override { return timeout_s_; }

  void barrier() override {}
  void broadcast(at::Tensor& tensor, int root) override;
  void allreduce(at::Tensor& tensor, ReduceOp op) override;
  std::vector<std::string> gather_bytes(const std::string& mine, int root) override;
  std::vector<std::string> allgather_bytes(const std::string& mine) override;
  void broadcast_bytes(std::string& bytes, int root) override;
  std::unique_ptr<Communicator> split(int color, int key) override;
  [[noreturn]] void abort(const std::string& message) override;

 private:
  double timeout_s_;
};

}  // namespace cskv::comm
