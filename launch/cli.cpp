// Option parsing helpers and the error→exit-status boundary of the CLI.
#include "launch/cli.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>

#include "comm/collectives.h"
#include "comm/factory.h"
#include "common/device.h"
#include "common/error.h"
#include "common/log.h"
#include "common/threads.h"
#include "launch/env.h"
#include "launch/settings.h"
#include "model/llama.h"

namespace cskv::cli {

cxxopts::Options make_options(const std::string& sub, const std::string& description) {
  cxxopts::Options o("cskv " + sub, description);
  o.set_width(100);
  o.add_options("general")("h,help", "Show this help and exit");
  add_settings(o, general_settings());
  return o;
}

namespace {

// "--flag" of argv[i] ("--flag=value", or the value after "--flag"), else "argument <i>".
std::string argument_name(int i, char** argv) {
  const auto flag_of = [](const std::string& arg) {
    return arg.substr(0, std::min({arg.find('='), arg.size(), std::size_t{64}}));
  };
  const std::string arg(argv[i], std::min(std::strlen(argv[i]), std::size_t{80}));
  if (arg.rfind("--", 0) == 0) return flag_of(arg);
  const std::string prev = i > 1 ? argv[i - 1] : "";
  if (prev.rfind("--", 0) == 0 && prev.find('=') == std::string::npos) return flag_of(prev);
  return "argument " + std::to_string(i);
}

void check_argument_sizes(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::size_t bytes = std::strlen(argv[i]);
    CSKV_CHECK_USAGE(bytes <= kMaxArgumentBytes,
                     argument_name(i, argv) << ": an argument of " << bytes << " bytes; at most "
                                            << kMaxArgumentBytes << " are accepted");
  }
}

void refuse_repeated_flags(const cxxopts::ParseResult& r) {
  std::set<std::string> seen;
  for (const auto& kv : r.arguments()) {
    CSKV_CHECK_USAGE(seen.insert(kv.key()).second,
                     "--" << kv.key() << " is given twice (give each flag once)");
  }
}

// What a flag of the setting tables takes, for a value that does not parse: "an integer".
std::string expected_value(const std::string& flag) {
  for (const SettingTable* table : {&run_settings(), &runtime_settings()}) {
    for (const Setting& s : *table) {
      if (s.flag == flag) return json_type_name(s.type);
    }
  }
  return "a value of its type";
}

// cxxopts says "Argument ‘abc’ failed to parse" without the flag: find the flag that was given
// that value ("--epochs abc" or "--epochs=abc") and name it, with what it takes.
std::string bad_value_message(const std::string& what, int argc, char** argv) {
  const std::string open = "\xe2\x80\x98", close = "\xe2\x80\x99";  // ‘ ’
  const size_t a = what.find(open), b = what.rfind(close);
  if (a == std::string::npos || b == std::string::npos || b < a) return what;
  const std::string value = what.substr(a + open.size(), b - a - open.size());
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string flag;
    if (arg.rfind("--", 0) == 0 && arg.size() > value.size() + 3 &&
        arg.compare(arg.size() - value.size() - 1, std::string::npos, "=" + value) == 0) {
      flag = arg.substr(2, arg.size() - value.size() - 3);
    } else if (arg == value && i > 1 && std::strncmp(argv[i - 1], "--", 2) == 0) {
      flag = argv[i - 1] + 2;
    }
    if (!flag.empty()) {
      return "--" + flag + ": expected " + expected_value(flag) + ", found '" + value + "'";
    }
  }
  return what;
}

}  // namespace

std::optional<cxxopts::ParseResult> parse(cxxopts::Options& options, int argc, char** argv,
                                          RepeatedFlags repeated) {
  check_argument_sizes(argc, argv);
  cxxopts::ParseResult r;
  try {
    r = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::incorrect_argument_type& e) {
    throw Error(ErrorKind::kUsage, bad_value_message(e.what(), argc, argv) + " (see '" +
                                       options.program() + " --help')");
  } catch (const cxxopts::exceptions::exception& e) {
    throw Error(ErrorKind::kUsage,
                std::string(e.what()) + " (see '" + options.program() + " --help')");
  }
  if (r.count("help")) {
    std::cout << options.help() << std::endl;
    return std::nullopt;
  }
  if (!r.unmatched().empty()) {
    throw Error(ErrorKind::kUsage, "unexpected argument '" + r.unmatched().front() + "' (see '" +
                                       options.program() + " --help')");
  }
  if (repeated == RepeatedFlags::kRefuse) refuse_repeated_flags(r);
  log::set_level(r["log-level"].as<std::string>());
  return r;
}

