// Typed collectives over a Communicator: verdicts, flags, extrema and gathered values travel as
// typed C++ values (JSON/CBOR or small int64/float64 tensors), never as ad-hoc string protocols.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "common/error.h"

// std::optional<T> as JSON null or the value (nlohmann 3.11 has no built-in support).
namespace nlohmann {
template <typename T>
struct adl_serializer<std::optional<T>> {
  static void to_json(json& j, const std::optional<T>& value) {
    if (value) {
      j = *value;
    } else {
      j = nullptr;
    }
  }
  static void from_json(const json& j, std::optional<T>& value) {
    if (j.is_null()) {
      value.reset();
    } else {
      value = j.get<T>();
    }
  }
};
}  // namespace nlohmann

namespace cskv::comm {

namespace detail {
// Values travel as CBOR, which keeps every double bit-exact (including inf, NaN and -0.0).
std::string encode_value(const nlohmann::json& value);
nlohmann::json decode_value(const std::string& bytes, const char* op);
// Rank 0 runs encode(); its bytes (or its error) reach every rank.
std::string root_decides_bytes(Communicator& comm, const std::function<std::string()>& encode);
// from_json failures become cskv::Error(kRuntime) naming op.
template <class T>
T value_from(const nlohmann::json& value, const char* op) {
  try {
    return value.get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kRuntime, std::string(op) + ": cannot read the value: " + e.what());
  }
}
template <class T>
inline constexpr bool kAlwaysFalse = false;
}  // namespace detail

// Rank 0 runs decide() (other ranks never call it) and every rank returns its value; if decide
// throws, every rank throws an equal cskv::Error (same kind, message and where; collective()).
// Other exceptions become ErrorKind::kRuntime with their what(). T: anything with
// to_json/from_json.
template <class T>
T root_decides(Communicator& comm, const std::function<T()>& decide) {
  static_assert(!std::is_void_v<T>, "use root_decides(comm, std::function<void()>)");
  const std::string bytes = detail::root_decides_bytes(
      comm, [&] { return detail::encode_value(nlohmann::json(decide())); });
  return detail::value_from<T>(detail::decode_value(bytes, "root_decides"), "root_decides");
}
// Rank 0 checks; when check throws, every rank throws its error (as above).
void root_decides(Communicator& comm, const std::function<void()>& check);
// A lambda that returns a value must name its type, or the value would be dropped silently.
template <class F, std::enable_if_t<!std::is_void_v<std::invoke_result_t<F&>>, int> = 0>
void root_decides(Communicator&, F&&) {
  static_assert(detail::kAlwaysFalse<F>, "name the decided type: root_decides<T>(comm, decide)");
}

// true iff every rank passed true / iff at least one rank did.
bool all_agree(Communicator& comm, bool mine);
bool any_rank(Communicator& comm, bool mine);
// Exact extrema and sums over ranks (one small allreduce each).
double max_over_ranks(Communicator& comm, double mine);
std::int64_t max_over_ranks(Communicator& comm, std::int64_t mine);
double min_over_ranks(Communicator& comm, double mine);
std::int64_t min_over_ranks(Communicator& comm, std::int64_t mine);
std::int64_t sum_over_ranks(Communicator& comm, std::int64_t mine);

// allreduce_sum of a tensor on any device: in place where the backend takes that device (NCCL
// takes CUDA tensors), through a host copy where it takes CPU tensors only (MPI, local).
void allreduce_sum_on_device(Communicator& comm, at::Tensor& tensor);

// Every rank's value, indexed by rank, on root (other ranks get an empty vector).
template <class T>
std::vector<T> gather_values(Communicator& comm, const T& mine, int root) {
  const auto blobs = comm.gather_bytes(detail::encode_value(nlohmann::json(mine)), root);
  std::vector<T> values;
  values.reserve(blobs.size());
  for (const auto& blob : blobs) {
    values.push_back(
        detail::value_from<T>(detail::decode_value(blob, "gather_values"), "gather_values"));
  }
  return values;
}
// Every rank's value, indexed by rank, on every rank.
template <class T>
std::vector<T> allgather_values(Communicator& comm, const T& mine) {
  const auto blobs = comm.allgather_bytes(detail::encode_value(nlohmann::json(mine)));
  std::vector<T> values;
  values.reserve(blobs.size());
  for (const auto& blob : blobs) {
    values.push_back(
        detail::value_from<T>(detail::decode_value(blob, "allgather_values"), "allgather_values"));
  }
  return values;
}

// Every rank checked its own inputs (mine: its error, if any): when any rank failed, every rank
// throws the error of the lowest failing rank (same kind, message and where; collective()).
void throw_if_any_failed(Communicator& comm, const std::optional<Error>& mine);

}  // namespace cskv::comm
