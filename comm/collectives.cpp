// Typed collectives: the wire formats (CBOR values, tagged verdicts, errors as kind/message/where)
// and the scalar reductions on one-element CPU tensors.
#include "comm/collectives.h"

#include <exception>

namespace cskv::comm {

namespace {

// root_decides' verdict: a tag byte, then the CBOR of the value or of the error.
constexpr char kValueTag = 'V';
constexpr char kErrorTag = 'E';

nlohmann::json error_to_json(const Error& error) {
  return {{"kind", static_cast<int>(error.kind())},
          {"message", error.message()},
          {"where", error.where()}};
}

// The error a rank raises for a verdict another rank reached: equal to it, and collective.
Error error_from_json(const nlohmann::json& j, const char* op) {
  try {
    const int kind = j.at("kind").get<int>();
    CSKV_CHECK(
        kind >= static_cast<int>(ErrorKind::kUsage) && kind <= static_cast<int>(ErrorKind::kComm),
        op << ": received an error of unknown kind " << kind);
    return Error(static_cast<ErrorKind>(kind), j.at("message").get<std::string>(),
                 j.at("where").get<std::string>(), /*collective=*/true);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kRuntime, std::string(op) + ": cannot read the error: " + e.what());
  }
}

std::int64_t reduce_int64(Communicator& comm, std::int64_t mine, ReduceOp op) {
  auto t = at::full({1}, mine, at::kLong);
  comm.allreduce(t, op);
  return t.item<std::int64_t>();
}

double reduce_double(Communicator& comm, double mine, ReduceOp op) {
  auto t = at::full({1}, mine, at::kDouble);
  comm.allreduce(t, op);
  return t.item<double>();
}

}  // namespace

namespace detail {

std::string encode_value(const nlohmann::json& value) {
  const std::vector<std::uint8_t> cbor = nlohmann::json::to_cbor(value);
  return std::string(cbor.begin(), cbor.end());
}

nlohmann::json decode_value(const std::string& bytes, const char* op) {
  try {
    return nlohmann::json::from_cbor(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kRuntime, std::string(op) + ": cannot decode a value of " +
                                         std::to_string(bytes.size()) + " bytes: " + e.what());
  }
}

std::string root_decides_bytes(Communicator& comm, const std::function<std::string()>& encode) {
  std::string verdict;
  if (comm.rank() == 0) {
    try {
      verdict = kValueTag + encode();
    } catch (const Error& e) {
      verdict = kErrorTag + encode_value(error_to_json(e));
    } catch (const std::exception& e) {
      verdict = kErrorTag + encode_value(error_to_json(Error(ErrorKind::kRuntime, e.what())));
    }
  }
  comm.broadcast_bytes(verdict, 0);
  CSKV_CHECK(!verdict.empty() && (verdict[0] == kValueTag || verdict[0] == kErrorTag),
             "root_decides: received a malformed verdict of " << verdict.size() << " bytes");
  const std::string body = verdict.substr(1);
  if (verdict[0] == kErrorTag)
    throw error_from_json(decode_value(body, "root_decides"), "root_decides");
  return body;
}

}  // namespace detail

void root_decides(Communicator& comm, const std::function<void()>& check) {
  detail::root_decides_bytes(comm, [&] {
    check();
    return detail::encode_value(nullptr);
  });
}

bool all_agree(Communicator& comm, bool mine) {
  return reduce_int64(comm, mine ? 1 : 0, ReduceOp::kMin) == 1;
}

bool any_rank(Communicator& comm, bool mine) {
  return reduce_int64(comm, mine ? 1 : 0, ReduceOp::kMax) == 1;
}

double max_over_ranks(Communicator& comm, double mine) {
  return reduce_double(comm, mine, ReduceOp::kMax);
}

std::int64_t max_over_ranks(Communicator& comm, std::int64_t mine) {
  return reduce_int64(comm, mine, ReduceOp::kMax);
}

double min_over_ranks(Communicator& comm, double mine) {
  return reduce_double(comm, mine, ReduceOp::kMin);
}

std::int64_t min_over_ranks(Communicator& comm, std::int64_t mine) {
  return reduce_int64(comm, mine, ReduceOp::kMin);
}

std::int64_t sum_over_ranks(Communicator& comm, std::int64_t mine) {
  return reduce_int64(comm, mine, ReduceOp::kSum);
}

void throw_if_any_failed(Communicator& comm, const std::optional<Error>& mine) {
  const nlohmann::json report = mine ? error_to_json(*mine) : nlohmann::json(nullptr);
  const auto reports = allgather_values(comm, report);
  for (const auto& r : reports) {
    if (!r.is_null()) throw error_from_json(r, "throw_if_any_failed");
  }
}

void allreduce_sum_on_device(Communicator& comm, at::Tensor& tensor) {
  if (tensor.device().is_cpu() || comm.backend_name() == "nccl") {
    comm.allreduce_sum(tensor);
    return;
  }
  at::Tensor host = tensor.to(at::kCPU);
  comm.allreduce_sum(host);
  tensor.copy_(host);
}

}  // namespace cskv::comm
