// device_actor: one per device (a GPU, or a CPU "device"). It owns its transport endpoint and runs the
// ring's compute for its shard. The actor itself stays responsive (abort, re-formation) while a private
// detached lane, its own thread, does the blocking work: connecting the ring and computing.
#pragma once

#include <caf/all.hpp>

#include <atomic>
#include <string>
#include <vector>

#include "actors/messages.h"
#include "kernels/common.h"
#include "runtime/mesh.h"

namespace rw::actors {

using device_actor = caf::typed_actor<
    // Join a ring (the world ring, or a sub-ring of the mesh: ring_spec::axis): creates this rank's transport
    // endpoint; replies its address ("" for inproc).
    caf::replies_to<prepare_atom, ring_spec>::with<std::string>,
    // Connect the ring of `axis` ("", sp, fsdp or replica) to the neighbours' addresses (ucx; a no-op for inproc);
    // replies once the links work.
    caf::replies_to<connect_atom, std::string, std::string, std::string>::with<attention_report>,
    // Train a job on this rank (the whole run; rank 0 streams StepMetrics to the task's reporter).
    caf::replies_to<train_atom, train_task>::with<train_report>,
    // Evaluate a checkpoint on a prepared dataset over the ring (mean loss over every predicted token).
    caf::replies_to<eval_atom, eval_task>::with<eval_report>,
    // Needle retrieval with the prompt prefilled over the ring and the KV cache sharded across it.
    caf::replies_to<needle_atom, needle_task>::with<needle_report>,
    // Generation with the prompt prefilled over the ring (the same tokens on every rank).
    caf::replies_to<generate_atom, generate_task>::with<generate_report>,
    // Abort the ring: every pending transfer of every rank fails, so no rank hangs.
    caf::reacts_to<abort_atom, std::string>,
    // Stop the running training job after the current step, with a checkpoint (the ranks agree on the step).
    caf::reacts_to<stop_atom>>;

// What a device answers besides: ring attention alone over its current ring, for tests and diagnostics (the
// production interface above does not offer it; a probe handle is cast from a device's, local or remote).
using device_probe_actor = device_actor::extend<
    // Ring attention forward + backward over this rank's shard (local callers: memory they own).
    caf::replies_to<attend_atom, attention_task>::with<attention_report>,
    // The same on a synthetic problem the device builds itself; outputs go to a file (any process).
    caf::replies_to<attend_atom, selftest_task>::with<attention_report>>;
inline device_probe_actor Probe(const device_actor& d) { return caf::actor_cast<device_probe_actor>(d); }

device_actor SpawnDevice(caf::actor_system& sys, int device_index);

// A ring id for a formation (ring_spec::ring_id): unique in this process, and drawn from a random start so
// that a restarted process does not repeat its predecessor's (in-process fabrics of the old rings may still
// be held by workers under those ids).
uint64_t AllocateRingId();

// Forms a ring over `devices` (rank = position): prepare on each, then connect each to its neighbours.
// With a mesh of these devices (mesh.world() == devices.size()), then also its sub-rings: each data
// group's sp ring over ranks [g * sp, (g + 1) * sp) when there are several groups, and with fsdp > 1 the
// fsdp and replica rings (runtime/mesh.h).
// An actor does it: asked (form_atom) once, it answers "" or the error, naming the rank that failed, and
// ends. Every formation goes through it: the ring actor's (job_driver.h), and FormRing's, which blocks.
caf::actor SpawnRingFormation(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job,
                              uint32_t epoch, const std::string& transport, const runtime::Mesh& mesh = {});
kernels::Status FormRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job,
                         uint32_t epoch, const std::string& transport, const runtime::Mesh& mesh = {});

// Set (e.g. by a SIGTERM handler) to preempt the training runs of this process's devices: they agree on a
// step, commit a checkpoint and report stopped.
std::atomic<bool>& PreemptFlag();

// Registers the message types of actors/ with a system config (needed before the system starts).
void AddMessageTypes(caf::actor_system_config& cfg);

// The actor system configuration of every RingWorld process: our message types and the middleman.
struct SystemConfig : caf::actor_system_config {
  SystemConfig() { AddMessageTypes(*this); }
};

}  // namespace rw::actors
