# Finds every external dependency once and exposes it as an imported target.
find_package(Torch REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(spdlog REQUIRED)
find_package(cxxopts REQUIRED)
find_package(nlohmann_json 3.9 REQUIRED)
find_package(Threads REQUIRED)

# LibTorch exports a plain variable list; wrap it in one imported target.
if(NOT TARGET cskv::torch)
  add_library(cskv::torch INTERFACE IMPORTED)
  set_target_properties(cskv::torch PROPERTIES
    INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}"
    INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}")
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

# CUDA toolkit + NCCL: the NCCL communicator is built only when both are present.
find_package(CUDAToolkit QUIET)
find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS $ENV{NCCL_HOME} $ENV{NCCL_ROOT} ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY nccl
  HINTS $ENV{NCCL_HOME} $ENV{NCCL_ROOT} ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
  PATH_SUFFIXES lib lib64)
set(_cskv_nccl_found OFF)
if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  set(_cskv_nccl_found ON)
endif()
option(CSKV_WITH_NCCL "Build the NCCL communicator for CUDA tensors" ${_cskv_nccl_found})
if(CSKV_WITH_NCCL)
  if(NOT _cskv_nccl_found)
    message(FATAL_ERROR "CSKV_WITH_NCCL=ON but the CUDA toolkit (${CUDAToolkit_FOUND}) or NCCL "
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
