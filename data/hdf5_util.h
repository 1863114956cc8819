// HDF5 helpers shared by the shard, reader and stats code: the H5_CHECK macro, RAII handles,
// the one global HDF5 lock (for non-thread-safe builds) and typed attribute read/write.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace cskv::data::h5 {

// True when the linked HDF5 was built thread-safe (then the global lock is not taken).
bool library_threadsafe();

// Serialises every HDF5 call of this process when the library is not thread-safe. Recursive, so
// a guarded function may call another guarded function. Also silences HDF5's automatic error
// printing on the calling thread (the error stack is per thread in thread-safe builds).
class Guard {
 public:
  Guard();
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

 private:
  bool locked_ = false;
};

// HDF5's own error stack of the calling thread as one line ("H5Fopen(): unable to open file;
// ..."), then cleared. Empty when the stack is empty.
std::string error_stack_message();

// Throws cskv::Error (kRuntime) naming the failed call, the file, the object and HDF5's message.
[[noreturn]] void throw_h5_error(const char* call, const std::string& path,
                                 const std::string& object, const char* src_file, int src_line);

template <typename T>
T check(T ret, const char* call, const std::string& path, const std::string& object,
        const char* src_file, int src_line) {
  if (ret < 0) throw_h5_error(call, path, object, src_file, src_line);
  return ret;
}

// Owns one hid_t and closes it with the matching H5*close on destruction.
class Handle {
 public:
  enum class Kind { kFile, kGroup, kDataset, kDataspace, kDatatype, kAttribute, kPropList };
  Handle() = default;
  Handle(hid_t id, Kind kind) : id_(id), kind_(kind) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), kind_(o.kind_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();  // closes now (errors while closing are ignored here; use close() to see them)
  // Closes and reports a failure (H5Fclose flushes, so a full disk shows up here).
  void close(const std::string& path, const std::string& object);

 private:
  hid_t id_ = -1;
  Kind kind_ = Kind::kFile;
};

// The IEEE half-precision file/memory type (what h5py and numpy read as float16).
hid_t float16_type();

void write_attr_i64(hid_t obj, const std::string& name, int64_t v, const std::string& path);
void write_attr_u64(hid_t obj, const std::string& name, uint64_t v, const std::string& path);
void write_attr_i64_array(hid_t obj, const std::string& name, const std::vector<int64_t>& v,
                          const std::string& path);
// Variable-length UTF-8 string (h5py reads it as str).
void write_attr_string(hid_t obj, const std::string& name, const std::string& v,
                       const std::string& path);

// Readers throw an input error naming the file and attribute when it is missing or mistyped.
int64_t read_attr_i64(hid_t obj, const std::string& name, const std::string& path);
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& path);
std::vector<int64_t> read_attr_i64_array(hid_t obj, const std::string& name,
                                         const std::string& path);
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& path);

// Opens an existing file read-only; a missing, truncated or non-HDF5 file gives an input error
// "<path>: cannot open HDF5 file: <HDF5's message>".
Handle open_file_readonly(const std::string& path);

// Creation property lists that record no object times: HDF5 otherwise stamps every group and
// dataset header with its creation/modification time, so two identical runs would write files
// that differ in those bytes. Every file, group and dataset cskv writes is created with these.
Handle file_create_plist(const std::string& path);
Handle group_create_plist(const std::string& path, const std::string& object);
Handle dataset_create_plist(const std::string& path, const std::string& object);

// Creates the group path (e.g. "/layers/3") and any missing parents, one level at a time with
// group_create_plist() (HDF5's own intermediate-group creation would stamp times on parents).
Handle create_groups(hid_t file, const std::string& group_path, const std::string& path);

}  // namespace cskv::data::h5

// H5_CHECK(call, path, object): runs the HDF5 call, throws a cskv::Error when it returns < 0
// (naming the call, the file, the dataset/attribute and HDF5's own message); yields its result.
#define H5_CHECK(call, path, object) \
  ::cskv::data::h5::check((call), #call, (path), (object), __FILE__, __LINE__)
