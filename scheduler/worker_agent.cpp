#include "scheduler/worker_agent.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

namespace rw::scheduler {

using json = nlohmann::json;

WorkerAgentResult RunWorkerAgent(const WorkerAgentOptions& o, const json& hello, const std::atomic<bool>& stop,
                                 const std::function<void(const std::string&)>& abort_devices) {
  WorkerAgentResult res;
  ApiClient client(o.api);
  client.set_read_timeout(15);
  std::string id, instance;
  double beat = 1.0;
  std::chrono::steady_clock::time_point drain_deadline{};
  for (;;) {
    if (stop && drain_deadline == std::chrono::steady_clock::time_point{})
      drain_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(o.grace_s * 1000));
    json reply;
    if (id.empty()) {
      if (stop) break;  // never registered (or lost the daemon) and asked to stop: nothing to drain
      const int status = client.Call("POST", "/v1/workers", hello.dump(), "application/json", &reply);
      if (status == 201) {
        id = reply.value("id", "");
        instance = reply.value("instance", "");
        beat = reply.value("heartbeat_s", 1.0);
        res.registered_once = true;
        std::fprintf(stderr, "ringworld worker %s: registered with daemon instance %s\n", id.c_str(), instance.c_str());
      } else if (status == 400 || status == 401 || status == 403) {
        // A wrong token or a refused registration will not get better by retrying (a 409, the name of a
        // worker the daemon still thinks alive, does once that one times out).
        res.code = 2;
        res.reason = std::to_string(status) + ": " +
                     (reply.is_object() && reply.contains("error") && reply["error"].is_string()
                          ? reply["error"].get<std::string>()
                          : client.raw());
        return res;
      }  // else (unreachable, 5xx, 503 + Retry-After): try again
    } else {
      const int status = client.Call("POST", "/v1/workers/" + id + "/heartbeat",
                                     json{{"instance", instance}, {"draining", stop.load()}}.dump(),
                                     "application/json", &reply);
      if (status != 200) {
        // The daemon is gone, restarted, or cut off by the network: whatever ring it drove here has no
        // driver any more (it re-forms the job elsewhere), so this side stops computing it (self-fencing).
        std::fprintf(stderr,
                     "ringworld worker %s: heartbeat failed (%s): lost the daemon; aborting the ring on our devices "
                     "and registering again\n",
                     id.c_str(), status > 0 ? ("HTTP " + std::to_string(status)).c_str() : "no answer");
        abort_devices("lost the daemon");
        id.clear();
      } else if (stop && reply.value("assigned", 0) == 0) {
        // Drained: the ring stopped with a checkpoint and the daemon released our devices. Say goodbye.
        client.Call("POST", "/v1/workers/" + id + "/heartbeat",
                    json{{"instance", instance}, {"draining", true}, {"leaving", true}}.dump(), "application/json", &reply);
        break;
      }
    }
    if (stop && std::chrono::steady_clock::now() > drain_deadline) {
      std::fprintf(stderr, "ringworld worker %s: grace period of %.0f s over; exiting\n", o.name.c_str(), o.grace_s);
      break;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(id.empty() ? std::max(beat, 0.5) : beat));
  }
  return res;
}

}  // namespace rw::scheduler
