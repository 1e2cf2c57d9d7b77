// Fields of untrusted JSON (job requests, meta.json, trainer_state.json) read with their type and range
// checked, so an error names the field. nlohmann's get<int64_t> alone would convert a float (undefined
// behaviour when out of range: found by tests/fuzz/fuzz_dataset), wrap an unsigned past INT64_MAX to a
// negative number, or throw a message that names no field.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "kernels/status.h"

namespace rw::runtime {

// A JSON file whole: "PATH: cannot open" or "PATH: not JSON: ..." when it is not.
inline kernels::Status ReadJsonFile(const std::string& path, nlohmann::json* out) {
  std::ifstream f(path);
  RW_REQUIRE(f.good(), path << ": cannot open");
  try {
    *out = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    return kernels::Status::Error(path + ": not JSON: " + e.what());
  }
  return kernels::Status::Ok();
}

inline kernels::Status JsonInteger(const nlohmann::json& v, const std::string& field, int64_t lo, int64_t hi,
                                   int64_t* out) {
  RW_REQUIRE(v.is_number_integer(), field << ": expected an integer, got " << v.dump());
  RW_REQUIRE(!(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) && v.get<int64_t>() >= lo &&
                 v.get<int64_t>() <= hi,
             field << ": must be within [" << lo << ", " << hi << "], got " << v.dump());
  *out = v.get<int64_t>();
  return kernels::Status::Ok();
}

inline kernels::Status JsonUnsigned(const nlohmann::json& v, const std::string& field, uint64_t* out) {
  RW_REQUIRE(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
             field << ": expected a non-negative integer, got " << v.dump());
  *out = v.get<uint64_t>();
  return kernels::Status::Ok();
}

}  // namespace rw::runtime
