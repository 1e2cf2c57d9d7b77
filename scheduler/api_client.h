// A client of the daemon's REST API, for the command-line clients and for workers: the daemon's address
// (--daemon, $RINGWORLD_DAEMON or 127.0.0.1:8470; https://HOST:PORT for a daemon serving TLS) and its token ($RINGWORLD_TOKEN, the token file,
// $RINGWORLD_TOKEN_FILE or ringworld-state/token).
#pragma once

#include <httplib.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace rw::scheduler {

// "HOST:PORT" (an http:// or https:// prefix and trailing slashes allowed) into its parts; false when it is not one.
bool SplitHostPort(const std::string& addr, std::string* host, int* port);

struct ApiClientOptions {
  std::string daemon;      // HOST:PORT; empty: $RINGWORLD_DAEMON or 127.0.0.1:8470
  std::string token_file;  // empty: $RINGWORLD_TOKEN_FILE or ringworld-state/token ($RINGWORLD_TOKEN first)
  // An https:// daemon's certificate is checked against this CA file (empty: $RINGWORLD_CA_CERT, else the
  // system's CAs).
  std::string ca_cert;
};

// The token as the client finds it ("" when there is none).
std::string ReadToken(const ApiClientOptions& o);

class ApiClient {
 public:
  explicit ApiClient(const ApiClientOptions& o);
  bool ok() const { return ok_; }  // the address parsed
  const std::string& address() const { return addr_; }
  void set_read_timeout(int seconds) { http_->set_read_timeout(seconds); }
  // Returns the HTTP status (0: no answer; the reason goes to stderr) and the parsed JSON body (null when
  // the body is not JSON). An error status prints the daemon's message to stderr.
  int Call(const std::string& method, const std::string& path, const std::string& body, const std::string& type,
           nlohmann::json* out, const httplib::Headers& headers = {});
  const std::string& raw() const { return raw_; }               // the last reply's body
  const httplib::Headers& headers() const { return headers_; }  // the last reply's headers

 private:
  std::string addr_;
  bool ok_ = false;
  std::unique_ptr<httplib::Client> http_;
  std::string raw_;
  httplib::Headers headers_;
};

}  // namespace rw::scheduler
