// HDF5 helpers: error-stack capture, the process-wide HDF5 lock, RAII handles and attributes.
// Every HDF5 call of data/ goes through H5_CHECK under an h5::Guard.
#include "data/hdf5_util.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "common/error.h"

namespace cskv::data::h5 {
namespace {

// The one HDF5 lock of the process (recursive: guarded helpers call each other).
std::recursive_mutex& library_mutex() {
  static std::recursive_mutex m;
  return m;
}

// HDF5's own shutdown (an atexit handler) closes every id still open and flushes their files.
// After a failed write (a full disk) a file's state is broken and that shutdown crashes
// (H5F__close_cb, HDF5 1.10). cskv closes every file it writes explicitly, so the handler has
// nothing left to do: it is not registered. H5dont_atexit only works before the library is
// initialised, hence a static initialiser of this file (the first HDF5 call of the process).
[[maybe_unused]] const bool kNoHdf5Atexit = [] {
  H5dont_atexit();
  return true;
}();

// One line: HDF5's descriptions embed ctime()'s newline ("time = ...\n, filename = ...").
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

herr_t collect_error(unsigned n, const H5E_error2_t* err, void* client) {
  auto* out = static_cast<std::vector<std::string>*>(client);
  std::string line = std::string(err->func_name ? err->func_name : "?") +
                     "(): " + one_line(err->desc ? err->desc : "(no description)");
  out->push_back(line);
  (void)n;
  return 0;
}

// The integer after `key` in text ("errno = 28"), or -1.
long long number_after(const std::string& text, const std::string& key) {
  const auto at = text.find(key);
  if (at == std::string::npos) return -1;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str() + at + key.size(), &end, 10);
  return end == text.c_str() + at + key.size() ? -1 : v;
}

// A failed system write or read inside HDF5's file driver (the sec2 driver records errno and
// the size in its message): "No space left on device (needed 6144 more bytes)". Empty otherwise.
std::string system_io_failure(const std::vector<std::string>& stack, bool* writing) {
  for (const auto& line : stack) {
    const long long err = number_after(line, "errno = ");
    if (err <= 0) continue;
    *writing = line.find("write") != std::string::npos;
    const long long size =
        number_after(line, "total " + std::string(*writing ? "write" : "read") + " size = ");
    std::string out = std::strerror(static_cast<int>(err));
    if (size >= 0) {
      out += *writing ? " (needed " + std::to_string(size) + " more bytes)"
                      : " (reading " + std::to_string(size) + " bytes)";
    }
    return out;
  }
  return "";
}

std::vector<std::string> take_error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  return lines;
}

}  // namespace

bool library_threadsafe() {
  static const bool threadsafe = [] {
    hbool_t ts = 0;
    return H5is_library_threadsafe(&ts) >= 0 && ts != 0;
  }();
  return threadsafe;
}

Guard::Guard() {
  if (!library_threadsafe()) {
    library_mutex().lock();
    locked_ = true;
  }
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

Guard::~Guard() {
  if (locked_) library_mutex().unlock();
}

std::string error_stack_message() {
  const std::vector<std::string> lines = take_error_stack();
  std::string out;
  for (const auto& l : lines) {
    if (!out.empty()) out += "; ";
    out += l;
  }
  return out;
}

void throw_h5_error(const char* call, const std::string& path, const std::string& object,
                    const char* src_file, int src_line) {
  std::string name = call;
  const auto paren = name.find('(');
  if (paren != std::string::npos) name = name.substr(0, paren);
  const std::vector<std::string> lines = take_error_stack();
  std::ostringstream msg;
  bool writing = false;
  const std::string io = system_io_failure(lines, &writing);
  if (!io.empty()) {
    // The system's reason alone (a full disk, a file size limit, an I/O error), not HDF5's
    // stack of the layers it passed through.
    msg << path << ": cannot " << (writing ? "write " : "read ")
        << (object.empty() ? "the file" : object) << ": " << io;
    detail::throw_error(ErrorKind::kRuntime, src_file, src_line, call, msg.str());
  }
  msg << path << ": " << name << " failed";
  if (!object.empty()) msg << " on " << object;
  std::string stack;
  for (const auto& l : lines) stack += (stack.empty() ? "" : "; ") + l;
  msg << ": " << (stack.empty() ? "(HDF5 reported no error message)" : stack);
  detail::throw_error(ErrorKind::kRuntime, src_file, src_line, call, msg.str());
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    kind_ = o.kind_;
    o.id_ = -1;
  }
  return *this;
}

namespace {
herr_t close_id(hid_t id, Handle::Kind kind) {
  switch (kind) {
    case Handle::Kind::kFile:
      return H5Fclose(id);
    case Handle::Kind::kGroup:
      return H5Gclose(id);
    case Handle::Kind::kDataset:
      return H5Dclose(id);
    case Handle::Kind::kDataspace:
      return H5Sclose(id);
    case Handle::Kind::kDatatype:
      return H5Tclose(id);
    case Handle::Kind::kAttribute:
      return H5Aclose(id);
    case Handle::Kind::kPropList:
      return H5Pclose(id);
  }
  return -1;
}
}  // namespace

