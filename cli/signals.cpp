#include "cli/signals.h"

#include <signal.h>
#include <unistd.h>

#include "actors/device_actor.h"

namespace rw::cli {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signals{0};
constexpr int kMaxChildren = 1024;
std::atomic<pid_t> g_children[kMaxChildren];  // 0: forgotten
std::atomic<int> g_num_children{0};

void OnSignal(int sig) {  // async-signal-safe: atomics, kill and _exit only
  if (g_signals.fetch_add(1) > 0) _exit(128 + sig);
  g_stop.store(true);
  actors::PreemptFlag().store(true);
  for (int i = 0; i < g_num_children.load(); ++i)
    if (const pid_t p = g_children[i].load(); p > 0) kill(p, SIGTERM);
}

}  // namespace

void InstallStopSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

const std::atomic<bool>& StopRequested() { return g_stop; }

void ForwardStopTo(pid_t child) {
  const int i = g_num_children.load();
  if (i >= kMaxChildren) return;
  g_children[i] = child;
  g_num_children.store(i + 1);
}

void StopForwardingTo(pid_t child) {
  for (int i = 0; i < g_num_children.load(); ++i)
    if (g_children[i].load() == child) g_children[i] = 0;
}

}  // namespace rw::cli
