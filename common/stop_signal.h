// Graceful stop on SIGTERM / SIGUSR1 / SIGINT (preemption, Slurm's time-limit warning, Ctrl-C):
// the handler only records the signal; long-running loops poll stop_signal(), finish the
// current step, write a checkpoint and exit with the "preempted" status (launch/cli.h).
#pragma once

namespace cskv {

// Installs the recording handler for SIGTERM, SIGUSR1 and SIGINT (idempotent). A second signal
// of the same kind while a stop is pending restores the default action and re-raises it, so a
// user who presses Ctrl-C twice is never stuck.
void install_stop_handlers();

// The first stop signal received since install_stop_handlers() (or clear_stop_signal()), 0 if
// none.
int stop_signal();

// Forgets a received signal (tests; a process that handled a stop and goes on).
void clear_stop_signal();

// "SIGTERM", "SIGUSR1", "SIGINT", or "signal <n>".
const char* stop_signal_name(int signal_number);

}  // namespace cskv
