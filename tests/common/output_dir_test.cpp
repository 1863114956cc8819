// common/output_dir: the directory lock (a second holder is refused naming the first, a stale
// lock file is retaken, the file goes with its holder) and the foreign-file refusal.
#include "common/output_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <optional>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

namespace fs = std::filesystem;

std::string host_name() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

TEST(DirectoryLock, SecondHolderIsRefusedNamingTheFirst) {
  test::TempDir dir;
  const std::string out = dir / "out";
  auto lock = files::DirectoryLock::acquire(out, "--out");  // creates the directory
  EXPECT_EQ(lock.path(), out + "/.cskv.lock");
  EXPECT_EQ(test::read_file(out + "/.cskv.lock"),
            std::to_string(::getpid()) + " " + host_name() + "\n");
  const std::string message =
      test::input_error_of([&] { files::DirectoryLock::acquire(out, "--ckpt-dir"); });
  EXPECT_EQ(message, out + ": in use by another cskv run (pid " + std::to_string(::getpid()) +
                         " on host " + host_name() +
                         "); wait for it to finish, or use another --ckpt-dir");
  EXPECT_EQ(test::read_file(out + "/.cskv.lock"),
            std::to_string(::getpid()) + " " + host_name() + "\n")
      << "a refused taker must not touch the holder's lock file";
}

TEST(DirectoryLock, ReleaseRemovesTheFileAndAStaleFileIsRetaken) {
  test::TempDir dir;
  const std::string out = dir / "out";
  {
    auto lock = files::DirectoryLock::acquire(out, "--out");
    auto moved = std::move(lock);  // the moved-to lock holds it
    EXPECT_THROW(files::DirectoryLock::acquire(out, "--out"), Error);
  }
  EXPECT_FALSE(fs::exists(out + "/.cskv.lock"));
  // A killed run leaves its file behind, but no flock: it is simply retaken.
  test::write_file(out + "/.cskv.lock", "999999 elsewhere\n");
  {
    auto lock = files::DirectoryLock::acquire(out, "--out");
    EXPECT_EQ(test::read_file(out + "/.cskv.lock"),
              std::to_string(::getpid()) + " " + host_name() + "\n");
  }
  EXPECT_TRUE(fs::is_empty(out));
}

TEST(DirectoryLock, HolderThatHasNotWrittenYetIsNamedByItsFile) {
  test::TempDir dir;
  auto lock = files::DirectoryLock::acquire(dir.path(), "--out");
  test::write_file(dir / ".cskv.lock", "");  // same inode: the holder's text is not there yet
  EXPECT_EQ(test::input_error_of([&] { files::DirectoryLock::acquire(dir.path(), "--out"); }),
            dir.path() + ": in use by another cskv run (lock file " + dir.path() +
                "/.cskv.lock); wait for it to finish, or use another --out");
}

TEST(ForeignFile, RefusalNamesTheFileAndTheWayOut) {
  EXPECT_EQ(test::input_error_of([] {
              files::refuse_foreign_file("m/model.safetensors", "expected a cskv compressor file",
                                         "--out");
            }),
            "m/model.safetensors: exists and is not known to be an output of cskv (expected a "
            "cskv compressor file); move it away, use another --out, or pass --overwrite to "
            "replace it");
}

}  // namespace
}  // namespace cskv
