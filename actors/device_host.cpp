#include "actors/device_host.h"

#include <caf/openssl/all.hpp>

#include <cstdio>
#include <fstream>
#include <set>

namespace rw::actors {
namespace {

struct HostState {
  std::vector<device_actor> devices;
  static inline const char* name = "device_host";
};

host_actor::behavior_type Host(host_actor::stateful_pointer<HostState> self, int n) {
  for (int i = 0; i < n; ++i) self->state.devices.push_back(SpawnDevice(self->system(), i));
  return {
      [=](devices_atom) { return self->state.devices; },
      [=](quit_atom) {
        for (auto& d : self->state.devices) self->send_exit(d, caf::exit_reason::user_shutdown);
        self->quit();
      },
  };
}

}  // namespace

host_actor SpawnHost(caf::actor_system& sys, int n) { return sys.spawn(Host, n); }

int ServeDeviceHost(int n, const std::string& port_file) {
  SystemConfig cfg;
  caf::actor_system sys{cfg};
  auto host = SpawnHost(sys, n);
  auto port = sys.middleman().publish(host, 0, "127.0.0.1");
  if (!port) {
    std::fprintf(stderr, "ringworld device-host: %s\n", sys.render(port.error()).c_str());
    return 1;
  }
  const std::string tmp = port_file + ".tmp";
  std::ofstream(tmp) << *port << "\n";
  std::rename(tmp.c_str(), port_file.c_str());
  sys.await_all_actors_done();
  return 0;
}

kernels::Status ReachDeviceHost(caf::actor_system& sys, const std::string& host, uint16_t port,
                                std::chrono::milliseconds deadline, std::vector<device_actor>* devices, bool* slow) {
  *slow = false;
  std::string err;
  host_actor h;
  {
    // The TLS middleman's connect, with a deadline (remote_actor waits for the peer's handshake without one).
    caf::scoped_actor self{sys};
    self->request(sys.openssl_manager().actor_handle(), deadline, caf::connect_atom::value, host, port)
        .receive(
            [&](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>& ifs) {
              if (!ptr)
                err = "no actor is published there";
              else if (!sys.assignable<host_actor>(ifs))
                err = "what is published there is not a device host";
              else
                h = caf::actor_cast<host_actor>(std::move(ptr));
            },
            [&](caf::error& e) { err = sys.render(e); });
  }
  RW_REQUIRE(err.empty(), "cannot reach the worker's device host at " << host << ":" << port << " within "
                                                                      << deadline.count() / 1000.0 << " s: " << err);
  caf::scoped_actor self{sys};
  self->request(h, deadline, devices_atom::value)
      .receive([&](const std::vector<device_actor>& d) { *devices = d; },
               [&](caf::error& e) {
                 err = sys.render(e);
                 *slow = e == caf::sec::request_timeout;
               });
  RW_REQUIRE(err.empty(), "the worker's device host at " << host << ":" << port << " did not answer: " << err);
  return kernels::Status::Ok();
}

PublishedDevices::PublishedDevices(const ChannelCredentials& channel) {
  EnableChannelAuth(cfg_, channel);
  sys_ = std::make_unique<caf::actor_system>(cfg_);
}

kernels::Status PublishedDevices::Start(int n, const std::string& listen, const ChannelCredentials& channel,
                                        std::unique_ptr<PublishedDevices>* out) {
  std::unique_ptr<PublishedDevices> p(new PublishedDevices(channel));
  p->host_ = SpawnHost(*p->sys_, n);
  auto port = caf::openssl::publish(p->host_, 0, listen.c_str());
  if (!port) {
    const std::string why = p->sys_->render(port.error());
    p->Quit();
    return kernels::Status::Error("--listen " + listen + ": " + why);
  }
  p->port_ = *port;
  *out = std::move(p);
  return kernels::Status::Ok();
}

PublishedDevices::~PublishedDevices() {
  host_ = host_actor{};  // the handle goes before its system
  sys_.reset();
}

void PublishedDevices::AbortRings(const std::string& why) {
  caf::scoped_actor self{*sys_};
  std::vector<device_actor> devs;
  self->request(host_, std::chrono::seconds(5), devices_atom::value)
      .receive([&](const std::vector<device_actor>& d) { devs = d; }, [](caf::error&) {});
  for (auto& d : devs) self->send(d, abort_atom::value, why);
}

void PublishedDevices::Quit() { caf::anon_send(host_, quit_atom::value); }

}  // namespace rw::actors