void Handle::reset() {
  if (id_ < 0) return;
  Guard g;
  close_id(id_, kind_);
  H5Eclear2(H5E_DEFAULT);
  id_ = -1;
}

void Handle::close(const std::string& path, const std::string& object) {
  if (id_ < 0) return;
  Guard g;
  const hid_t id = id_;
  id_ = -1;
  H5_CHECK(close_id(id, kind_), path, object);
}

hid_t float16_type() {
  Guard g;
  static const hid_t type = [] {
    // The layout h5py uses for numpy.float16: sign bit 15, exponent 10..14, mantissa 0..9.
    const hid_t t = H5_CHECK(H5Tcopy(H5T_IEEE_F32LE), "<memory>", "float16 type");
    H5_CHECK(H5Tset_fields(t, 15, 10, 5, 0, 10), "<memory>", "float16 type");
    H5_CHECK(H5Tset_size(t, 2), "<memory>", "float16 type");
    H5_CHECK(H5Tset_ebias(t, 15), "<memory>", "float16 type");
    return t;
  }();
  return type;
}

namespace {

void write_attr_raw(hid_t obj, const std::string& name, hid_t type, hid_t space, const void* data,
                    const std::string& path) {
  const std::string what = "attribute " + name;
  if (H5_CHECK(H5Aexists(obj, name.c_str()), path, what) > 0) {
    H5_CHECK(H5Adelete(obj, name.c_str()), path, what);
  }
  Handle attr(
      H5_CHECK(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), path, what),
      Handle::Kind::kAttribute);
  H5_CHECK(H5Awrite(attr.get(), type, data), path, what);
  attr.close(path, what);
}

Handle scalar_space(const std::string& path) {
  return Handle(H5_CHECK(H5Screate(H5S_SCALAR), path, "scalar dataspace"),
                Handle::Kind::kDataspace);
}

// Opens an attribute and checks its class and element count; throws an input error otherwise.
Handle open_attr(hid_t obj, const std::string& name, const std::string& path, H5T_class_t cls,
                 hssize_t* count) {
  Guard g;
  const std::string what = "attribute " + name;
  CSKV_CHECK_INPUT(H5_CHECK(H5Aexists(obj, name.c_str()), path, what) > 0,
                   path << ": attribute '" << name << "' is missing");
  Handle attr(H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT), path, what),
              Handle::Kind::kAttribute);
  Handle type(H5_CHECK(H5Aget_type(attr.get()), path, what), Handle::Kind::kDatatype);
  const H5T_class_t found = H5_CHECK(H5Tget_class(type.get()), path, what);
  CSKV_CHECK_INPUT(found == cls, path << ": attribute '" << name << "' has HDF5 type class "
                                      << static_cast<int>(found) << ", expected "
                                      << static_cast<int>(cls));
  Handle space(H5_CHECK(H5Aget_space(attr.get()), path, what), Handle::Kind::kDataspace);
  *count = H5_CHECK(H5Sget_simple_extent_npoints(space.get()), path, what);
  return attr;
}

}  // namespace

void write_attr_i64(hid_t obj, const std::string& name, int64_t v, const std::string& path) {
  Guard g;
  Handle space = scalar_space(path);
  write_attr_raw(obj, name, H5T_NATIVE_INT64, space.get(), &v, path);
}

void write_attr_u64(hid_t obj, const std::string& name, uint64_t v, const std::string& path) {
  Guard g;
  Handle space = scalar_space(path);
  write_attr_raw(obj, name, H5T_NATIVE_UINT64, space.get(), &v, path);
}

void write_attr_i64_array(hid_t obj, const std::string& name, const std::vector<int64_t>& v,
                          const std::string& path) {
  Guard g;
  const hsize_t dims[1] = {static_cast<hsize_t>(v.size())};
  // An empty array is stored as a null dataspace-free zero-length simple dataspace.
  Handle space(H5_CHECK(H5Screate_simple(1, dims, nullptr), path, "attribute " + name),
               Handle::Kind::kDataspace);
  const int64_t dummy = 0;
  write_attr_raw(obj, name, H5T_NATIVE_INT64, space.get(), v.empty() ? &dummy : v.data(), path);
}

void write_attr_string(hid_t obj, const std::string& name, const std::string& v,
                       const std::string& path) {
  Guard g;
  const std::string what = "attribute " + name;
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1), path, what), Handle::Kind::kDatatype);
  H5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE), path, what);
  H5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, what);
  Handle space = scalar_space(path);
  const char* ptr = v.c_str();
  write_attr_raw(obj, name, type.get(), space.get(), &ptr, path);
}

