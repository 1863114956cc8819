# libFuzzer targets, built with clang++ directly (the rest of the project uses GCC) and run by
# CTest for a bounded time: tests `fuzz_safetensors_header` (the safetensors header parser) and
# `fuzz_json_formats` (manifest.json, capture.json, step manifests, rank-file entries, job.json).
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

# cskv_add_fuzzer(NAME SOURCES ... DEPENDS ... LIBS ... ARGS ...): the clang-built libFuzzer binary NAME
# and its bounded CTest run over the checked-in seed corpus (read only; new inputs go to a corpus
# dir in the build tree).
function(cskv_add_fuzzer name)
  cmake_parse_arguments(F "" "SEEDS" "SOURCES;DEPENDS;LIBS;ARGS" ${ARGN})
  set(bin ${CMAKE_CURRENT_BINARY_DIR}/fuzz/${name})
  add_custom_command(
    OUTPUT ${bin}
    COMMAND ${CSKV_CLANGXX} -std=c++17 ${_cskv_fuzz_flags} ${_cskv_fuzz_includes} ${F_SOURCES}
            ${F_LIBS} -o ${bin}
    DEPENDS ${F_SOURCES} ${F_DEPENDS}
    COMMENT "Building the libFuzzer target ${name} with ${CSKV_CLANGXX}"
    VERBATIM)
  add_custom_target(cskv_${name} ALL DEPENDS ${bin})
  set(work ${CMAKE_CURRENT_BINARY_DIR}/fuzz/corpus-${name})
  file(MAKE_DIRECTORY ${work})
  add_test(NAME ${name}
    COMMAND ${bin} ${F_ARGS} -artifact_prefix=${CMAKE_CURRENT_BINARY_DIR}/fuzz/${name}- ${work}
            ${F_SEEDS})
  set_tests_properties(${name} PROPERTIES TIMEOUT 120 LABELS fuzz)
  message(STATUS "cskv: libFuzzer target ${name} ON (${CSKV_CLANGXX})")
endfunction()

cskv_add_fuzzer(fuzz_safetensors_header
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/fuzz_safetensors_header.cpp
          ${PROJECT_SOURCE_DIR}/model/safetensors_header.cpp ${PROJECT_SOURCE_DIR}/common/error.cpp
  DEPENDS ${PROJECT_SOURCE_DIR}/model/safetensors_header.h ${PROJECT_SOURCE_DIR}/common/error.h
  SEEDS ${CMAKE_CURRENT_LIST_DIR}/corpus
  ARGS -max_total_time=30 -timeout=10 -rss_limit_mb=2048 -max_len=4096
       -dict=${CMAKE_CURRENT_LIST_DIR}/safetensors.dict)

# The JSON formats (first input byte picks one; see fuzz_json_formats.cpp). Their readers are
# split from the LibTorch/HDF5 code so this builds from a handful of files in seconds.
cskv_add_fuzzer(fuzz_json_formats
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/fuzz_json_formats.cpp
          ${PROJECT_SOURCE_DIR}/data/manifest_json.cpp
          ${PROJECT_SOURCE_DIR}/data/capture_identity.cpp
          ${PROJECT_SOURCE_DIR}/data/checksum.cpp
          ${PROJECT_SOURCE_DIR}/common/xxh64.cpp
          ${PROJECT_SOURCE_DIR}/checkpoint/step_manifest_json.cpp
          ${PROJECT_SOURCE_DIR}/common/config_diff.cpp
          ${PROJECT_SOURCE_DIR}/common/fs.cpp
          ${PROJECT_SOURCE_DIR}/common/error.cpp
          ${PROJECT_SOURCE_DIR}/common/json_bounds.cpp
          ${PROJECT_SOURCE_DIR}/launch/job_file.cpp
  DEPENDS ${PROJECT_SOURCE_DIR}/data/manifest_json.h ${PROJECT_SOURCE_DIR}/data/capture_identity.h
          ${PROJECT_SOURCE_DIR}/data/checksum.h
          ${PROJECT_SOURCE_DIR}/checkpoint/step_manifest_json.h
          ${PROJECT_SOURCE_DIR}/common/config_diff.h ${PROJECT_SOURCE_DIR}/common/fs.h
          ${PROJECT_SOURCE_DIR}/common/error.h ${PROJECT_SOURCE_DIR}/common/json_bounds.h
          ${PROJECT_SOURCE_DIR}/common/json_integer.h ${PROJECT_SOURCE_DIR}/launch/job_file.h
          ${PROJECT_SOURCE_DIR}/pipeline/setting_type.h
  SEEDS ${CMAKE_CURRENT_LIST_DIR}/json_corpus
  ARGS -max_total_time=10 -timeout=10 -rss_limit_mb=2048 -max_len=8192
       -dict=${CMAKE_CURRENT_LIST_DIR}/json.dict)

# tokenizer.json (data/hf_tokenizer*.cpp, torch-free) and a text encoded with it: a user's file
# drives a regex engine, a BPE and the added-token matcher. Seeds: small tokenizers in the
# Llama-3, Qwen2, Mistral and all-Split-behaviors configurations of the tests.
cskv_add_fuzzer(fuzz_hf_tokenizer
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/fuzz_hf_tokenizer.cpp
          ${PROJECT_SOURCE_DIR}/data/hf_tokenizer.cpp ${PROJECT_SOURCE_DIR}/data/hf_text.cpp
          ${PROJECT_SOURCE_DIR}/data/hf_stages.cpp ${PROJECT_SOURCE_DIR}/data/hf_bpe.cpp
          ${PROJECT_SOURCE_DIR}/common/fs.cpp ${PROJECT_SOURCE_DIR}/common/error.cpp
          ${PROJECT_SOURCE_DIR}/common/json_bounds.cpp
  DEPENDS ${PROJECT_SOURCE_DIR}/data/hf_tokenizer.h ${PROJECT_SOURCE_DIR}/data/hf_tokenizer_parts.h
          ${PROJECT_SOURCE_DIR}/common/fs.h ${PROJECT_SOURCE_DIR}/common/error.h
          ${PROJECT_SOURCE_DIR}/common/json_bounds.h
  LIBS -lpcre2-8 -lutf8proc
  SEEDS ${CMAKE_CURRENT_LIST_DIR}/hf_tokenizer_corpus
  ARGS -max_total_time=10 -timeout=10 -rss_limit_mb=2048 -max_len=20000
       -dict=${CMAKE_CURRENT_LIST_DIR}/json.dict)