template <typename T>
T required(const cxxopts::ParseResult& r, const std::string& flag) {
  if (!r.count(flag)) throw Error(ErrorKind::kUsage, "missing required option --" + flag);
  try {
    return r[flag].as<T>();
  } catch (const cxxopts::exceptions::exception& e) {
    throw Error(ErrorKind::kUsage, "--" + flag + ": " + e.what());
  }
}
template std::string required<std::string>(const cxxopts::ParseResult&, const std::string&);
template int required<int>(const cxxopts::ParseResult&, const std::string&);
template int64_t required<int64_t>(const cxxopts::ParseResult&, const std::string&);
template double required<double>(const cxxopts::ParseResult&, const std::string&);

namespace {

// The first line of a library's message (LibTorch appends a backtrace, HDF5 its error stack).
std::string first_line(const std::string& text) {
  const std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? "(no message)" : line;
}

// cskv's own messages are one line by construction; a system's message inside one (HDF5's stack
// holds a ctime() line break) is joined, never cut.
std::string joined(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c != '\n') {
      out += c;
    } else if (!out.empty() && out.back() != ' ') {
      out += ' ';
    }
  }
  return out;
}

}  // namespace

int guarded(const std::string& sub, const std::function<int()>& body) {
  const std::string prefix = sub.empty() ? "cskv: " : "cskv " + sub + ": ";
  try {
    return body();
  } catch (const Error& e) {
    if (e.collective() && process_rank() > 0) {
      return e.kind() == ErrorKind::kUsage ? kExitUsage : kExitError;  // rank 0 reports it
    }
    std::cerr << prefix << (e.kind() == ErrorKind::kUsage ? "usage error: " : "error: ")
              << joined(e.message()) << std::endl;
    if (!e.where().empty()) log::get("cli")->debug("raised at {}", e.where());
    return e.kind() == ErrorKind::kUsage ? kExitUsage : kExitError;
  } catch (const c10::Error& e) {
    std::cerr << prefix << "error: " << first_line(e.what_without_backtrace()) << std::endl;
    return kExitError;
  } catch (const std::bad_alloc&) {
    std::cerr << prefix << "error: out of memory (an allocation failed)" << std::endl;
    return kExitError;
  } catch (const std::exception& e) {
    std::cerr << prefix << "error: " << first_line(e.what()) << std::endl;
    return kExitError;
  } catch (...) {
    std::cerr << prefix << "error: unknown exception" << std::endl;
    return kExitError;
  }
}

void add_runtime_options(cxxopts::Options& options) { add_settings(options, runtime_settings()); }

namespace {

// Every rank learns every rank's verdict, so a mismatch stops all of them with the same message
// (printed once, by rank 0) instead of leaving the good ranks waiting in their next collective.
void require_on_all_ranks(comm::Communicator& world, const std::string& my_error) {
  const int64_t failed = comm::sum_over_ranks(world, int64_t{my_error.empty() ? 0 : 1});
  if (failed == 0) return;
  std::optional<Error> mine;
  if (!my_error.empty()) {
    std::string message = "rank " + std::to_string(world.rank()) + ": " + my_error;
    if (failed > 1) message += " (and " + std::to_string(failed - 1) + " more rank(s))";
    mine = Error(ErrorKind::kRuntime, message, {}, /*collective=*/true);
  }
  comm::throw_if_any_failed(world, mine);
}

std::string device_label(const std::string& device, const comm::Communicator& world) {
  if (device != "cpu") return device::select(device, world.local_rank()).str();
  if (world.backend_name() == "nccl") return "cuda:" + std::to_string(world.local_rank());
  return device;
}

}  // namespace

std::unique_ptr<comm::Communicator> start_runtime(const cxxopts::ParseResult& r,
                                                  const std::string& device) {
  check_settings(r, runtime_settings());
  const int threads = r["threads"].as<int>();
  set_compute_threads(threads);
  comm::CommOptions co;
  co.backend = r["backend"].as<std::string>();
  auto world = comm::make_communicator(co);
  const std::string log_dir = r["log-dir"].as<std::string>();
  if (!log_dir.empty()) {
    std::filesystem::create_directories(log_dir);
    log::add_file_sink(log_dir, world->rank());
  }
  const launch::ProcessPlace place{world->rank(), world->size(), world->local_rank()};
  const auto check = launch::check_launcher_env(place, launch::launcher_environment());
  // --backend local under a launcher: every process works alone, as asked; nothing to compare.
  require_on_all_ranks(*world, world->backend_name() == "local" ? "" : check.error);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  log::get("launch")->info(launch::start_line(
      {host, place, device_label(device, *world), threads, world->backend_name(), check.launcher}));
  return world;
}

}  // namespace cskv::cli
