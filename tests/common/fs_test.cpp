// Tests of common/fs: atomic replacement leaves no temp file, and read_whole_file refuses
// directories, FIFOs, devices, oversize and missing files with one exact line naming the path.
#include "common/fs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/support/test_support.h"

namespace cskv {
namespace {

using test::input_error_of;

TEST(Fs, WriteFileAtomicReplacesContentAndLeavesNoTempFile) {
  test::TempDir dir;
  const std::string path = dir / "a.json";
  files::write_file_atomic(path, "first");
  files::write_file_atomic(path, "second\n");
  EXPECT_EQ(files::read_whole_file(path), "second\n");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator{}),
            1);
}

TEST(Fs, WriteFileAtomicWithStreamsThroughFillAndLeavesNoTempFile) {
  test::TempDir dir;
  const std::string path = dir / "t.bin";
  files::write_file_atomic_with(path, [](int fd, const std::string& tmp) {
    files::write_all(fd, "abc", 3, tmp);
    files::write_all(fd, "de", 2, tmp);
  });
  EXPECT_EQ(files::read_whole_file(path), "abcde");
  EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::all,
            std::filesystem::perms(0644));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator{}),
            1);
}

TEST(Fs, WriteFileAtomicWithRemovesTheTempFileWhenFillThrows) {
  test::TempDir dir;
  const std::string path = dir / "t.bin";
  files::write_file_atomic(path, "old");
  EXPECT_THROW(files::write_file_atomic_with(path,
                                             [](int fd, const std::string& tmp) {
                                               files::write_all(fd, "partial", 7, tmp);
                                               CSKV_FAIL("fill failed");
                                             }),
               Error);
  EXPECT_EQ(files::read_whole_file(path), "old");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator{}),
            1);
}

TEST(Fs, WriteFileAtomicIntoMissingDirectoryNamesTheTempFile) {
  test::TempDir dir;
  const std::string path = dir / "no/such/a.json";
  try {
    files::write_file_atomic(path, "x");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), path + ".tmp: cannot create: No such file or directory");
  }
}

TEST(Fs, ReadWholeFileRefusesADirectory) {
  test::TempDir dir;
  EXPECT_EQ(input_error_of([&] { files::read_whole_file(dir.path(), 100, "config"); }),
            dir.path() + ": expected a regular config, found a directory");
}

TEST(Fs, ReadWholeFileRefusesAFifoWithoutBlocking) {
  test::TempDir dir;
  const std::string fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(input_error_of([&] { files::read_whole_file(fifo); }),
            fifo + ": expected a regular file, found a FIFO");
  EXPECT_EQ(input_error_of([&] { files::read_whole_file_if_exists(fifo); }),
            fifo + ": expected a regular file, found a FIFO");
}

TEST(Fs, ReadWholeFileRefusesACharacterDevice) {
  EXPECT_EQ(input_error_of([] { files::read_whole_file("/dev/zero", 1 << 20, "manifest"); }),
            "/dev/zero: expected a regular manifest, found a character device");
}

TEST(Fs, ReadWholeFileRefusesAFileOverTheLimit) {
  test::TempDir dir;
  const std::string path = dir / "big.json";
  files::write_file_atomic(path, std::string(11, 'x'));
  EXPECT_EQ(input_error_of([&] { files::read_whole_file(path, 10, "config"); }),
            path + ": config is 11 bytes, larger than the limit of 10 bytes");
  EXPECT_EQ(files::read_whole_file(path, 11), std::string(11, 'x'));
}

TEST(Fs, ReadWholeFileNamesAMissingFile) {
  test::TempDir dir;
  const std::string path = dir / "missing.json";
  EXPECT_EQ(input_error_of([&] { files::read_whole_file(path, 10, "config"); }),
            path + ": cannot open config: No such file or directory");
  EXPECT_FALSE(files::read_whole_file_if_exists(path).has_value());
}

TEST(Fs, ReadWholeFileReadsEmptyAndBinaryFiles) {
  test::TempDir dir;
  files::write_file_atomic(dir / "empty", "");
  EXPECT_EQ(files::read_whole_file(dir / "empty"), "");
  const std::string bytes("a\0b\xff", 4);
  files::write_file_atomic(dir / "bin", bytes);
  EXPECT_EQ(files::read_whole_file(dir / "bin"), bytes);
}

TEST(Fs, ParentDirectoryDefaultsToDot) {
  EXPECT_EQ(files::parent_directory("a.json"), ".");
  EXPECT_EQ(files::parent_directory("d/e/a.json"), "d/e");
}

}  // namespace
}  // namespace cskv
