#include "scheduler/api_client.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace rw::scheduler {
namespace {

std::string DaemonAddr(const ApiClientOptions& o) {
  if (!o.daemon.empty()) return o.daemon;
  const char* d = std::getenv("RINGWORLD_DAEMON");
  return d && *d ? d : "127.0.0.1:8470";
}

}  // namespace

std::string ReadToken(const ApiClientOptions& o) {
  if (const char* t = std::getenv("RINGWORLD_TOKEN"); t && *t) return t;
  std::string path = o.token_file;
  if (path.empty()) {
    const char* f = std::getenv("RINGWORLD_TOKEN_FILE");
    path = f && *f ? f : "ringworld-state/token";
  }
  std::ifstream in(path);
  std::string token;
  in >> token;
  return token;
}

bool SplitHostPort(const std::string& addr, std::string* host, int* port) {
  std::string a = addr;
  if (a.rfind("http://", 0) == 0) a = a.substr(7);
  if (a.rfind("https://", 0) == 0) a = a.substr(8);
  while (!a.empty() && a.back() == '/') a.pop_back();
  const auto colon = a.rfind(':');
  if (colon == std::string::npos) return false;
  *host = a.substr(0, colon);
  *port = std::atoi(a.c_str() + colon + 1);
  return !host->empty() && *port > 0 && *port < 65536;
}

ApiClient::ApiClient(const ApiClientOptions& o) : addr_(DaemonAddr(o)) {
  std::string host;
  int port = 0;
  ok_ = SplitHostPort(addr_, &host, &port);
  if (addr_.rfind("https://", 0) == 0) {  // a daemon with --tls-cert: its certificate is verified
    http_ = std::make_unique<httplib::Client>("https://" + host + ":" + std::to_string(port));
    std::string ca = o.ca_cert;
    if (ca.empty())
      if (const char* e = std::getenv("RINGWORLD_CA_CERT"); e && *e) ca = e;
    if (!ca.empty()) http_->set_ca_cert_path(ca.c_str());
    http_->enable_server_certificate_verification(true);
  } else {
    http_ = std::make_unique<httplib::Client>(host, port);
  }
  http_->set_connection_timeout(5);
  http_->set_read_timeout(30);
  const std::string token = ReadToken(o);
  if (!token.empty()) http_->set_bearer_token_auth(token);
}

int ApiClient::Call(const std::string& method, const std::string& path, const std::string& body,
                    const std::string& type, nlohmann::json* out, const httplib::Headers& headers) {
  httplib::Result r = method == "GET" ? http_->Get(path, headers) : http_->Post(path, headers, body, type);
  if (!r) {
    std::fprintf(stderr, "ringworld: cannot reach the daemon at %s (%s)\n", addr_.c_str(),
                 httplib::to_string(r.error()).c_str());
    return 0;
  }
  raw_ = r->body;
  headers_ = r->headers;
  try {
    *out = r->body.empty() || r->get_header_value("Content-Type").rfind("application/json", 0) != 0
               ? nlohmann::json()
               : nlohmann::json::parse(r->body);
  } catch (const std::exception&) {
    *out = nlohmann::json();
  }
  if (r->status >= 400)
    std::fprintf(stderr, "ringworld: %d: %s\n", r->status,
                 out->is_object() && out->contains("error") && (*out)["error"].is_string()
                     ? (*out)["error"].get<std::string>().c_str()
                     : r->body.c_str());
  return r->status;
}

}  // namespace rw::scheduler
