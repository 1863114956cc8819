// Implementation of the shared test helpers (POSIX process spawning and temp dirs).
#include "tests/support/test_support.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/threads.h"

extern char** environ;

namespace cskv::test {

namespace {
// Every test process computes with one ATen and one OpenBLAS thread, as `cskv --threads 1` does:
// float64 LAPACK results (eigenvectors of the pca init) depend on OpenBLAS's thread count, and
// the machine's core count must not decide what a test sees.
class FixedThreads : public ::testing::Environment {
 public:
  void SetUp() override { set_compute_threads(1); }
};
[[maybe_unused]] ::testing::Environment* const kFixedThreads =
    ::testing::AddGlobalTestEnvironment(new FixedThreads);
}  // namespace

TempDir::TempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/cskv-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

namespace {
std::string drain(int fd) {
  std::string s;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return s;
}
}  // namespace

CommandResult run_command(const std::vector<std::string>& argv) { return run_command(argv, {}); }

CommandResult run_command(
    const std::vector<std::string>& argv,
    const std::function<void(int pid, const std::atomic<bool>& exited)>& during) {
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) || pipe(err_pipe)) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawn_file_actions_addclose(&fa, out_pipe[0]);
  posix_spawn_file_actions_addclose(&fa, err_pipe[0]);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    throw std::runtime_error("cannot spawn " + argv[0]);
  }
  CommandResult r;
  std::atomic<bool> exited{false};
  std::thread side;
  if (during) side = std::thread([&] { during(pid, exited); });
  std::thread t([&] { r.err = drain(err_pipe[0]); });
  r.out = drain(out_pipe[0]);
  t.join();
  int status = 0;
  waitpid(pid, &status, 0);
  exited = true;
  if (side.joinable()) side.join();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::vector<ProcessInfo> find_processes(const std::string& exe_name, const std::string& needle) {
  std::vector<ProcessInfo> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream cmd(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    const std::string argv0 = cmdline.substr(0, cmdline.find('\0'));
    if (std::filesystem::path(argv0).filename() != exe_name) continue;
    if (cmdline.find(needle) == std::string::npos) continue;
    ProcessInfo p;
    p.pid = std::stoi(name);
    std::ifstream env(entry.path() / "environ", std::ios::binary);
    std::string var;
    while (std::getline(env, var, '\0')) {
      if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) p.mpi_rank = std::stoi(var.substr(21));
    }
    found.push_back(p);
  }
  std::sort(found.begin(), found.end(),
            [](const ProcessInfo& a, const ProcessInfo& b) { return a.mpi_rank < b.mpi_rank; });
  return found;
}

CommandResult run_cskv(const std::vector<std::string>& args) {
  const char* env = std::getenv("CSKV_BIN");
  std::vector<std::string> argv{env && *env ? env : CSKV_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv);
}

void allow_mpirun_as_root() {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
}

std::string python3() { return CSKV_TEST_PYTHON; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write " + path);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const cskv::Error& e) {
    return e.message();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected cskv::Error, got std::exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected cskv::Error, nothing was thrown";
  return {};
}

std::string input_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const cskv::Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInput) << e.message();
    return e.message();
  }
  ADD_FAILURE() << "no cskv::Error thrown";
  return {};
}

}  // namespace cskv::test
