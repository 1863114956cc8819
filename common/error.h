// Typed errors and check macros used by every cskv folder.
// A message says what was expected, what was found and where; main() turns it into one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace cskv {

// What kind of failure, which decides the exit status at the CLI edge.
enum class ErrorKind {
  kUsage,    // bad command line: exit 2
  kInput,    // bad file / data / config given by the user: exit 1
  kRuntime,  // library or system failure: exit 1
  kComm,     // a peer died or a collective timed out: exit 1
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, std::string where = {}, bool collective = false)
      : std::runtime_error(message),
        kind_(kind),
        message_(std::move(message)),
        where_(std::move(where)),
        collective_(collective) {}
  ErrorKind kind() const { return kind_; }
  // The user-facing message, without the source location (stable: tests compare it exactly).
  const std::string& message() const { return message_; }
  // "file.cpp:123 (expression)" of the check that failed; empty when thrown directly.
  const std::string& where() const { return where_; }
  // Raised identically on every rank (a usage error, or a verdict rank 0 broadcast): only rank 0
  // prints it, so an mpirun job shows the message once.
  bool collective() const { return collective_ || kind_ == ErrorKind::kUsage; }

 private:
  ErrorKind kind_;
  std::string message_;
  std::string where_;
  bool collective_ = false;
};

// Rank of this process for error messages; set once by comm/ after bootstrap (-1: unknown).
void set_error_rank(int rank);
int error_rank();
// The rank of this process as far as known: error_rank(), else the launcher's environment
// (OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, SLURM_PROCID under srun), else 0.
int process_rank();

namespace detail {
[[noreturn]] void throw_error(ErrorKind kind, const char* file, int line, const char* expr,
                              const std::string& message);
}  // namespace detail

}  // namespace cskv

// CSKV_CHECK(cond, kind, msg << ...) — throws cskv::Error with the streamed message.
#define CSKV_CHECK_KIND(cond, kind, msg)                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::ostringstream cskv_check_oss_;                                                  \
      cskv_check_oss_ << msg;                                                              \
      ::cskv::detail::throw_error(kind, __FILE__, __LINE__, #cond, cskv_check_oss_.str()); \
    }                                                                                      \
  } while (0)

#define CSKV_CHECK(cond, msg) CSKV_CHECK_KIND(cond, ::cskv::ErrorKind::kRuntime, msg)
#define CSKV_CHECK_INPUT(cond, msg) CSKV_CHECK_KIND(cond, ::cskv::ErrorKind::kInput, msg)
#define CSKV_CHECK_USAGE(cond, msg) CSKV_CHECK_KIND(cond, ::cskv::ErrorKind::kUsage, msg)

// Unconditional throws with the same formatting.
#define CSKV_FAIL_INPUT(msg) CSKV_CHECK_KIND(false, ::cskv::ErrorKind::kInput, msg)
#define CSKV_FAIL_USAGE(msg) CSKV_CHECK_KIND(false, ::cskv::ErrorKind::kUsage, msg)
#define CSKV_FAIL(msg) CSKV_CHECK_KIND(false, ::cskv::ErrorKind::kRuntime, msg)
