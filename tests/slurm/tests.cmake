# Slurm integration tests (slurm_test.sh): each starts a one-node Slurm cluster on this machine
# (slurm_cluster.sh: munged, slurmctld, slurmd, all state in a temp dir, stopped by PID), submits
# the toy training job with 2 tasks through a launch/slurm/ template, interrupts it mid-training
# and requires the requeued job to finish with a merged checkpoint bitwise identical to an
# uninterrupted 1-process run. Exit 77 = skipped, with the reason printed (not root, munge or
# slurm missing, a daemon refusing to start). One cluster at a time; each trial takes ~1 min.
#   requeue        cskv.sbatch, `scontrol requeue` (SIGTERM to the whole job)
#   signal         cskv.sbatch, `scancel --signal=USR1 --batch` (the time-limit warning)
#   mpirun-signal  cskv-mpirun.sbatch, the same signal
foreach(trial requeue signal mpirun-signal)
  add_test(NAME slurm_${trial}
    COMMAND ${CMAKE_CURRENT_LIST_DIR}/slurm_test.sh $<TARGET_FILE:cskv> ${trial})
  set_tests_properties(slurm_${trial} PROPERTIES
    SKIP_RETURN_CODE 77 TIMEOUT 300 PROCESSORS 2 RESOURCE_LOCK slurm_cluster LABELS slurm)
endforeach()
