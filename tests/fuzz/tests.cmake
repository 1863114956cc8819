# libFuzzer target for the safetensors header parser, built with clang++ directly (the rest of the
# project uses GCC) and run by CTest for a bounded time: test `fuzz_safetensors_header`.
if(NOT CSKV_BUILD_FUZZ)
  return()
endif()

find_program(CSKV_CLANGXX NAMES clang++ clang++-16 clang++-15 clang++-14)
if(NOT CSKV_CLANGXX)
  message(WARNING "cskv: CSKV_BUILD_FUZZ is ON but clang++ was not found: the safetensors header "
                  "fuzzer is NOT built (install clang and libclang-rt-dev, or -DCSKV_BUILD_FUZZ=OFF)")
  return()
endif()

# Can this clang link a libFuzzer binary with ASan/UBSan? (needs the compiler-rt runtimes)
set(_cskv_fuzz_flags -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -O1 -g)
set(_cskv_probe_dir ${CMAKE_CURRENT_BINARY_DIR}/fuzz/probe)
file(MAKE_DIRECTORY ${_cskv_probe_dir})
file(WRITE ${_cskv_probe_dir}/probe.cpp
  "#include <cstddef>\n#include <cstdint>\n"
  "extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
execute_process(
  COMMAND ${CSKV_CLANGXX} ${_cskv_fuzz_flags} probe.cpp -o probe
  WORKING_DIRECTORY ${_cskv_probe_dir}
  RESULT_VARIABLE _cskv_probe_rc OUTPUT_VARIABLE _cskv_probe_out ERROR_VARIABLE _cskv_probe_out)
if(NOT _cskv_probe_rc EQUAL 0)
  message(WARNING "cskv: ${CSKV_CLANGXX} cannot link -fsanitize=fuzzer,address,undefined "
                  "(install libclang-rt-dev): the safetensors header fuzzer is NOT built.\n"
                  "${_cskv_probe_out}")
  return()
endif()

# nlohmann_json's include dir, unless it is a default system dir (an explicit -I/usr/include
# breaks libstdc++'s #include_next).
get_target_property(_cskv_json_dirs nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
set(_cskv_fuzz_includes -I${PROJECT_SOURCE_DIR})
foreach(d IN LISTS _cskv_json_dirs)
  if(d AND NOT d STREQUAL "/usr/include" AND NOT d MATCHES "^\\$<")
    list(APPEND _cskv_fuzz_includes -isystem ${d})
  endif()
endforeach()

set(_cskv_fuzz_bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz/fuzz_safetensors_header)
set(_cskv_fuzz_sources
  ${CMAKE_CURRENT_LIST_DIR}/fuzz_safetensors_header.cpp
  ${PROJECT_SOURCE_DIR}/model/safetensors_header.cpp
  ${PROJECT_SOURCE_DIR}/common/error.cpp)
add_custom_command(
  OUTPUT ${_cskv_fuzz_bin}
  COMMAND ${CSKV_CLANGXX} -std=c++17 ${_cskv_fuzz_flags} ${_cskv_fuzz_includes}
          ${_cskv_fuzz_sources} -o ${_cskv_fuzz_bin}
  DEPENDS ${_cskv_fuzz_sources} ${PROJECT_SOURCE_DIR}/model/safetensors_header.h
          ${PROJECT_SOURCE_DIR}/common/error.h
  COMMENT "Building the libFuzzer target fuzz_safetensors_header with ${CSKV_CLANGXX}"
  VERBATIM)
add_custom_target(cskv_fuzz_safetensors_header ALL DEPENDS ${_cskv_fuzz_bin})

# New inputs go to a corpus dir in the build tree; the checked-in seeds are read only.
set(_cskv_fuzz_work ${CMAKE_CURRENT_BINARY_DIR}/fuzz/corpus)
file(MAKE_DIRECTORY ${_cskv_fuzz_work})
add_test(NAME fuzz_safetensors_header
  COMMAND ${_cskv_fuzz_bin} -max_total_time=30 -timeout=10 -rss_limit_mb=2048 -max_len=4096
          -dict=${CMAKE_CURRENT_LIST_DIR}/safetensors.dict
          -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/fuzz/
          ${_cskv_fuzz_work} ${CMAKE_CURRENT_LIST_DIR}/corpus)
set_tests_properties(fuzz_safetensors_header PROPERTIES TIMEOUT 120 LABELS fuzz)
message(STATUS "cskv: libFuzzer target fuzz_safetensors_header ON (${CSKV_CLANGXX})")
