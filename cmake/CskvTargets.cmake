# Project-wide target helpers: warnings on our code only, one shared precompiled header for LibTorch.
add_library(cskv_warnings INTERFACE)
target_compile_options(cskv_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Winvalid-pch -Wno-unused-parameter>)

# Every C++ target in the project compiles the same flags, so they all reuse one PCH.
set(CSKV_PCH_HEADER ${CMAKE_CURRENT_LIST_DIR}/cskv_pch.h)
add_library(cskv_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/cskv_pch.cpp)
set_target_properties(cskv_pch PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_link_libraries(cskv_pch PRIVATE cskv::torch nlohmann_json::nlohmann_json spdlog::spdlog cskv_warnings)
target_precompile_headers(cskv_pch PRIVATE ${CSKV_PCH_HEADER})

# cskv_setup_target(<target>): warnings, PIC (so the PCH matches) and the shared PCH.
function(cskv_setup_target target)
  target_link_libraries(${target} PRIVATE cskv_warnings)
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  get_target_property(_cskv_type ${target} TYPE)
  if(_cskv_type STREQUAL "EXECUTABLE")
    # CMake compiles PIC executables with -fPIE, but GCC rejects a PCH built with -fPIC for them;
    # a later -fPIC cancels -fPIE so the flags match the PCH (the link stays PIE).
    target_compile_options(${target} PRIVATE -fPIC)
  endif()
  target_precompile_headers(${target} REUSE_FROM cskv_pch)
endfunction()

# cskv_add_library(<name> SOURCES ... DEPS ... PRIVATE_DEPS ...): a static library for one folder
# with the alias cskv::<folder>; DEPS are what its headers expose, PRIVATE_DEPS what only its
# sources use.
function(cskv_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  cskv_setup_target(${name})
  string(REPLACE "cskv_" "cskv::" _cskv_alias ${name})  # cskv_pipeline -> cskv::pipeline
  add_library(${_cskv_alias} ALIAS ${name})
endfunction()
