// The NCCL backend (built with CSKV_WITH_NCCL): CUDA tensors go through NCCL, CPU tensors and
// byte blobs through the MPI communicator it was bootstrapped from. Only comm/factory.cpp uses it.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace cskv::comm {

class MpiCommunicator;

// Bootstraps NCCL over mpi (rank 0 ncclGetUniqueId, broadcast over MPI, ncclCommInitRank) on the
// CUDA device numbered by the local rank; every wait is bounded by mpi's timeout, and a failed
// or timed-out NCCL communicator is aborted (ncclCommAbort) before the error is thrown.
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<MpiCommunicator> mpi);

// A NCCL communicator over world.split_mpi(color, key) (a collective of every world rank) on
// cuda:`device`: the data-parallel groups of CUDA training.
std::unique_ptr<Communicator> make_nccl_group(MpiCommunicator& world, int color, int key,
                                              int device);

// The NCCL library's version as loaded ("2.28.9 (headers 2.28.9)").
std::string nccl_library_version();

}  // namespace cskv::comm
