// LocalCommunicator: collectives over one process, with the same argument checks as MPI.
// abort() logs and exits with status 1, like a one-rank MPI_Abort.
#include "comm/local_communicator.h"

#include <cstdlib>

#include "common/log.h"

namespace cskv::comm {

LocalCommunicator::LocalCommunicator(double timeout_s) : timeout_s_(timeout_s) {}

void LocalCommunicator::broadcast(at::Tensor& tensor, int root) {
  detail::check_root(*this, "broadcast", root);
  detail::check_cpu_tensor(*this, "broadcast", tensor);
}

void LocalCommunicator::allreduce(at::Tensor& tensor, ReduceOp op) {
  detail::check_cpu_tensor(*this, allreduce_name(op), tensor);
  detail::check_allreduce_dtype(*this, tensor, op);
}

std::vector<std::string> LocalCommunicator::gather_bytes(const std::string& mine, int root) {
  detail::check_root(*this, "gather_bytes", root);
  return {mine};
}

std::vector<std::string> LocalCommunicator::allgather_bytes(const std::string& mine) {
  return {mine};
}

void LocalCommunicator::broadcast_bytes(std::string& bytes, int root) {
  (void)bytes;
  detail::check_root(*this, "broadcast_bytes", root);
}

std::unique_ptr<Communicator> LocalCommunicator::split(int color, int key) {
  detail::check_split_color(*this, color);
  return std::make_unique<LocalCommunicator>(timeout_s_);
}

void LocalCommunicator::abort(const std::string& message) {
  auto logger = log::get("comm");
  logger->critical("aborting: {}", message);
  logger->flush();
  std::exit(1);
}

}  // namespace cskv::comm