int64_t read_attr_i64(hid_t obj, const std::string& name, const std::string& path) {
  Guard g;
  hssize_t count = 0;
  Handle attr = open_attr(obj, name, path, H5T_INTEGER, &count);
  CSKV_CHECK_INPUT(count == 1, path << ": attribute '" << name << "' has " << count
                                    << " elements, expected a scalar");
  int64_t v = 0;
  H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), path, "attribute " + name);
  return v;
}

uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& path) {
  Guard g;
  hssize_t count = 0;
  Handle attr = open_attr(obj, name, path, H5T_INTEGER, &count);
  CSKV_CHECK_INPUT(count == 1, path << ": attribute '" << name << "' has " << count
                                    << " elements, expected a scalar");
  uint64_t v = 0;
  H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_UINT64, &v), path, "attribute " + name);
  return v;
}

std::vector<int64_t> read_attr_i64_array(hid_t obj, const std::string& name,
                                         const std::string& path) {
  Guard g;
  hssize_t count = 0;
  Handle attr = open_attr(obj, name, path, H5T_INTEGER, &count);
  std::vector<int64_t> v(static_cast<size_t>(count));
  if (count > 0)
    H5_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, v.data()), path, "attribute " + name);
  return v;
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& path) {
  Guard g;
  const std::string what = "attribute " + name;
  hssize_t count = 0;
  Handle attr = open_attr(obj, name, path, H5T_STRING, &count);
  CSKV_CHECK_INPUT(count == 1, path << ": attribute '" << name << "' has " << count
                                    << " elements, expected one string");
  Handle ftype(H5_CHECK(H5Aget_type(attr.get()), path, what), Handle::Kind::kDatatype);
  const htri_t is_vlen = H5_CHECK(H5Tis_variable_str(ftype.get()), path, what);
  if (is_vlen > 0) {
    Handle mtype(H5_CHECK(H5Tcopy(H5T_C_S1), path, what), Handle::Kind::kDatatype);
    H5_CHECK(H5Tset_size(mtype.get(), H5T_VARIABLE), path, what);
    H5_CHECK(H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get())), path, what);
    char* ptr = nullptr;
    H5_CHECK(H5Aread(attr.get(), mtype.get(), &ptr), path, what);
    std::string out = ptr ? ptr : "";
    if (ptr) H5free_memory(ptr);
    return out;
  }
  // Fixed-length string (as h5py writes numpy.bytes_).
  const size_t size = H5Tget_size(ftype.get());
  CSKV_CHECK(size > 0, path << ": H5Tget_size failed on " << what);
  std::string buf(size, '\0');
  H5_CHECK(H5Aread(attr.get(), ftype.get(), buf.data()), path, what);
  const auto nul = buf.find('\0');
  if (nul != std::string::npos) buf.resize(nul);
  return buf;
}

Handle open_file_readonly(const std::string& path) {
  Guard g;
  const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) {
    const std::string stack = error_stack_message();
    CSKV_FAIL_INPUT(path << ": cannot open HDF5 file: "
                         << (stack.empty() ? "(HDF5 reported no error message)" : stack));
  }
  return Handle(id, Handle::Kind::kFile);
}

Handle file_create_plist(const std::string& path) {
  Guard g;
  Handle fcpl(H5_CHECK(H5Pcreate(H5P_FILE_CREATE), path, "file creation properties"),
              Handle::Kind::kPropList);
  // The file creation list is a group creation list too: this covers the root group.
  H5_CHECK(H5Pset_obj_track_times(fcpl.get(), 0), path, "file creation properties");
  return fcpl;
}

Handle group_create_plist(const std::string& path, const std::string& object) {
  Guard g;
  Handle gcpl(H5_CHECK(H5Pcreate(H5P_GROUP_CREATE), path, object), Handle::Kind::kPropList);
  H5_CHECK(H5Pset_obj_track_times(gcpl.get(), 0), path, object);
  return gcpl;
}

Handle dataset_create_plist(const std::string& path, const std::string& object) {
  Guard g;
  Handle dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE), path, object), Handle::Kind::kPropList);
  H5_CHECK(H5Pset_obj_track_times(dcpl.get(), 0), path, object);
  return dcpl;
}

Handle create_groups(hid_t file, const std::string& group_path, const std::string& path) {
  Guard g;
  CSKV_CHECK(
      !group_path.empty() && group_path[0] == '/' && group_path.back() != '/',
      path << ": group path must be absolute without a trailing '/', got '" << group_path << "'");
  Handle gcpl = group_create_plist(path, group_path);
  Handle group;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = group_path.find('/', pos + 1);
    const std::string level = group_path.substr(0, pos);
    const bool exists = H5_CHECK(H5Lexists(file, level.c_str(), H5P_DEFAULT), path, level) > 0;
    group = Handle(
        exists ? H5_CHECK(H5Gopen2(file, level.c_str(), H5P_DEFAULT), path, level)
               : H5_CHECK(H5Gcreate2(file, level.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT),
                          path, level),
        Handle::Kind::kGroup);
  }
  return group;
}

}  // namespace cskv::data::h5
