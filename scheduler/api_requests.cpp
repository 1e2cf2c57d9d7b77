#include "scheduler/api_requests.h"

#include <cerrno>
#include <cstdlib>

#include "runtime/json_fields.h"

namespace rw::scheduler {
namespace {

using json = nlohmann::json;

// The deepest nesting of arrays and objects in `text`, strings skipped: one pass, no allocation.
Status CheckJsonDepth(const std::string& text, const char* what) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      RW_REQUIRE(++depth <= kMaxJsonDepth, what << ": nested deeper than " << kMaxJsonDepth << " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return Status::Ok();
}

Status Integer(const json& j, const char* field, int64_t lo, int64_t hi, int64_t* out) {
  return runtime::JsonInteger(j, field, lo, hi, out);
}

Status String(const json& j, const char* field, std::string* out) {
  RW_REQUIRE(j.is_string(), field << ": expected a string");
  *out = j.get<std::string>();
  return Status::Ok();
}

Status Bool(const json& j, const char* field, bool* out) {
  RW_REQUIRE(j.is_boolean(), field << ": expected true or false");
  *out = j.get<bool>();
  return Status::Ok();
}

}  // namespace

Status ParseBody(const std::string& body, json* out) {
  RW_RETURN_IF_ERROR(CheckJsonDepth(body, "body"));
  try {
    *out = json::parse(body);
  } catch (const std::exception& e) {
    return Status::Error(std::string("body: not JSON: ") + e.what());
  }
  return Status::Ok();
}

Status ParseSubmission(const std::string& content_type, const std::string& body, const std::string* priority_param,
                       Submission* out) {
  Submission s;
  if (content_type.rfind("application/json", 0) == 0) {
    json j;
    RW_RETURN_IF_ERROR(ParseBody(body, &j));
    RW_REQUIRE(j.is_object(), "body: expected a JSON object {\"job\": ..., \"priority\": ..., \"set\": [...]}");
    for (const auto& [k, v] : j.items()) {
      if (k == "job") {
        RW_REQUIRE(v.is_string() || v.is_object(), "job: expected the job file's text or a JSON object");
        s.spec = v.is_string() ? v.get<std::string>() : v.dump();  // JSON is YAML; never pretty-printed
      } else if (k == "priority") {
        RW_RETURN_IF_ERROR(Integer(v, "priority", -1000000, 1000000, &s.priority));
      } else if (k == "set") {
        RW_REQUIRE(v.is_array(), "set: expected a list of \"key=value\" strings");
        for (const auto& o : v) {
          RW_REQUIRE(o.is_string(), "set: expected a list of \"key=value\" strings");
          s.overrides.push_back(o.get<std::string>());
        }
      } else {
        return Status::Error(k + ": unknown field (job, priority, set)");
      }
    }
    RW_REQUIRE(!s.spec.empty(), "job: missing");
  } else {
    s.spec = body;
    if (priority_param) {
      const std::string& p = *priority_param;
      char* end = nullptr;
      errno = 0;
      s.priority = std::strtoll(p.c_str(), &end, 10);
      RW_REQUIRE(!p.empty() && end && *end == '\0' && errno == 0, "priority: expected an integer, got '" << p << "'");
    }
  }
  RW_REQUIRE(s.priority >= -1000000 && s.priority <= 1000000, "priority: must be within +-1000000");
  for (const auto& o : s.overrides)
    RW_REQUIRE(o.rfind("ring.transport=", 0) != 0, "set: ring.transport is the daemon's choice");
  *out = std::move(s);
  return Status::Ok();
}

Status ParseRegistration(const std::string& body, Registration* out) {
  json j;
  RW_RETURN_IF_ERROR(ParseBody(body, &j));
  RW_REQUIRE(j.is_object(), "body: expected {name, host, port, devices: [{memory_bytes}]}");
  Registration w;
  for (const char* f : {"name", "host", "port", "devices"})
    RW_REQUIRE(j.contains(f), f << ": missing (body: expected {name, host, port, devices: [{memory_bytes}]})");
  RW_RETURN_IF_ERROR(String(j["name"], "name", &w.name));
  RW_RETURN_IF_ERROR(String(j["host"], "host", &w.host));
  int64_t port = 0;
  RW_RETURN_IF_ERROR(Integer(j["port"], "port", 1, 65535, &port));
  w.port = int(port);
  if (j.contains("pid")) RW_RETURN_IF_ERROR(Integer(j["pid"], "pid", 0, INT64_MAX, &w.pid));
  if (j.contains("kind")) RW_RETURN_IF_ERROR(String(j["kind"], "kind", &w.kind));
  RW_REQUIRE(j["devices"].is_array(), "devices: expected a list of {memory_bytes}");
  for (const auto& d : j["devices"]) {
    RW_REQUIRE(d.is_object() && d.contains("memory_bytes"), "devices: expected a list of {memory_bytes}");
    int64_t bytes = 0;
    RW_RETURN_IF_ERROR(Integer(d["memory_bytes"], "devices[].memory_bytes", 0, INT64_MAX, &bytes));
    w.memory.push_back(bytes);
  }
  RW_REQUIRE(!w.name.empty() && w.name.size() <= 64 &&
                 w.name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") ==
                     std::string::npos,
             "name: 1-64 characters of [A-Za-z0-9_.-]");
  RW_REQUIRE(!w.memory.empty() && w.memory.size() <= 1024, "devices: 1 to 1024 devices");
  *out = std::move(w);
  return Status::Ok();
}

Status ParseHeartbeat(const std::string& body, HeartbeatBody* out) {
  json j;
  RW_RETURN_IF_ERROR(ParseBody(body, &j));
  RW_REQUIRE(j.is_object() && j.contains("instance"), "body: expected {\"instance\": ..., \"draining\": ...}");
  HeartbeatBody h;
  RW_RETURN_IF_ERROR(String(j["instance"], "instance", &h.instance));
  if (j.contains("draining")) RW_RETURN_IF_ERROR(Bool(j["draining"], "draining", &h.draining));
  if (j.contains("leaving")) RW_RETURN_IF_ERROR(Bool(j["leaving"], "leaving", &h.leaving));
  *out = std::move(h);
  return Status::Ok();
}

}  // namespace rw::scheduler
