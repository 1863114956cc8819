// Option resolution and argument checks shared by every Communicator backend.
// Keeping the checks here makes a mistake fail the same way on 1 process and under mpirun.
#include "comm/communicator.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/error.h"

namespace cskv::comm {

namespace {
std::string describe_timeout_source(const char* source, const std::string& found) {
  std::ostringstream os;
  os << source << ": expected a positive number of seconds, found '" << found << "'";
  return os.str();
}
}  // namespace

double resolve_timeout_s(const CommOptions& options) {
  if (options.timeout_s) {
    const double t = *options.timeout_s;
    CSKV_CHECK_USAGE(std::isfinite(t) && t > 0,
                     describe_timeout_source("communication timeout", format_seconds(t)));
    return t;
  }
  const char* env = std::getenv(kTimeoutEnvVar);
  if (env == nullptr || *env == '\0') return kDefaultTimeoutS;
  char* end = nullptr;
  const double t = std::strtod(env, &end);
  CSKV_CHECK_USAGE(end != env && *end == '\0' && std::isfinite(t) && t > 0,
                   describe_timeout_source(kTimeoutEnvVar, env));
  return t;
}

std::string format_seconds(double seconds) {
  std::ostringstream os;
  if (std::isfinite(seconds) && seconds == std::floor(seconds) && std::fabs(seconds) < 1e15) {
    os << static_cast<long long>(seconds);
  } else {
    os << seconds;
  }
  return os.str();
}

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    case at::kByte:
      return "uint8";
    case at::kChar:
      return "int8";
    case at::kShort:
      return "int16";
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    case at::kBool:
      return "bool";
    default:
      return c10::toString(type);
  }
}

const char* allreduce_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "allreduce_sum";
    case ReduceOp::kMax:
      return "allreduce_max";
    case ReduceOp::kMin:
      return "allreduce_min";
  }
  return "allreduce";
}

void Communicator::allreduce_sum(at::Tensor& tensor) {
  // The layout check first, as the backends do, so a bad tensor fails the same way as before.
  detail::check_dense_contiguous(*this, "allreduce_sum", tensor);
  detail::check_allreduce_sum_dtype(*this, tensor);
  allreduce(tensor, ReduceOp::kSum);
}

namespace detail {

void check_root(const Communicator& comm, const char* op, int root) {
  CSKV_CHECK(root >= 0 && root < comm.size(),
             op << ": root " << root << " is out of range for a communicator of size "
                << comm.size() << " (expected 0.." << comm.size() - 1 << ")");
}

void check_dense_contiguous(const Communicator& comm, const char* op, const at::Tensor& tensor) {
  CSKV_CHECK(tensor.defined(), op << ": expected a defined tensor, found an undefined one");
  CSKV_CHECK(tensor.layout() == at::kStrided,
             op << ": expected a dense (strided) tensor, found layout " << tensor.layout());
  CSKV_CHECK(tensor.is_contiguous(), op << ": expected a contiguous tensor, found sizes "
                                        << tensor.sizes() << " with strides " << tensor.strides()
                                        << " (call .contiguous() first)");
}

void check_cpu_tensor(const Communicator& comm, const char* op, const at::Tensor& tensor) {
  check_dense_contiguous(comm, op, tensor);
  CSKV_CHECK(tensor.device().is_cpu(), "backend '" << comm.backend_name()
                                                   << "' handles CPU tensors only; " << op
                                                   << " got a tensor on " << tensor.device());
}

void check_allreduce_dtype(const Communicator& comm, const at::Tensor& tensor, ReduceOp op) {
  const auto type = tensor.scalar_type();
  CSKV_CHECK(type == at::kFloat || type == at::kDouble || type == at::kLong,
             "backend '" << comm.backend_name() << "' does not support " << allreduce_name(op)
                         << " of dtype " << dtype_name(type)
                         << " (expected float32, float64 or int64)");
}

void check_allreduce_sum_dtype(const Communicator& comm, const at::Tensor& tensor) {
  const auto type = tensor.scalar_type();
  CSKV_CHECK(type == at::kFloat || type == at::kDouble,
             "backend '" << comm.backend_name() << "' does not support allreduce_sum of dtype "
                         << dtype_name(type) << " (expected float32 or float64)");
}

void check_split_color(const Communicator& comm, int color) {
  CSKV_CHECK(color >= 0, "split: expected a color >= 0, found " << color);
}

}  // namespace detail
}  // namespace cskv::comm
