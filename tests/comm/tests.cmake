# Multi-rank tests of comm/: cskv_mpi_comm_tests (source in mpi/, outside the unit-test glob) under
# `mpirun -np 2/3`, oversubscribed on small machines, and the hung/dead-peer scenarios (no hangs).
add_executable(cskv_mpi_comm_tests ${CMAKE_CURRENT_LIST_DIR}/mpi/mpi_comm_test.cpp)
target_link_libraries(cskv_mpi_comm_tests PRIVATE cskv_comm cskv_test_support GTest::gtest)
cskv_setup_target(cskv_mpi_comm_tests)

# Root in containers needs OpenMPI's consent; --oversubscribe allows more ranks than cores.
set(CSKV_MPI_TEST_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
set(CSKV_MPIEXEC_FLAGS --oversubscribe ${MPIEXEC_PREFLAGS})

foreach(np 2 3)
  add_test(NAME mpi_comm_np${np}
    COMMAND ${MPIEXEC_EXECUTABLE} ${CSKV_MPIEXEC_FLAGS} ${MPIEXEC_NUMPROC_FLAG} ${np}
            $<TARGET_FILE:cskv_mpi_comm_tests> ${MPIEXEC_POSTFLAGS})
  set_tests_properties(mpi_comm_np${np} PROPERTIES
    ENVIRONMENT "${CSKV_MPI_TEST_ENV}" TIMEOUT 120 PROCESSORS ${np} LABELS mpi)
endforeach()

# The last rank freezes (stop) or exits (exit) before an allreduce. stop: every survivor (3 s
# timeout) must print its check line; exit: mpirun must end the job naming the rank. Neither hangs.
foreach(mode stop exit)
  if(mode STREQUAL "stop")
    set(name mpi_comm_hung_peer)
  else()
    set(name mpi_comm_dead_peer)
  endif()
  add_test(NAME ${name}
    COMMAND ${CMAKE_COMMAND}
            -DMPIEXEC=${MPIEXEC_EXECUTABLE} "-DMPIEXEC_FLAGS=${CSKV_MPIEXEC_FLAGS}"
            -DNP_FLAG=${MPIEXEC_NUMPROC_FLAG} -DNP=3 -DMODE=${mode}
            -DEXE=$<TARGET_FILE:cskv_mpi_comm_tests>
            -P ${CMAKE_CURRENT_LIST_DIR}/dead_peer_check.cmake)
  set_tests_properties(${name} PROPERTIES
    ENVIRONMENT "${CSKV_MPI_TEST_ENV};CSKV_TEST_DEAD_PEER=${mode}" TIMEOUT 60 PROCESSORS 3
    LABELS mpi)
endforeach()
