# Capture tests (tests/pipeline/capture_*test.cpp, in cskv_tests) spawn the cskv binary themselves
# (to SIGKILL it mid-way) and `mpirun -np 2/3` for the multi-rank checks: they need both paths.
target_compile_definitions(cskv_tests PRIVATE
  CSKV_BINARY_FOR_TESTS="$<TARGET_FILE:cskv>" CSKV_MPIEXEC="${MPIEXEC_EXECUTABLE}")
add_dependencies(cskv_tests cskv)
