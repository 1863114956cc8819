# Finds every external dependency once and exposes it as an imported target.

# LibTorch 2.x. A LibTorch the user names (-DCMAKE_PREFIX_PATH=/path/to/libtorch, or Torch_DIR)
# comes first; otherwise the one in the project virtual environment that launch/install-deps.sh
# creates: $CSKV_VENV, else ~/.cache/cskv/venv-<first 12 hex of sha256(launch/requirements.txt)>.
# The venv's torch directory goes on CMAKE_PREFIX_PATH as a prefix (not only its share/cmake), so
# that find_library() takes its lib/ before a system LibTorch (Debian's 1.13 in /usr/lib).
file(SHA256 ${PROJECT_SOURCE_DIR}/launch/requirements.txt _cskv_req_hash)
string(SUBSTRING "${_cskv_req_hash}" 0 12 _cskv_req_key)
if(DEFINED ENV{CSKV_VENV} AND NOT "$ENV{CSKV_VENV}" STREQUAL "")
  set(_cskv_venv_default "$ENV{CSKV_VENV}")
else()
  set(_cskv_venv_default "$ENV{HOME}/.cache/cskv/venv-${_cskv_req_key}")
endif()
set(CSKV_VENV "${_cskv_venv_default}" CACHE PATH
    "Project virtual environment (torch + the tests' Python references), from launch/install-deps.sh")
set(CSKV_PYTHON "${CSKV_VENV}/bin/python" CACHE FILEPATH
    "Python interpreter with numpy, h5py, torch, safetensors, transformers, tokenizers, sentencepiece")
file(GLOB _cskv_venv_torch LIST_DIRECTORIES true "${CSKV_VENV}/lib/python3*/site-packages/torch")
if(NOT Torch_DIR AND _cskv_venv_torch)
  list(GET _cskv_venv_torch 0 _cskv_venv_torch)
  list(APPEND CMAKE_PREFIX_PATH "${_cskv_venv_torch}")
endif()
find_package(Torch REQUIRED)
if(Torch_VERSION VERSION_LESS 2.0)
  message(FATAL_ERROR "LibTorch ${Torch_VERSION} found (${TORCH_INSTALL_PREFIX}); cskv needs "
                      "LibTorch 2.x (launch/install-deps.sh installs torch from "
                      "launch/requirements.txt into ${CSKV_VENV}; or -DCMAKE_PREFIX_PATH=<libtorch>)")
endif()
# CUDA in this LibTorch (torch_cuda among its libraries) switches the CUDA code paths on.
set(CSKV_TORCH_HAS_CUDA OFF)
if(TARGET torch_cuda OR "${TORCH_LIBRARIES}" MATCHES "torch_cuda")
  set(CSKV_TORCH_HAS_CUDA ON)
