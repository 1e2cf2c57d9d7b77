// The control channel between the daemon and its workers (CAF's middleman) is authenticated: both ends run
// it over TLS (CAF's OpenSSL module) with a certificate that only a holder of the cluster's API token can
// make, and each end trusts only that certificate. An Ed25519 key is derived from the token, and from it a
// self-signed certificate with fixed fields; Ed25519 signatures are deterministic, so every holder of the
// token derives the same bytes and nothing needs to be handed out. A process without the token (another
// daemon, a port scanner) fails the handshake: it can neither take a worker's devices nor pose as a worker.
// The data plane (UCX between device actors) is not covered.
#pragma once

#include <string>

#include "actors/device_actor.h"
#include "kernels/status.h"

namespace rw::actors {

struct ChannelCredentials {
  std::string certificate;  // PEM, 0600; also the one trusted certificate
  std::string key;          // PEM, 0600
};

// Writes the credentials derived from `token` (at least 32 characters) into `dir` (made 0700 if missing).
Status WriteChannelCredentials(const std::string& token, const std::string& dir, ChannelCredentials* out);

// Loads CAF's OpenSSL module into `cfg` with `c`: what the system publishes with caf::openssl::publish and
// connects to through its openssl_manager() then needs a peer holding the same credentials.
void EnableChannelAuth(SystemConfig& cfg, const ChannelCredentials& c);

}  // namespace rw::actors
