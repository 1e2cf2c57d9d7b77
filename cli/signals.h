// The stop signals of every long-running command (train, daemon, worker), handled one way. The first SIGTERM
// or SIGINT asks for a graceful stop: training runs finish their step and commit a checkpoint
// (actors::PreemptFlag), the daemon preempts its jobs, a worker drains; the command then exits with
// kExitPreempted (EX_TEMPFAIL: run it again to resume). A second signal exits at once with 128 + the signal:
// checkpoints are renamed into place only when whole, so nothing committed is harmed.
#pragma once

#include <sys/types.h>

#include <atomic>

#include "scheduler/daemon.h"

namespace rw::cli {

constexpr int kExitPreempted = scheduler::kExitPreempted;

// Installs the handlers (idempotent).
void InstallStopSignals();
// Set by the first signal.
const std::atomic<bool>& StopRequested();
// A child process that gets the first signal passed on (the device hosts of `train --processes`).
void ForwardStopTo(pid_t child);
// Forgets a child before it is reaped (its pid may be reused by an unrelated process afterwards).
void StopForwardingTo(pid_t child);

}  // namespace rw::cli