endif()
message(STATUS "cskv: LibTorch ${Torch_VERSION} from ${TORCH_INSTALL_PREFIX} (CUDA: ${CSKV_TORCH_HAS_CUDA})")
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(spdlog REQUIRED)
find_package(cxxopts REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(Threads REQUIRED)

# LibTorch exports a plain variable list; wrap it in one imported target. Its include directory
# also ships its own fmt (and protobuf); spdlog is built against the system fmt, so a directory
# holding only a link to the system's fmt/ comes before LibTorch's headers.
find_package(fmt REQUIRED)
get_target_property(_cskv_fmt_include fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
list(GET _cskv_fmt_include 0 _cskv_fmt_include)
set(_cskv_fmt_shim "${CMAKE_BINARY_DIR}/cskv-system-fmt")
file(MAKE_DIRECTORY "${_cskv_fmt_shim}")
file(CREATE_LINK "${_cskv_fmt_include}/fmt" "${_cskv_fmt_shim}/fmt" SYMBOLIC)
if(NOT TARGET cskv::torch)
  add_library(cskv::torch INTERFACE IMPORTED)
  set_target_properties(cskv::torch PROPERTIES
    INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}"
    INTERFACE_INCLUDE_DIRECTORIES "${_cskv_fmt_shim};${TORCH_INCLUDE_DIRS}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_cskv_fmt_shim};${TORCH_INCLUDE_DIRS}"
    # PyPI's libtorch.so exports its own unversioned copy of std::filesystem (92 symbols), and a
    # program that loads it before libstdc++ binds std::filesystem::remove_all there and crashes
    # (a null call). libstdc++ first among the program's libraries puts its definitions first.
    INTERFACE_LINK_OPTIONS "LINKER:--push-state,--no-as-needed;-lstdc++;LINKER:--pop-state")
endif()

# HDF5 (Debian: serial flavour) as an imported target.
if(NOT TARGET cskv::hdf5)
  add_library(cskv::hdf5 INTERFACE IMPORTED)
  set_target_properties(cskv::hdf5 PROPERTIES
    INTERFACE_LINK_LIBRARIES "${HDF5_C_LIBRARIES}"
    INTERFACE_INCLUDE_DIRECTORIES "${HDF5_C_INCLUDE_DIRS}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${HDF5_C_INCLUDE_DIRS}"
    INTERFACE_COMPILE_DEFINITIONS "${HDF5_C_DEFINITIONS}")
endif()

# CUDA + NCCL. CSKV_WITH_CUDA (the CUDA code paths: device memory, streams, pinned buffers) is on
# whenever LibTorch has CUDA; CSKV_WITH_NCCL (the NCCL communicator) whenever CUDA is on and NCCL
# is found — the NCCL that LibTorch itself loads (the venv's nvidia/nccl) before a system one, so
# that one libnccl.so.2 serves both.
option(CSKV_WITH_CUDA "Build the CUDA code paths (needs a LibTorch with CUDA)" ${CSKV_TORCH_HAS_CUDA})
if(CSKV_WITH_CUDA AND NOT CSKV_TORCH_HAS_CUDA)
  message(FATAL_ERROR "CSKV_WITH_CUDA=ON but LibTorch ${Torch_VERSION} (${TORCH_INSTALL_PREFIX}) "
                      "was built without CUDA")
endif()
find_package(CUDAToolkit QUIET)
set(_cskv_nccl_hints $ENV{NCCL_HOME} $ENV{NCCL_ROOT})
if(TORCH_INSTALL_PREFIX AND EXISTS "${TORCH_INSTALL_PREFIX}/../nvidia/nccl")
  list(PREPEND _cskv_nccl_hints "${TORCH_INSTALL_PREFIX}/../nvidia/nccl")
endif()
# First the hints alone (LibTorch's own NCCL, NCCL_HOME), then the usual search.
foreach(_cskv_pass hints default)
  if(_cskv_pass STREQUAL "hints")
    set(_cskv_only_hints NO_DEFAULT_PATH)
  else()
    set(_cskv_only_hints "")
  endif()
  find_path(NCCL_INCLUDE_DIR nccl.h
    HINTS ${_cskv_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}
    PATH_SUFFIXES include ${_cskv_only_hints})
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
    HINTS ${_cskv_nccl_hints} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
    PATH_SUFFIXES lib lib64 ${_cskv_only_hints})
endforeach()
set(_cskv_nccl_found OFF)
if(CSKV_WITH_CUDA AND CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  set(_cskv_nccl_found ON)
endif()
message(STATUS "cskv: CUDA code paths ${CSKV_WITH_CUDA}")
option(CSKV_WITH_NCCL "Build the NCCL communicator for CUDA tensors" ${_cskv_nccl_found})
if(CSKV_WITH_NCCL)
  if(NOT _cskv_nccl_found)
    message(FATAL_ERROR "CSKV_WITH_NCCL=ON but CUDA (CSKV_WITH_CUDA ${CSKV_WITH_CUDA}), the CUDA "
                        "toolkit (${CUDAToolkit_FOUND}) or NCCL "
                        "(header: ${NCCL_INCLUDE_DIR}, library: ${NCCL_LIBRARY}) was not found; "
                        "set NCCL_HOME or -DCSKV_WITH_NCCL=OFF")
  endif()
  add_library(cskv::nccl UNKNOWN IMPORTED)
  set_target_properties(cskv::nccl PROPERTIES
    IMPORTED_LOCATION "${NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES CUDA::cudart)
  message(STATUS "cskv: NCCL communicator ON (${NCCL_LIBRARY})")
else()
  message(STATUS "cskv: NCCL communicator OFF")
endif()
