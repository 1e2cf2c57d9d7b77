// Test helper: hosts N device actors in its own process and publishes the host actor on 127.0.0.1.
//   rw_device_host N PORT_FILE
// Writes the bound port to PORT_FILE, then serves until the host actor is told to quit.
//   rw_device_host --first-ring-id
// Prints the first ring id this process would allocate (a process's first, as a restarted daemon's).
#include <cstdio>
#include <fstream>
#include <string>

#include "actors/device_host.h"

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--first-ring-id") {
    std::printf("%llu\n", static_cast<unsigned long long>(rw::actors::AllocateRingId()));
    return 0;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: rw_device_host N PORT_FILE\n");
    return 2;
  }
  caf::actor_system_config cfg;
  rw::actors::AddMessageTypes(cfg);
  caf::actor_system sys{cfg};
  auto host = rw::actors::SpawnHost(sys, std::atoi(argv[1]));
  auto port = sys.middleman().publish(host, 0, "127.0.0.1");
  if (!port) {
    std::fprintf(stderr, "publish failed: %s\n", sys.render(port.error()).c_str());
    return 1;
  }
  {
    const std::string tmp = std::string(argv[2]) + ".tmp";
    std::ofstream(tmp) << *port << "\n";
    std::rename(tmp.c_str(), argv[2]);
  }
  sys.await_all_actors_done();
  return 0;
}
